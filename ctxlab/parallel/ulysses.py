"""DeepSpeed-Ulysses (Jacobs et al. 2023): context parallelism by two all-to-alls around attention.

Each of the P ranks holds T/P tokens of q, k and v for every head. One all-to-all trades them for
all T tokens of H/P heads (heads are independent in attention), so each rank runs ordinary attention,
any kernel, causal or not, on whole sequences for its heads; a second all-to-all trades the output
back to T/P tokens of every head. Per rank and layer the forward sends (P-1)/P of its q, k, v and
output shards, a volume that does not grow with P, where the ring sends (P-1)/P of the whole
sequence's K/V. The limit: P must divide the number of K/V heads (with GQA, often 8 or fewer).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..attention import attention, check_qkv
from ..config import positive_int
from .ring import comm_bytes_formula as ring_comm_bytes
from .ring_comms import require_process_group
from .sharding import check_same_everywhere, chunk_ids, num_chunks


def check_heads(n_heads: int, n_kv_heads: int, world_size: int) -> None:
    """Ulysses gives each rank H/P query heads and Hkv/P K/V heads: both must divide."""
    if n_heads % world_size or n_kv_heads % world_size:
        raise ValueError(f"Ulysses needs the world size to divide the heads ({n_heads}) and the K/V heads "
                         f"({n_kv_heads}), got world_size={world_size}: use the ring, or fewer ranks")


def all_to_all(x: Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> Tensor:
    """Split ``x`` into P parts along ``scatter_dim``, send part j to rank j, and concatenate what arrives
    along ``gather_dim`` in rank order."""
    world = dist.get_world_size(group)
    parts = torch.stack(x.chunk(world, dim=scatter_dim)).contiguous()
    received = torch.empty_like(parts)
    dist.all_to_all_single(received, parts, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


class AllToAll(torch.autograd.Function):
    """``all_to_all`` with its own inverse as backward: the gradient goes back the way the data came."""

    @staticmethod
    def forward(ctx, x: Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup, stats: dict | None):
        ctx.dims, ctx.group, ctx.stats = (scatter_dim, gather_dim), group, stats
        _count(stats, x, group)
        return all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scatter_dim, gather_dim = ctx.dims
        _count(ctx.stats, grad, ctx.group)
        return all_to_all(grad.contiguous(), gather_dim, scatter_dim, ctx.group), None, None, None, None


def _count(stats: dict | None, x: Tensor, group: dist.ProcessGroup) -> None:
    if stats is not None:  # what this rank sends: every part but its own
        world = dist.get_world_size(group)
        stats["bytes_sent"] = stats.get("bytes_sent", 0) + x.numel() * x.element_size() * (world - 1) // world


def _natural_order(x: Tensor, world: int, zigzag: bool, inverse: bool = False) -> Tensor:
    """The gathered sequence holds rank 0's chunks, then rank 1's, ...; put them in text order (or back)."""
    if not zigzag:
        return x
    stored = [c for r in range(world) for c in chunk_ids(r, world, True)]  # chunk index at each place
    pieces = x.chunk(num_chunks(world, True), dim=2)
    if inverse:
        return torch.cat([pieces[c] for c in stored], dim=2)
    place = {c: i for i, c in enumerate(stored)}
    return torch.cat([pieces[place[c]] for c in range(len(stored))], dim=2)


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, zigzag: bool = False,
                      group: dist.ProcessGroup | None = None, backend: str = "sdpa",
                      stats: dict | None = None, check: bool = True) -> Tensor:
    """Attention of this rank's tokens against the whole sequence, spread over ``group`` by heads.

    q (B, H, T/P, D) and k, v (B, Hkv, T/P, D) are this rank's shard, laid out by
    ``sharding.shard(..., zigzag=zigzag)``; the result has q's shape. ``stats["bytes_sent"]`` adds up
    what this rank sends, forward and backward. ``check`` verifies that every rank agrees (one tiny
    all_gather first), so a mismatch raises on every rank instead of hanging in the all-to-all."""
    group = require_process_group(group)
    check_qkv(q, k, v)
    if check:  # first: a check that fails on one rank only would leave the others waiting
        check_same_everywhere("Ulysses attention", q, k, causal, zigzag, group)
    world = dist.get_world_size(group)
    check_heads(q.shape[1], k.shape[1], world)
    if q.shape[2] != k.shape[2] or (zigzag and q.shape[2] % 2):
        raise ValueError(f"q and k must hold the same number of local positions (even for zig-zag), got "
                         f"{q.shape[2]} and {k.shape[2]}")
    q, k, v = (_natural_order(AllToAll.apply(t, 1, 2, group, stats), world, zigzag) for t in (q, k, v))
    out = attention(q, k, v, backend, causal=causal)  # whole sequences, H/P heads
    return AllToAll.apply(_natural_order(out, world, zigzag, inverse=True).contiguous(), 2, 1, group, stats)


def comm_bytes_formula(world_size: int, q_bytes: int, kv_bytes: int) -> dict[str, int]:
    """Bytes one rank sends per layer: forward all-to-alls of q, k, v and the output ((P-1)/P of each
    local shard; ``q_bytes`` and ``kv_bytes`` are one local q and one local k), and the same in backward."""
    share = lambda n: n * (world_size - 1) // world_size  # noqa: E731
    forward = share(q_bytes) + 2 * share(kv_bytes) + share(q_bytes)
    return {"forward": forward, "backward": forward, "total": 2 * forward}


def hybrid_comm_bytes(ulysses_size: int, ring_size: int, q_bytes: int, kv_bytes: int,
                      grad_bytes: int | None = None) -> dict[str, int]:
    """Bytes one rank sends per layer when P = U x R ranks run Ulysses inside groups of U and the ring
    across the R groups (the 2D design of USP, Fang and Zhao 2024). ``q_bytes``, ``kv_bytes``: one rank's
    local q and k (T/P tokens of every head). After the all-to-all a rank holds T/R tokens of Hkv/U heads,
    a K/V block of exactly ``kv_bytes``, which the ring passes R-1 hops; U = 1 is the ring, R = 1 Ulysses."""
    positive_int("ulysses_size", ulysses_size), positive_int("ring_size", ring_size)
    inner = comm_bytes_formula(ulysses_size, q_bytes, kv_bytes)
    outer = ring_comm_bytes(ring_size, kv_bytes, grad_bytes)
    return {"forward": inner["forward"] + outer["forward"], "backward": inner["backward"] + outer["backward"],
            "total": inner["total"] + outer["forward"] + outer["backward"]}


class UlyssesLayerAttention:
    """Ulysses with the signature a model's attention layer calls (``parallel.context`` swaps it in)."""

    def __init__(self, group: dist.ProcessGroup, zigzag: bool, backend: str = "sdpa"):
        self.group, self.zigzag, self.backend = group, zigzag, backend

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                 bias: Tensor | None = None) -> Tensor:
        if mask is not None or bias is not None:
            raise ValueError("Ulysses attention takes no explicit mask or bias (only causal=True/False)")
        return ulysses_attention(q, k, v, causal=causal, zigzag=self.zigzag, group=self.group, backend=self.backend)
