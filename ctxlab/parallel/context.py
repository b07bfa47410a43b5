"""Context parallelism for the reference GPT: each rank runs the whole model on its share of the sequence.

Everything in the model except attention works token by token, so it needs nothing new: only
attention has to see the other ranks' tokens, and ``context_parallel`` swaps in ring attention for
the duration of a ``with`` block, without changing the model's code. Tokens, targets and positions
are sharded the same way, and RoPE rotates each token by its global position. The loss is a sum
over this rank's tokens divided by the global token count, so summing the ranks' gradients (one
all-reduce, as in data parallelism) gives exactly the gradient of one rank on the whole sequence.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import BACKENDS
from .ring import ring_attention
from .ring_comms import require_process_group
from .sharding import check_seq_len, check_token_batch, shard, shard_positions

RING_BACKEND = "ring"


def _ring_backend(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None, *,
                  group: dist.ProcessGroup | None, zigzag: bool, checked: list[bool]) -> Tensor:
    if mask is not None:
        raise ValueError("ring attention takes no explicit mask (only causal=True/False)")
    check, checked[0] = not checked[0], True  # ranks agree once per block (one all_gather), not at every layer
    return ring_attention(q, k, v, causal=causal, zigzag=zigzag, group=group, check=check)


@contextmanager
def context_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, zigzag: bool = True) -> Iterator[None]:
    """Inside the block, every attention layer of ``model`` (a ctxlab GPT) runs ring attention over ``group``.

    The ring is offered as one more attention backend, present only while the block runs, and the
    model's config points at it; both are restored on exit, even after an error.
    """
    group = require_process_group(group)
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "attention"):
        raise TypeError(f"model must be a ctxlab GPT (with .cfg.attention), got {type(model).__name__}")
    if RING_BACKEND in BACKENDS:
        raise RuntimeError("context_parallel blocks cannot be nested")
    previous = cfg.attention
    BACKENDS[RING_BACKEND] = partial(_ring_backend, group=group, zigzag=zigzag, checked=[False])
    cfg.attention = RING_BACKEND
    try:
        yield
    finally:
        cfg.attention = previous
        del BACKENDS[RING_BACKEND]


def context_parallel_step(model: nn.Module, tokens: Tensor, targets: Tensor, group: dist.ProcessGroup | None = None,
                          zigzag: bool = True, optimizer: torch.optim.Optimizer | None = None) -> Tensor:
    """One training step with the sequence split over ``group``; returns the global mean loss.

    Every rank passes the same full batch (B, T) and keeps its shard of it. After the call each
    rank's ``.grad`` holds the full gradient (then ``optimizer.step()`` runs, if one is given), equal
    to that of one rank training on the whole sequence.
    """
    group = require_process_group(group)
    check_token_batch(tokens, targets)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    seq_len = tokens.shape[1]
    check_seq_len(seq_len, world, zigzag)
    if seq_len > model.cfg.max_seq_len:
        raise ValueError(f"sequence of {seq_len} tokens exceeds max_seq_len={model.cfg.max_seq_len}")
    local_tokens, local_targets = (shard(t, rank, world, zigzag, dim=1) for t in (tokens, targets))
    positions = shard_positions(seq_len, rank, world, zigzag, tokens.device)
    counted = (targets != -100).sum().clamp(min=1)  # every rank holds the full batch: no all-reduce needed
    with context_parallel(model, group, zigzag):
        logits, _ = model(local_tokens, positions=positions)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), local_targets.reshape(-1),
                           ignore_index=-100, reduction="sum") / counted
    loss.backward()  # the ring's backward runs here, outside the block: it needs only the group
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce for the whole model
    dist.all_reduce(flat, group=group)
    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(summed.view_as(g))
    if optimizer is not None:
        optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total, group=group)
    return total
