"""Pipeline parallelism: the GPT's blocks split into p stages, one per rank, and micro-batches streamed through.

Pipelining splits *layers* across devices (erratum E10): stage s runs blocks [lo_s, hi_s), the
embedding lives on the first stage, the final norm, head and loss on the last. A step over m
micro-batches is a *schedule*, an ordered list of ("F", i) / ("B", i) per rank:

* GPipe (Huang et al. 2019): all forwards, then all backwards; holds m micro-batches of activations.
* 1F1B (Narayanan et al. 2019): p - s - 1 warm-up forwards, then one forward / one backward, then the
  remaining backwards; same bubble (p - 1) / (m + p - 1), but at most p - s micro-batches held.

``run_schedule`` walks such a list (``bubble.schedule_order``) with real send/recv (``pipeline_comms``);
``bubble.simulate`` walks the same lists with unit times to draw the ideal timeline. The checks against
one process and against torch's schedules live in ``ctxlab.bench.pipeline_torch``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import IGNORE, ModelConfig, check_token_batch
from ..measure import measure_peak
from ..model import GPT
from ..positions import Positions
from .bubble import schedule_order
from .events import EventRecorder, clock_origin, peak_held
from .pipeline_comms import StageLinks, add_from_peer_, wait_for_sends
from .launch import rank_device



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
        pos = Positions(*self.rope(torch.arange(x.shape[1], device=x.device), x.dtype))
        for block in self.blocks:
            x = block(x, pos)
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
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum") / n_counted


def run_schedule(stage: Stage, order: list[tuple[str, int]], tokens: list[Tensor], targets: list[Tensor],
                 hidden_like: tuple, rank: int, recorder: EventRecorder, prefetch: bool | None = None,
                 n_counted: int | None = None) -> float:
    """One training step over the micro-batches in ``order``; returns the summed loss on the last stage.

    Inputs from the neighbours and outputs to them go through ``pipeline_comms.StageLinks``, which overlaps the
    transfers with compute where the backend allows (``prefetch``: None lets it choose).
    """
    inputs, outputs = {}, {}
    if n_counted is None:  # the whole batch's scored targets (every stage holds all of them)
        n_counted = sum(int((t != IGNORE).sum()) for t in targets) or 1
    links = StageLinks(order, rank, stage.is_first, stage.is_last, hidden_like, prefetch)
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
    wait_for_sends()
    return float(torch.stack(losses).sum()) if losses else 0.0  # the loss read once per step


def sync_tied_grad(stage: Stage, rank: int, n_stages: int) -> None:
    """Embedding on the first stage, head on the last, one matrix: each adds the other's gradient."""
    weight = stage.tied_weight()
    if weight is not None:
        add_from_peer_(weight.grad, n_stages - 1 if rank == 0 else 0)


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
                    schedule: str = "1f1b", steps: int = 1, seed: int = 0, measure_memory: bool = False,
                    prefetch: bool | None = None, runner: Callable | None = None) -> dict:
    """One rank (= one stage) of ``steps`` pipeline training steps without an optimiser (the same step repeated).

    Returns this stage's gradients by full-model name, the loss (last stage), per-step recorded events,
    the peak number of micro-batches held, and, if asked, the peak bytes of a step. ``runner`` replaces
    ``run_schedule`` by another implementation on the same split (the bench's adapter to
    ``torch.distributed.pipelining``): ``runner(stage, rank, n_stages, n_micro, schedule, device, n_counted,
    tokens, targets)`` returns a function that runs one step and returns the loss.
    """
    check_step(cfg, tokens, targets, world_size, n_micro)
    device = rank_device()
    torch.manual_seed(seed)
    stage = Stage(GPT(cfg), rank, world_size).to(device)
    tok_mbs = list(tokens.to(device).chunk(n_micro))
    tgt_mbs = list(targets.to(device).chunk(n_micro))
    hidden_like = ((tok_mbs[0].shape[0], tokens.shape[1], cfg.d_model), torch.float32, device)
    order = schedule_order(schedule, rank, world_size, n_micro)
    runs, loss, grads, peak_bytes = [], None, {}, None
    n_counted = int((targets != IGNORE).sum()) or 1  # the batch's scored targets, counted once
    other = None if runner is None else runner(stage, rank, world_size, n_micro, schedule, device, n_counted,
                                               tokens.to(device), targets.to(device))

    def one_step(recorder: EventRecorder) -> float:
        stage.zero_grad(set_to_none=True)
        if other is None:
            return run_schedule(stage, order, tok_mbs, tgt_mbs, hidden_like, rank, recorder, prefetch, n_counted)
        return other()

    origin = clock_origin()
    for step in range(steps):
        recorder = EventRecorder(origin, device)
        loss = one_step(recorder)
        runs.append(recorder.events)
        sync_tied_grad(stage, rank, world_size)
        if step == 0:
            grads = {stage.full_name(n): p.grad.detach().cpu().clone() for n, p in stage.named_parameters()}
    if measure_memory:  # one more step under the tracker, kept out of the timed runs
        peak_bytes = measure_peak(lambda: one_step(EventRecorder(origin, device)), device)
    return {"rank": rank, "loss": loss if stage.is_last else None, "grads": grads, "runs": runs,
            "peak_held": peak_held(recorder.events), "peak_bytes": peak_bytes}


def _check_worker_args(world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, n_micro: int,
                       *_: object) -> None:
    check_step(cfg, tokens, targets, world_size, n_micro)


pipeline_worker.check_args = _check_worker_args
