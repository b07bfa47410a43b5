"""Data, pipeline and context parallelism that run for real: gloo CPU processes or NCCL GPUs, same code.

``launch`` starts ranks from a notebook or script; ``run_from_env`` runs the same worker under torchrun.
One file per technique: ``ddp`` (``DataParallel``), ``zero`` (``ZeroDataParallel``, stages 1-3), ``pipeline`` (``Stage``, ``run_schedule``) with
its schedule maths in ``bubble``, ``ring`` (``ring_attention``) with its layout in ``sharding``, ``ulysses``
(``ulysses_attention``, the all-to-all alternative), and the model wrapper of both in ``context``.
"""
from __future__ import annotations

from .bubble import bubble_measured, bubble_theory, schedule_order, simulate, step_time
from .context import context_parallel, context_parallel_step
from .events import peak_held
from .ddp import DataParallel, ddp_compare_worker
from .launch import (RankFailure, RankTimeout, choose_backend, gather_from_env, launch, rank_device, run_from_env,
                     under_torchrun)
from .pipeline import Stage, run_schedule, stage_bounds
from .ring import comm_bytes_formula, hiding_length, ring_attention, ring_schedule
from .sharding import chunk_ids, shard_positions
from .ulysses import comm_bytes_formula as ulysses_comm_bytes, hybrid_comm_bytes, ulysses_attention
from .zero import ZeroDataParallel, offload_traffic_bytes

__all__ = ["launch", "run_from_env", "gather_from_env", "under_torchrun", "choose_backend", "rank_device", "RankFailure", "RankTimeout",
           "bubble_measured", "bubble_theory", "peak_held", "schedule_order", "simulate", "step_time",
           "context_parallel", "context_parallel_step", "DataParallel", "ddp_compare_worker", "Stage",
           "run_schedule", "stage_bounds", "comm_bytes_formula", "ring_attention", "ring_schedule", "chunk_ids",
           "shard_positions", "ulysses_attention", "ulysses_comm_bytes", "hybrid_comm_bytes", "hiding_length",
           "ZeroDataParallel",
           "offload_traffic_bytes"]
