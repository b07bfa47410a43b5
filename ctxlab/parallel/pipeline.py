"""Pipeline parallelism: the GPT's blocks split into p stages, one per rank, and micro-batches streamed through.

Pipelining splits *layers* across devices (erratum E10): stage s runs blocks [lo_s, hi_s), the
embedding lives on the first stage, the final norm, head and loss on the last. A step over m
micro-batches is a *schedule*, an ordered list of ("F", i) / ("B", i) per rank:

* GPipe (Huang et al. 2019): all forwards, then all backwards; holds m micro-batches of activations.
* 1F1B (Narayanan et al. 2019): p - s - 1 warm-up forwards, then one forward / one backward, then the
  remaining backwards; same bubble (p - 1) / (m + p - 1), but at most p - s micro-batches held.

``run_schedule`` walks such a list with real send/recv (``comms``); ``simulate`` walks the same lists
with unit times to draw the ideal timeline. Run with ``torchrun --nproc-per-node 2 -m ctxlab.parallel.pipeline``.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..model import GPT
from . import comms
from .ddp import train_single
from .events import EventRecorder, clock_origin, peak_held
from .launch import rank_device
from .sharding import check_token_batch

SCHEDULES = ("gpipe", "1f1b")


def stage_bounds(n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """[lo, hi) block ranges of each stage, as even as possible (earlier stages take the remainder)."""
    if not isinstance(n_stages, int) or not 1 <= n_stages <= n_layers:
        raise ValueError(f"n_stages must be an int in [1, n_layers={n_layers}] (each stage needs a block), "
                         f"got {n_stages!r}")
    base, extra = divmod(n_layers, n_stages)
    sizes = [base + (s < extra) for s in range(n_stages)]
    return [(sum(sizes[:s]), sum(sizes[:s + 1])) for s in range(n_stages)]


class Stage(nn.Module):
    """Blocks [lo, hi) of a GPT, plus the embedding on the first stage and norm + head on the last."""

    def __init__(self, model: GPT, stage: int, n_stages: int):
        super().__init__()
        self.lo, self.hi = stage_bounds(model.cfg.n_layers, n_stages)[stage]
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        m = copy.deepcopy(model)  # one copy keeps a tied embedding/head tied when both land here
        self.embed = m.embed if self.is_first else None
        self.rope = m.rope
        self.blocks = nn.ModuleList(m.blocks[self.lo:self.hi])
        self.norm = m.norm if self.is_last else None
        self.head = m.head if self.is_last else None
        self.tied = model.cfg.tie_weights and n_stages > 1

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (first stage) or hidden states in; hidden states, or logits on the last stage, out."""
        if self.is_first:
            x = self.embed(x)
        cos, sin = self.rope(torch.arange(x.shape[1], device=x.device), x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x)) if self.is_last else x

    def full_name(self, name: str) -> str:
        """This stage's parameter name as the whole GPT names it (the tied head is ``embed.weight``)."""
        if name.startswith("blocks."):
            _, j, rest = name.split(".", 2)
            return f"blocks.{self.lo + int(j)}.{rest}"
        return "embed.weight" if (name == "head.weight" and self.tied) else name

    def tied_weight(self) -> Tensor | None:
        """The copy of the tied embedding/head matrix held here when first and last stages differ."""
        if not self.tied:
            return None
        return self.embed.weight if self.is_first else (self.head.weight if self.is_last else None)


def microbatch_loss(logits: Tensor, targets: Tensor, n_counted: Tensor | int) -> Tensor:
    """Summed cross-entropy of one micro-batch over the whole batch's ``n_counted`` scored targets: the m
    losses add up to the batch's mean even when micro-batches score different numbers of targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100,
                           reduction="sum") / n_counted


def schedule_order(schedule: str, stage: int, n_stages: int, n_micro: int) -> list[tuple[str, int]]:
    """The ordered ("F"|"B", micro-batch) operations of one stage: the whole schedule in one list."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "gpipe":
        return [("F", i) for i in range(n_micro)] + [("B", i) for i in range(n_micro)]
    warmup = min(n_stages - stage - 1, n_micro)
    order = [("F", i) for i in range(warmup)]
    for i in range(n_micro - warmup):  # steady state: one forward, one backward
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(n_micro - warmup, n_micro)]


