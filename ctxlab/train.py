"""A small training loop for the book's GPT: AdamW, warmup + cosine, accumulation, clipping, checkpoints.

One function, ``train``, read top to bottom like nanoGPT's loop. Batches come from a callable
``get_batch(i) -> (tokens, targets)`` so that tasks generated on the fly plug in; ``i`` is the
micro-batch index ``step * accum + micro`` (the step itself when ``accum == 1``), so a batch source
that seeds itself from ``i`` makes the whole run reproducible and resumable. Checkpoints are written
to a temporary file and renamed (a crash never leaves half a checkpoint) and load with
``weights_only=True``; a resumed run continues with bit-identical losses on CPU.
"""
from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .atomic import atomic_write, write_json
from .clipping import STRATEGIES, GradNormMonitor, make_clipper
from .config import IGNORE, ModelConfig, check_token_batch, positive_int, require
from .model import GPT

BatchFn = Callable[[int], "tuple[Tensor, Tensor]"]
ClipArg = Union[None, float, str, Callable[[list], object]]


@dataclass
class TrainResult:
    """Plain per-step history: loss (mean over micro-batches), total gradient norm before and after
    clipping, learning rate, whether clipping acted; ``diverged`` when a loss became non-finite."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    clipped_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    layer_norms: dict[str, list[float]] = field(default_factory=dict)
    steps_done: int = 0
    diverged: bool = False

    @property
    def clipped_fraction(self) -> float:
        return sum(self.clipped) / len(self.clipped) if self.clipped else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95 as in GPT-3) or SGD with momentum 0.9; matrices are decayed, norm gains and
    biases are not (as in nanoGPT). SGD is here because its step is proportional to the gradient, the
    setting in which clipping was introduced (Pascanu et al. 2013); Adam normalises each coordinate."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def resolve_clip(clip: ClipArg, clip_threshold: float = 1.0) -> Callable[[list], object] | None:
    """None -> no clipping; a number -> global-norm clipping at that norm; a name -> ``make_clipper``;
    a callable is used as is (called with the list of parameters after backward)."""
    if clip is None:
        return None
    if callable(clip):
        return clip
    if isinstance(clip, str):
        return None if clip == "none" else make_clipper(clip, clip_threshold)
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        return make_clipper("norm", clip)
    raise TypeError(f"clip must be None, a number (max norm), one of {STRATEGIES} or a callable, got {clip!r}")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with ``torch.save`` atomically (``atomic.atomic_write``)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, no code runs."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_model(path: str | os.PathLike, model: GPT, meta: dict) -> None:
    """Weights and config at ``path``, ``meta`` beside it as JSON; the JSON first, so a ``.pt`` on disk
    always has its record (both writes are atomic)."""
    path = Path(path)
    write_json(path.with_suffix(".json"), meta, indent=2)
    save_checkpoint(path, {"config": asdict(model.cfg), "model": model.state_dict(), "meta": meta})


def load_model(path: str | Path, cfg: ModelConfig | Callable[[ModelConfig], ModelConfig] | None = None,
               device: str = "cpu") -> GPT:
    """Weights from ``path`` in a model built from ``cfg``: the saved config by default, or a function of
    it (read from the same load). RoPE tables are not weights, so one checkpoint reads with any scaling."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; create it with `python -m ctxlab.extend train`")
    state = load_checkpoint(path)
    saved = ModelConfig(**state["config"])
    model = GPT(cfg(saved) if callable(cfg) else cfg if cfg is not None else saved)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sum_over_ranks(x: float, device: torch.device) -> float:
    """x summed over the ranks of the default group (a number per rank; each rank's loss is over its slice),
    on the device the rank computes on (NCCL reduces only GPU tensors)."""
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def _token_share(targets: Tensor, device: torch.device, ignore_index: int = IGNORE) -> float:
    """world size x this rank's share of the counted targets: scales a rank's mean loss so that averaging
    the ranks' gradients gives the gradient of the global batch's mean (masked targets differ per slice)."""
    local = float((targets != ignore_index).sum())
    return local * dist.get_world_size() / max(_sum_over_ranks(local, device), 1.0)


