"""Context parallelism for the reference GPT: each rank runs the whole model on its share of the sequence.

Everything in the model except attention works token by token, so it needs nothing new: only
attention has to see the other ranks' tokens, and ``context_parallel`` swaps ring attention (or
Ulysses, ``method="ulysses"``) into every attention layer for the duration of a ``with`` block, without
changing the model's code. Tokens, targets and positions
are sharded the same way, and RoPE rotates each token by its global position. The loss is a sum
over this rank's tokens divided by the global token count, so summing the ranks' gradients (one
all-reduce, as in data parallelism) gives exactly the gradient of one rank on the whole sequence.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import IGNORE, check_token_batch
from ..model import CausalSelfAttention
from .ddp import flat_all_reduce, unflatten_into
from .ring import ring_attention
from .ring_comms import require_process_group
from .sharding import check_seq_len, shard, shard_positions
from .ulysses import UlyssesLayerAttention, check_heads

METHODS = ("ring", "ulysses")

class RingLayerAttention:
    """Ring attention with the signature a model's attention layer calls. Ranks check that they agree once
    per ``context_parallel`` block (one all_gather), not at every layer."""

    def __init__(self, group: dist.ProcessGroup, zigzag: bool):
        self.group, self.zigzag, self.checked = group, zigzag, False

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                 bias: Tensor | None = None) -> Tensor:
        if mask is not None or bias is not None:
            raise ValueError("ring attention takes no explicit mask or bias (only causal=True/False)")
        check, self.checked = not self.checked, True
        return ring_attention(q, k, v, causal=causal, zigzag=self.zigzag, group=self.group, check=check)


def _check_method(method: str, model: nn.Module, group: dist.ProcessGroup) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ulysses" and hasattr(model, "cfg"):
        check_heads(model.cfg.n_heads, model.cfg.n_kv_heads, dist.get_world_size(group))


@contextmanager
def context_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, zigzag: bool = True,
                     method: str = "ring") -> Iterator[None]:
    """Inside the block, every attention layer of ``model`` (a ctxlab GPT) runs ring attention (or Ulysses)
    over ``group``.

    Each layer's attention function is swapped for the ring and put back on exit, even after an error:
    nothing outside the model changes, and the model's config is not touched.
    """
    group = require_process_group(group)
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)] if isinstance(model, nn.Module) else []
    if not layers:
        raise TypeError(f"model must be a ctxlab GPT (with attention layers), got {type(model).__name__}")
    if any(isinstance(m.attend, (RingLayerAttention, UlyssesLayerAttention)) for m in layers):
        raise RuntimeError("context_parallel blocks cannot be nested")
    _check_method(method, model, group)
    previous = [m.attend for m in layers]
    ring = RingLayerAttention(group, zigzag) if method == "ring" else UlyssesLayerAttention(group, zigzag)
    for m in layers:
        m.attend = ring
    try:
        yield
    finally:
        for m, attend in zip(layers, previous):
            m.attend = attend


def context_parallel_step(model: nn.Module, tokens: Tensor, targets: Tensor, group: dist.ProcessGroup | None = None,
                          zigzag: bool = True, optimizer: torch.optim.Optimizer | None = None,
                          method: str = "ring") -> Tensor:
    """One training step with the sequence split over ``group``; returns the global mean loss.

    Every rank passes the same full batch (B, T) and keeps its shard of it. After the call each
    rank's ``.grad`` holds the full gradient (then ``optimizer.step()`` runs, if one is given), equal
    to that of one rank training on the whole sequence.
    """
    if getattr(getattr(model, "cfg", None), "checkpoint_every", 0):  # backward rebuilds blocks after the ring
        raise ValueError(f"cfg.checkpoint_every must be 0 under context parallelism, got "
                         f"{model.cfg.checkpoint_every}: recomputed blocks would not run the ring")
    group = require_process_group(group)
    _check_method(method, model, group)
    check_token_batch(tokens, targets)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    seq_len = tokens.shape[1]
    check_seq_len(seq_len, world, zigzag)
    if seq_len > model.cfg.max_seq_len:
        raise ValueError(f"sequence of {seq_len} tokens exceeds max_seq_len={model.cfg.max_seq_len}")
    local_tokens, local_targets = (shard(t, rank, world, zigzag, dim=1) for t in (tokens, targets))
    positions = shard_positions(seq_len, rank, world, zigzag, tokens.device)
    counted = (targets != IGNORE).sum().clamp(min=1)  # every rank holds the full batch: no all-reduce needed
    with context_parallel(model, group, zigzag, method):
        logits, _ = model(local_tokens, positions=positions)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), local_targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum") / counted
    loss.backward()  # the ring's backward runs here, outside the block: it needs only the group
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat, _ = flat_all_reduce(grads, group)  # one all-reduce for the whole model
    unflatten_into(flat, grads)
    if optimizer is not None:
        optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total, group=group)
    return total
