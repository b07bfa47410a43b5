"""Data, pipeline and context parallelism that run for real: gloo CPU processes or NCCL GPUs, same code.

``launch`` starts ranks from a notebook or script; ``run_from_env`` runs the same worker under torchrun.
"""
from __future__ import annotations

from .launch import RankFailure, RankTimeout, choose_backend, launch, rank_device, run_from_env, under_torchrun

__all__ = ["launch", "run_from_env", "under_torchrun", "choose_backend", "rank_device", "RankFailure", "RankTimeout"]
