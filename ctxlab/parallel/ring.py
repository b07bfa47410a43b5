"""Ring attention: exact attention over a sequence split across P ranks (context parallelism).

Each rank keeps its T/P queries and, in P steps, sees every rank's keys and values: at step i it
holds the K/V block of rank (rank - i) mod P, computes attention of its queries against that block,
and passes the block on to the next rank while it computes. The partial results are combined by the
log-sum-exp merge (``merge_partials``), which makes the result exact, not approximate. The backward
pass rotates K/V again together with their gradient accumulators, which arrive back at their owners
after one more hop. No rank ever holds more than two K/V blocks, so attention memory per rank falls
like 1/P and the context that fits grows like P (Liu et al. 2023, Ring Attention).

Under a causal mask a block from a later part of the sequence is fully masked and skipped;
``ring_schedule`` says which blocks each rank computes at each step, and the autograd function
below follows exactly that schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ..attention import attention_with_lse, check_qkv, merge_partials, repeat_kv
from .ring_comms import RingComm, require_process_group
from .sharding import check_rank, check_world_size, shard_positions


@dataclass(frozen=True)
class ScoreBlock:
    """One block of work: local query rows [q0, q1) against key columns [k0, k1) of ``kv_rank``'s block."""

    step: int
    rank: int
    kv_rank: int
    q0: int
    q1: int
    k0: int
    k1: int
    masked: bool  # True on the diagonal, where the causal mask cuts through the block

    @property
    def work(self) -> int:
        """Score entries computed (query rows x key columns)."""
        return (self.q1 - self.q0) * (self.k1 - self.k0)


def plan_block(rank: int, step: int, world_size: int, local_len: int, causal: bool, zigzag: bool) -> ScoreBlock | None:
    """What ``rank`` computes at ``step``; None when the causal mask hides the whole block.

    Plain causal: keys from an earlier rank are all visible, from a later rank none. Zig-zag (rank r
    holds chunks r and 2P-1-r): from an earlier rank only its first chunk is visible, to all queries;
    from a later rank both chunks are visible, to the second query chunk only. Either way half a block.
    """
    check_rank(rank, world_size)
    kv_rank = (rank - step) % world_size
    full = ScoreBlock(step, rank, kv_rank, 0, local_len, 0, local_len, masked=False)
    if not causal:
        return full
    if kv_rank == rank:
        return ScoreBlock(step, rank, kv_rank, 0, local_len, 0, local_len, masked=True)
    if not zigzag:
        return full if kv_rank < rank else None
    half = local_len // 2
    if kv_rank < rank:
        return ScoreBlock(step, rank, kv_rank, 0, local_len, 0, half, masked=False)
    return ScoreBlock(step, rank, kv_rank, half, local_len, 0, local_len, masked=False)


def ring_schedule(world_size: int, local_len: int, causal: bool = True,
                  zigzag: bool = False) -> list[list[ScoreBlock | None]]:
    """``schedule[rank][step]``: the whole ring, as the autograd function runs it."""
    check_world_size(world_size)
    return [[plan_block(r, s, world_size, local_len, causal, zigzag) for s in range(world_size)]
            for r in range(world_size)]


def comm_bytes_formula(world_size: int, kv_block_bytes: int, grad_block_bytes: int | None = None) -> dict[str, int]:
    """Bytes each rank sends per attention call: K and V go P-1 hops forward and again backward;
    dK and dV go P hops (the last one home)."""
    grad_block_bytes = kv_block_bytes if grad_block_bytes is None else grad_block_bytes
    hops = world_size - 1
    return {"forward": 2 * hops * kv_block_bytes,
            "backward": 2 * hops * kv_block_bytes + (2 * world_size * grad_block_bytes if world_size > 1 else 0)}


@dataclass
class RingStats:
    """What one rank did in a ring attention call: score entries per step and bytes sent."""

    work: list[int] = field(default_factory=list)
    forward_bytes: int = 0
    backward_bytes: int = 0