def run_schedule(stage: Stage, order: list[tuple[str, int]], tokens: list[Tensor], targets: list[Tensor],
                 hidden_like: tuple, rank: int, recorder: EventRecorder, prefetch: bool | None = None,
                 n_counted: int | None = None) -> float:
    """One training step over the micro-batches in ``order``; returns the summed loss on the last stage.

    Inputs from the neighbours and outputs to them go through ``comms.StageLinks``, which overlaps the
    transfers with compute where the backend allows (``prefetch``: None lets it choose).
    """
    inputs, outputs = {}, {}
    if n_counted is None:  # the whole batch's scored targets (every stage holds all of them)
        n_counted = sum(int((t != -100).sum()) for t in targets) or 1
    links = comms.StageLinks(order, rank, stage.is_first, stage.is_last, hidden_like, prefetch)
    losses = []
    for j, (kind, i) in enumerate(order):
        received = links.take(j)
        if kind == "F":
            x = tokens[i] if stage.is_first else received.requires_grad_()
            start = recorder.now()
            y = stage(x)
            if stage.is_last:
                y = microbatch_loss(y, targets[i], n_counted)
                losses.append(y.detach())
            recorder.record("F", i, start)
            inputs[i], outputs[i] = x, y
            if not stage.is_last:
                links.give(j, y.detach(), rank + 1)
        else:
            start = recorder.now()
            torch.autograd.backward(outputs.pop(i), received)
            recorder.record("B", i, start)
            x = inputs.pop(i)
            if not stage.is_first:
                links.give(j, x.grad, rank - 1)
    comms.wait_for_sends()
    return float(torch.stack(losses).sum()) if losses else 0.0  # the loss read once per step


def sync_tied_grad(stage: Stage, rank: int, n_stages: int) -> None:
    """Embedding on the first stage, head on the last, one matrix: each adds the other's gradient."""
    weight = stage.tied_weight()
    if weight is not None:
        comms.add_from_peer_(weight.grad, n_stages - 1 if rank == 0 else 0)


