"""The pipeline beside its references: ``torch.distributed.pipelining`` on the same split, and one process.

``schedules_worker`` runs both schedules (and, if asked, torch's) in one process group, so one launch or
one ``torchrun`` checks them all; ``single_process_step`` is the reference they must equal:

    torchrun --standalone --nproc-per-node 2 -m ctxlab.bench.pipeline_torch --microbatches 8
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

from ..config import ModelConfig
from ..parallel.bubble import SCHEDULES
from ..parallel.pipeline import Stage, _check_worker_args, microbatch_loss, pipeline_worker
from ..train import train_single


def torch_schedule_runner(stage: Stage, rank: int, n_stages: int, n_micro: int, schedule: str, device,
                          n_counted: int, tokens: Tensor, targets: Tensor) -> Callable[[], float]:
    """One step of torch's GPipe or 1F1B over ``stage``, as ``pipeline_worker``'s ``runner``."""
    from torch.distributed import pipelining

    if n_stages < 2:
        raise ValueError("the torch schedules need at least 2 stages")
    kind = {"gpipe": pipelining.ScheduleGPipe, "1f1b": pipelining.Schedule1F1B}[schedule]
    pstage = pipelining.PipelineStage(stage, rank, n_stages, device)
    kw = {"scale_grads": False} if "scale_grads" in inspect.signature(kind).parameters else {}
    native = kind(pstage, n_microbatches=n_micro, loss_fn=lambda out, tgt: microbatch_loss(out, tgt, n_counted), **kw)

    def step() -> float:
        if stage.is_first:
            native.step(tokens)
            return 0.0
        if stage.is_last:
            losses: list[Tensor] = []
            native.step(target=targets, losses=losses)
            return float(sum(v.item() for v in losses))
        native.step()
        return 0.0
    return step


RUNNERS = {"ours": None, "torch": torch_schedule_runner}


def schedules_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor,
                     n_micro: int, impls: tuple[str, ...] = ("ours",), prefetch: bool | None = None,
                     **kw) -> dict[str, dict]:
    """Both schedules (and implementations) in one process group: one launch, or one torchrun, for all."""
    unknown = set(impls) - set(RUNNERS)
    if unknown:
        raise ValueError(f"impls must be among {tuple(RUNNERS)}, got {sorted(unknown)}")
    return {f"{name}/{impl}": pipeline_worker(rank, world_size, cfg, tokens, targets, n_micro, name,
                                              prefetch=prefetch, runner=RUNNERS[impl], **kw)
            for impl in impls for name in SCHEDULES}


schedules_worker.check_args = _check_worker_args


def single_process_step(cfg: ModelConfig, tokens: Tensor, targets: Tensor, seed: int = 0) -> dict:
    """The reference: the whole GPT, the whole batch, one forward and backward (``train_single``'s first step)."""
    run = train_single(cfg, tokens, targets, steps=1, seed=seed)
    return {"loss": run["losses"][0], "grads": run["grads"]}


def merge_grads(results: list[dict]) -> dict:
    """All stages' gradients in one dict keyed like ``GPT.named_parameters()``."""
    merged: dict = {}
    for r in results:
        merged.update(r["grads"])
    return merged


if __name__ == "__main__":
    import argparse
    import sys

    from ..parallel.launch import gather_from_env

    parser = argparse.ArgumentParser(description="one pipeline step per schedule, checked against one process")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    args = parser.parse_args()
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=4, n_heads=2, max_seq_len=args.seq_len)
    x = torch.randint(0, 64, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    reference = single_process_step(cfg, x, x.roll(-1, 1))
    ranks = gather_from_env(schedules_worker, cfg, x, x.roll(-1, 1), args.microbatches)
    if ranks is not None:  # rank 0 reports for every stage
        for name in ranks[0]:
            outs = [r[name] for r in ranks]
            loss = next(o["loss"] for o in outs if o["loss"] is not None)  # the last stage's
            print(f"{name}: loss {loss:.6f} single-process {reference['loss']:.6f} "
                  f"diff {abs(loss - reference['loss']):.1e}; peak micro-batches held per stage "
                  f"{[o['peak_held'] for o in outs]}")
        sys.stdout.flush()