def _diagonal_mask(blk: ScoreBlock, local_len: int, world_size: int, zigzag: bool, device) -> Tensor:
    """Causal mask of a block from global positions (query may see key iff key position <= query's)."""
    pos = shard_positions(local_len * world_size, blk.rank, world_size, zigzag, device)
    return (pos[blk.q0:blk.q1, None] >= pos[None, blk.k0:blk.k1])[None, None]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums run in fp32 for 16-bit inputs and in the inputs' own precision when that is wider (fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _block_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """attention_with_lse of one block; it takes at most as many queries as keys, so longer query
    runs (zig-zag, earlier rank: all queries against half a block) go in pieces."""
    t_k = k.shape[2]
    if q.shape[2] <= t_k:
        return attention_with_lse(q, k, v, causal=False, mask=mask)
    pieces = [attention_with_lse(q[:, :, i:i + t_k], k, v, causal=False) for i in range(0, q.shape[2], t_k)]
    return torch.cat([o for o, _ in pieces], dim=2), torch.cat([l for _, l in pieces], dim=2)


def _block_backward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, delta: Tensor,
                    mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of one block from the *final* lse: P = exp(S - lse), dS = P * (dP - rowsum(dO * O))."""
    b, h, _, d = q.shape
    h_kv = k.shape[1]
    scale = 1.0 / math.sqrt(d)
    acc = accumulator_dtype(q.dtype)
    kr, vr = repeat_kv(k, h).to(acc), repeat_kv(v, h).to(acc)
    qf, dof = q.to(acc), dout.to(acc)
    scores = qf @ kr.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.exp(scores - lse.unsqueeze(-1))
    dv = probs.transpose(-2, -1) @ dof
    dscores = probs * (dof @ vr.transpose(-2, -1) - delta.unsqueeze(-1))
    dq = dscores @ kr * scale
    dk = dscores.transpose(-2, -1) @ qf * scale
    fold = (b, h_kv, h // h_kv, k.shape[2], d)  # sum the query heads that share one k/v head (GQA)
    return dq, dk.reshape(fold).sum(2), dv.reshape(fold).sum(2)


class RingAttention(torch.autograd.Function):
    """Exact attention over the ring: forward merges P partial results, backward returns dK/dV home."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, zigzag: bool,
                group: dist.ProcessGroup | None, stats: RingStats | None) -> Tensor:
        comm = RingComm(group)
        world, rank, local_len = comm.world_size, comm.rank, q.shape[2]
        acc = accumulator_dtype(q.dtype)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)
        k_cur, v_cur = k, v
        for step in range(world):
            incoming = comm.start([k_cur, v_cur]) if step < world - 1 else None  # overlaps the compute below
            blk = plan_block(rank, step, world, local_len, causal, zigzag)
            if blk is not None:
                mask = _diagonal_mask(blk, local_len, world, zigzag, q.device) if blk.masked else None
                o, l = _block_forward(q[:, :, blk.q0:blk.q1], k_cur[:, :, blk.k0:blk.k1],
                                      v_cur[:, :, blk.k0:blk.k1], mask)
                rows = slice(blk.q0, blk.q1)
                out[:, :, rows], lse[:, :, rows] = merge_partials(out[:, :, rows], lse[:, :, rows],
                                                                  o.to(acc), l.to(acc))
            if stats is not None:
                stats.work.append(0 if blk is None else blk.work)
            if incoming is not None:
                comm.wait()
                k_cur, v_cur = incoming
        if stats is not None:
            stats.forward_bytes += comm.bytes_sent
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.zigzag, ctx.group, ctx.stats = causal, zigzag, group, stats
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        comm = RingComm(ctx.group)
        grads = RingComm(ctx.group, first_tag=2)  # the dK/dV accumulators, in flight while the next block computes
        world, rank, local_len = comm.world_size, comm.rank, q.shape[2]
        dout = dout.contiguous()
        acc = accumulator_dtype(q.dtype)
        delta = (dout.to(acc) * out.to(acc)).sum(-1)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        arriving: list[Tensor] = []
        k_cur, v_cur = k, v
        for step in range(world):
            incoming = comm.start([k_cur, v_cur]) if step < world - 1 else None
            blk = plan_block(rank, step, world, local_len, ctx.causal, ctx.zigzag)
            if blk is not None:
                mask = _diagonal_mask(blk, local_len, world, ctx.zigzag, q.device) if blk.masked else None
                rows, cols = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
                dq_b, dk_b, dv_b = _block_backward(q[:, :, rows], k_cur[:, :, cols], v_cur[:, :, cols],
                                                   dout[:, :, rows], lse[:, :, rows], delta[:, :, rows], mask)
                dq[:, :, rows] += dq_b
            # the block's accumulators travel with it: the previous rank's arrive now (they were in flight
            # while this block computed), ours are added, and they go on; after step P-1 that hop takes
            # them home. Step 0 is the rank's own block, every column: its gradients start the accumulators.
            if step == 0:
                dk_acc, dv_acc = dk_b, dv_b
            else:
                grads.wait()
                dk_acc, dv_acc = arriving
                if blk is not None:
                    dk_acc[:, :, cols] += dk_b
                    dv_acc[:, :, cols] += dv_b
            arriving = grads.start([dk_acc, dv_acc])
            if incoming is not None:
                comm.wait()
                k_cur, v_cur = incoming
        grads.wait()
        dk_acc, dv_acc = arriving
        if ctx.stats is not None:
            ctx.stats.backward_bytes += comm.bytes_sent + grads.bytes_sent
        return dq.to(q.dtype), dk_acc.to(k.dtype), dv_acc.to(v.dtype), None, None, None, None


def _check_same_everywhere(q: Tensor, k: Tensor, causal: bool, zigzag: bool, group: dist.ProcessGroup) -> None:
    """One small all_gather so that a rank with other shapes or flags fails loudly on every rank instead of hanging."""
    mine = torch.tensor([*q.shape, *k.shape, int(causal), int(zigzag), q.element_size()], dtype=torch.int64,
                        device=q.device)  # NCCL gathers only GPU tensors
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    if any(not torch.equal(other, everyone[0]) for other in everyone):
        raise ValueError("ring attention needs the same q/k/v shapes, dtype, causal and zigzag on every rank; got "
                         "(q shape, k shape, causal, zigzag, bytes per element) = "
                         + ", ".join(f"rank {r}: {t.tolist()}" for r, t in enumerate(everyone)))


def ring_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, zigzag: bool = False,
                   group: dist.ProcessGroup | None = None, stats: RingStats | None = None,
                   check: bool = True) -> Tensor:
    """Attention of this rank's queries against the whole sequence, spread over ``group``.

    q (B, H, T/P, D) and k, v (B, Hkv, T/P, D) are this rank's shard, laid out by
    ``sharding.shard(..., zigzag=zigzag)``. ``check`` verifies that every rank agrees (one tiny
    all_gather), so a mismatch raises instead of hanging.
    """
    group = require_process_group(group)
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must hold the same number of local positions, got {q.shape[2]} and {k.shape[2]}")
    if zigzag and q.shape[2] % 2:
        raise ValueError(f"zig-zag sharding needs an even local length (two chunks per rank), got {q.shape[2]}")
    if check:
        _check_same_everywhere(q, k, causal, zigzag, group)
    return RingAttention.apply(q, k, v, bool(causal), bool(zigzag), group, stats)