def check_step(cfg: ModelConfig, tokens: Tensor, targets: Tensor, n_stages: int, n_micro: int) -> None:
    """Bad shapes and counts are reported before any process starts."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    stage_bounds(cfg.n_layers, n_stages)
    plain = {"share_layers": False, "position_encoding": "rope", "checkpoint_every": 0}
    for name, allowed in plain.items():
        value = getattr(cfg, name)
        if value != allowed:  # a Stage runs its own slice of blocks with RoPE and keeps every activation
            raise ValueError(f"cfg.{name} must be {allowed!r} for pipeline stages, got {value!r}")
    check_token_batch(tokens, targets)
    if not isinstance(n_micro, int) or n_micro < 1 or tokens.shape[0] % n_micro:
        raise ValueError(f"n_micro (micro-batches) must be an int >= 1 dividing the batch size {tokens.shape[0]}, "
                         f"got {n_micro!r}")


def pipeline_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, n_micro: int,
                    schedule: str = "1f1b", steps: int = 1, seed: int = 0, impl: str = "ours",
                    measure_memory: bool = False, prefetch: bool | None = None) -> dict:
    """One rank (= one stage) of ``steps`` pipeline training steps without an optimiser (the same step repeated).

    ``impl`` = "ours" (``run_schedule``) or "torch" (``torch.distributed.pipelining`` on the same split).
    Returns this stage's gradients by full-model name, the loss (last stage), per-step recorded events,
    the peak number of micro-batches held, and, if asked, the peak bytes of a step.
    """
    check_step(cfg, tokens, targets, world_size, n_micro)
    if impl not in ("ours", "torch"):
        raise ValueError(f"impl must be 'ours' or 'torch', got {impl!r}")
    device = rank_device()
    torch.manual_seed(seed)
    stage = Stage(GPT(cfg), rank, world_size).to(device)
    tok_mbs = list(tokens.to(device).chunk(n_micro))
    tgt_mbs = list(targets.to(device).chunk(n_micro))
    hidden_like = ((tok_mbs[0].shape[0], tokens.shape[1], cfg.d_model), torch.float32, device)
    order = schedule_order(schedule, rank, world_size, n_micro)
    runs, loss, grads, peak_bytes = [], None, {}, None
    n_counted = int((targets != -100).sum()) or 1  # the batch's scored targets, counted once
    native = _torch_schedule(stage, rank, world_size, n_micro, schedule, device, n_counted) if impl == "torch" else None

    def one_step(recorder: EventRecorder) -> float:
        stage.zero_grad(set_to_none=True)
        if native is None:
            return run_schedule(stage, order, tok_mbs, tgt_mbs, hidden_like, rank, recorder, prefetch, n_counted)
        return _run_torch_schedule(native, stage, tokens.to(device), targets.to(device))

    origin = clock_origin()
    for step in range(steps):
        recorder = EventRecorder(origin, device)
        loss = one_step(recorder)
        runs.append(recorder.events)
        sync_tied_grad(stage, rank, world_size)
        if step == 0:
            grads = {stage.full_name(n): p.grad.detach().cpu().clone() for n, p in stage.named_parameters()}
    if measure_memory:  # one more step under the tracker, kept out of the timed runs
        from ..memory import measure_peak
        peak_bytes = measure_peak(lambda: one_step(EventRecorder(origin, device)), device)
    return {"rank": rank, "loss": loss if stage.is_last else None, "grads": grads, "runs": runs,
            "peak_held": peak_held(recorder.events), "peak_bytes": peak_bytes}


def _torch_schedule(stage: Stage, rank: int, n_stages: int, n_micro: int, schedule: str, device, n_counted: int):
    import inspect

    from torch.distributed import pipelining

    kind = {"gpipe": pipelining.ScheduleGPipe, "1f1b": pipelining.Schedule1F1B}[schedule]
    pstage = pipelining.PipelineStage(stage, rank, n_stages, device)
    kw = {"scale_grads": False} if "scale_grads" in inspect.signature(kind).parameters else {}
    return kind(pstage, n_microbatches=n_micro, loss_fn=lambda out, tgt: microbatch_loss(out, tgt, n_counted), **kw)


def _run_torch_schedule(native, stage: Stage, tokens: Tensor, targets: Tensor) -> float:
    if stage.is_first and stage.is_last:
        raise ValueError("the torch schedules need at least 2 stages")
    if stage.is_first:
        native.step(tokens)
        return 0.0
    if stage.is_last:
        losses: list[Tensor] = []
        native.step(target=targets, losses=losses)
        return float(sum(v.item() for v in losses))
    native.step()
    return 0.0


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


def _check_worker_args(world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, n_micro: int,
                       *_: object) -> None:
    check_step(cfg, tokens, targets, world_size, n_micro)


pipeline_worker.check_args = _check_worker_args


def schedules_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor,
                     n_micro: int, impls: tuple[str, ...] = ("ours",), prefetch: bool | None = None,
                     **kw) -> dict[str, dict]:
    """Both schedules (and implementations) in one process group: one launch, or one torchrun, for all."""
    return {f"{name}/{impl}": pipeline_worker(rank, world_size, cfg, tokens, targets, n_micro, name, impl=impl,
                                              prefetch=prefetch, **kw)
            for impl in impls for name in SCHEDULES}


schedules_worker.check_args = _check_worker_args


if __name__ == "__main__":
    import argparse
    import sys

    from .launch import run_from_env

    parser = argparse.ArgumentParser(description="one pipeline step per schedule, checked against one process")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    args = parser.parse_args()
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=4, n_heads=2, max_seq_len=args.seq_len)
    x = torch.randint(0, 64, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    reference = single_process_step(cfg, x, x.roll(-1, 1))
    for name, out in run_from_env(schedules_worker, cfg, x, x.roll(-1, 1), args.microbatches).items():
        lines = [f"{name}: rank {out['rank']} peak micro-batches held {out['peak_held']}"]
        if out["loss"] is not None:
            lines.insert(0, f"{name}: loss {out['loss']:.6f} single-process {reference['loss']:.6f} "
                            f"diff {abs(out['loss'] - reference['loss']):.1e}")
        sys.stdout.write("\n".join(lines) + "\n")  # one write per rank and schedule: ranks share the terminal
        sys.stdout.flush()
