"""The parallel part of the GPU check: data, pipeline and context parallelism on NCCL and gloo.

Each run is compared with one process doing the same work, as the CPU tests do. NCCL needs one GPU
per rank, so a one-GPU machine runs NCCL at world size 1 (the code path, the collectives) and the
multi-rank schedules on gloo; pipelines need at least two ranks, so they run on NCCL only with two
GPUs or more. Errors are reported as numbers, not asserted: the JSON is the record.
"""
from __future__ import annotations

import torch

from .config import ModelConfig
from .parallel.launch import launch

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)


def _batch(n: int, t: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (n, t), generator=gen), torch.randint(0, 64, (n, t), generator=gen)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].detach().cpu() - b[k].detach().cpu()).abs().max().item() for k in b)


def ddp_check(backend: str, world_size: int) -> dict:
    """Ours and torch's DDP against one process: largest loss and gradient differences."""
    from .parallel.ddp import ddp_compare_worker
    from .train import train_single

    x, y = _batch(4)
    ref = train_single(CFG, x, y, steps=3)
    per_rank = launch(ddp_compare_worker, world_size, CFG, x, y, 3, 0.01, backend=backend, timeout=300)
    out = {}
    for impl in ("ours", "torch"):
        runs = [r[impl] for r in per_rank]
        out[impl] = {"max_loss_err": max(abs(a - b) for r in runs for a, b in zip(r["losses"], ref["losses"])),
                     "max_grad_err": max(_max_diff(r["grads"], ref["grads"]) for r in runs)}
    return out


def pipeline_check(backend: str, world_size: int) -> dict:
    """GPipe and 1F1B (ours) over ``world_size`` stages against one process."""
    from .bench.pipeline_torch import merge_grads, schedules_worker, single_process_step
    from .parallel.bubble import SCHEDULES

    cfg = CFG.replace(n_layers=max(2, world_size))
    x, y = _batch(6, seed=2)
    ref = single_process_step(cfg, x, y)
    per_rank = launch(schedules_worker, world_size, cfg, x, y, 3, ("ours",), backend=backend, timeout=300)
    out = {}
    for name in SCHEDULES:
        runs = [r[f"{name}/ours"] for r in per_rank]
        out[name] = {"loss_err": abs(runs[-1]["loss"] - ref["loss"]),
                     "max_grad_err": _max_diff(merge_grads(runs), ref["grads"]),
                     "peak_held": [r.get("peak_held") for r in runs]}
    return out


def ring_check(backend: str, world_size: int) -> dict:
    """Ring attention (plain and zig-zag, causal) against full attention: largest output/gradient error."""
    from .bench.ring_workers import exactness_worker

    runs = [(world_size, True, False, 8 * world_size), (world_size, True, True, 8 * world_size)]
    rows = [r for rank_rows in launch(exactness_worker, world_size, runs, backend=backend, timeout=300)
            for r in rank_rows]
    return {"max_err": max(max(r["err_out"], r["err_dq"], r["err_dk"], r["err_dv"]) for r in rows),
            "runs": len(rows)}


def parallel_checks(device: str) -> dict:
    """Every check on NCCL (one rank per GPU) where GPUs exist, and on gloo with 2 ranks."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    plans = [("gloo", 2)] + ([("nccl", gpus)] if gpus else [])
    result: dict = {"gpus": gpus}
    for backend, world in plans:
        key = f"{backend}_{world}"
        result[f"ddp_{key}"] = ddp_check(backend, world)
        result[f"ring_{key}"] = ring_check(backend, world)
        if world >= 2:
            result[f"pipeline_{key}"] = pipeline_check(backend, world)
    return result