def train(model: nn.Module, get_batch: BatchFn, steps: int, lr: float = 1e-3, warmup: int = 0,
          weight_decay: float = 0.1, accum: int = 1, optimizer: str = "adamw", clip: ClipArg = 1.0,
          clip_threshold: float = 1.0, min_lr_ratio: float = 0.1, checkpoint_path: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, resume: bool = False, progress: bool | None = None,
          device: str | torch.device | None = None, seed: int | None = 0, per_layer_norms: bool = False,
          stop_on_nonfinite: bool = True) -> TrainResult:
    """Train ``model`` for ``steps`` optimizer steps and return the per-step history.

    ``optimizer``: "adamw" (default) or "sgd" (momentum 0.9).
    ``clip``: None or "none" (no clipping), a number (global-norm clipping at that norm), a name from
    ``clipping.STRATEGIES`` used with ``clip_threshold``, or a callable of the parameter list.
    ``progress``: a tqdm bar; None shows it only when stderr is a terminal. With ``resume`` the run
    continues from ``checkpoint_path`` (model, optimizer, step, history and RNG state).
    Data parallel: pass a ``parallel.ddp.DataParallel`` model and a ``get_batch`` that returns this
    rank's slice; each rank's loss is weighted by its share of the counted targets (a mean over masked
    targets is not a mean of the ranks' means), gradients are averaged before clipping, the logged loss
    is the global mean, and only rank 0 writes checkpoints.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(get_batch):
        raise TypeError(f"get_batch must be a callable step -> (tokens, targets), got {type(get_batch).__name__}")
    require(_is_int(steps) and steps > 0, "steps", "a positive int", steps)
    require(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, "lr", "a finite number > 0", lr)
    require(_is_int(warmup) and 0 <= warmup <= steps, "warmup", f"an int in [0, steps={steps}]", warmup)
    require(isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf, "weight_decay",
           "a finite number >= 0", weight_decay)
    require(_is_int(accum) and accum >= 1, "accum", "an int >= 1", accum)
    require(isinstance(min_lr_ratio, (int, float)) and 0 <= min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]",
           min_lr_ratio)
    require(checkpoint_every is None or (_is_int(checkpoint_every) and checkpoint_every >= 1), "checkpoint_every",
           "None or an int >= 1", checkpoint_every)
    require(not (resume or checkpoint_every) or checkpoint_path is not None, "checkpoint_path",
           "a file path when resume or checkpoint_every is set", checkpoint_path)
    require(optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", optimizer)
    clip_fn = resolve_clip(clip, clip_threshold)
    sync = getattr(model, "finish_gradient_sync", None)  # a data-parallel wrapper averages gradients here
    require(sync is None or accum == 1, "accum", "1 with a data-parallel model (its hooks reduce every backward)",
           accum)
    writer = sync is None or not dist.is_initialized() or dist.get_rank() == 0
    bare = getattr(model, "module", model)  # checkpoints hold the wrapped model's own names: runs resume either way
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    opt = make_optimizer(model, lr, weight_decay, optimizer)
    monitor = GradNormMonitor(per_layer=per_layer_norms)
    result = TrainResult()
    start = 0
    if resume:
        if not Path(checkpoint_path).exists():
            raise FileNotFoundError(f"resume=True but no checkpoint at checkpoint_path={str(checkpoint_path)!r}")
        state = load_checkpoint(checkpoint_path)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        result = TrainResult(**state["history"])
        monitor.load_state_dict(state["monitor"])
        start = state["step"]
        _set_rng_state(state["rng"])
    elif seed is not None:
        torch.manual_seed(seed)
    result.layer_norms = monitor.layer_norms  # one dict, filled by the monitor

    def checkpoint(step: int) -> None:
        if not writer:
            return
        save_checkpoint(checkpoint_path, {
            "model": bare.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "schedule": {"lr": lr, "warmup": warmup, "steps": steps, "min_lr_ratio": min_lr_ratio},
            "history": result.to_dict(), "monitor": monitor.state_dict(), "rng": _rng_state()})

    from tqdm.auto import tqdm
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not show, desc="train")
    model.train()
    for step in bar:
        step_lr = lr_at(step, lr, warmup, steps, min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = step_lr
        loss_sum = 0.0
        for micro in range(accum):
            tokens, targets = get_batch(step * accum + micro)
            _, loss = model(tokens.to(device), targets.to(device))
            if sync is not None:
                loss = loss * _token_share(targets, device)
            (loss / accum).backward()
            loss_sum += loss.item()
        if sync is not None:
            sync()
            loss_sum = _sum_over_ranks(loss_sum, device) / dist.get_world_size()
        grad_norm = monitor.observe(bare, clip_fn)
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.losses.append(loss_sum / accum)
        result.grad_norms.append(grad_norm)
        result.clipped_norms.append(monitor.clipped_norms[-1])
        result.clipped.append(monitor.clipped[-1])
        result.lrs.append(step_lr)
        result.steps_done = step + 1
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}", gnorm=f"{grad_norm:.2f}", refresh=False)
        if not math.isfinite(result.losses[-1]):
            result.diverged = True
            if stop_on_nonfinite:
                break
        if checkpoint_path is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1)
    bar.close()
    if checkpoint_path is not None and not result.diverged:
        checkpoint(result.steps_done)
    return result


def train_single(cfg: ModelConfig, tokens: Tensor, targets: Tensor, steps: int = 5, lr: float = 1e-3,
                 seed: int = 0) -> dict:
    """The reference every parallel run is tested against: one process, the whole global batch, AdamW.

    Returns the loss of every step, the first step's gradients and the final weights, by parameter name."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    check_token_batch(tokens, targets)
    positive_int("steps", steps)
    torch.manual_seed(seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, grads = [], {}
    for step in range(steps):
        _, loss = model(tokens, targets)
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"losses": losses, "grads": grads, "final": final}
