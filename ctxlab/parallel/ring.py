"""Ring attention: exact attention over a sequence split across P ranks (context parallelism).

Each rank keeps its T/P queries and, in P steps, sees every rank's keys and values: at step i it
holds the K/V block of rank (rank - i) mod P, computes attention of its queries against that block,
and passes the block on to the next rank while it computes. The partial results are combined by the
log-sum-exp merge, which makes the result exact, not approximate. Each block runs the chunked
(flash-style) kernel of chapter 2, so no rank ever holds a (T/P)^2 block of scores. The backward
pass rotates K/V again together with their gradient accumulators, the last hop taking each home.
No rank holds more than two K/V blocks, so attention memory per rank falls like 1/P and the
context that fits grows like P (Liu et al. 2023, Ring Attention).

Under a causal mask a block from a later part of the sequence is fully masked and skipped;
``ring_schedule`` says which blocks each rank computes at each step, and the autograd function
below follows exactly that schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ..attention import check_qkv, chunked_backward, chunked_forward
from ..attention_lse import fused_backward, fused_forward, fused_supported
from ..config import positive_int
from .ring_comms import ExchangeTiming, RingComm, require_process_group
from .sharding import check_rank, check_same_everywhere, check_world_size


KERNELS = ("chunked", "fused")  # a ring step's block kernel: chapter 2's, or torch's flash kernel


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
    """Bytes each rank sends per attention call: K and V go P-1 hops forward and again backward; the
    dK/dV accumulators go P-1 hops too (started by the first rank to see a block, the last hop home)."""
    grad_block_bytes = kv_block_bytes if grad_block_bytes is None else grad_block_bytes
    hops = world_size - 1
    return {"forward": 2 * hops * kv_block_bytes, "backward": 2 * hops * (kv_block_bytes + grad_block_bytes)}


def hiding_length(flop_rate: float, bandwidth: float, bytes_per_element: int, heads: int, kv_heads: int,
                  head_dim: int, block_fraction: float = 1.0, latency_s: float = 0.0) -> float:
    """The local length L = T/P above which a ring step's computation outlasts its K/V transfer.

    Per step a rank computes ``block_fraction`` of 4 L^2 d H FLOPs (QK^T and PV; a half-masked causal block
    is 1/2) while 2 L d Hkv elements travel: the transfer hides when f 4 L^2 d H / F >= latency + 2 L d Hkv e / B.
    Without latency that is L >= e F Hkv / (2 f B H), which is e F / 2B for a full block of multi-head attention.
    """
    for name, value in (("flop_rate", flop_rate), ("bandwidth", bandwidth), ("block_fraction", block_fraction)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    a = 4 * block_fraction * head_dim * heads / flop_rate  # seconds of compute per L^2
    b = 2 * head_dim * kv_heads * bytes_per_element / bandwidth  # seconds of transfer per L
    return (b + (b * b + 4 * a * latency_s) ** 0.5) / (2 * a)


@dataclass
class RingStats:
    """What one rank did in a ring attention call: score entries per step, bytes sent, and each exchange's
    timing as ``RingComm`` records it (seconds computed while it was in flight, seconds waited for it)."""

    work: list[int] = field(default_factory=list)
    forward_bytes: int = 0
    backward_bytes: int = 0
    timings: list[ExchangeTiming] = field(default_factory=list)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums run in fp32 for 16-bit inputs and in the inputs' own precision when that is wider (fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _merge_into(out: Tensor, lse: Tensor, o: Tensor, l: Tensor) -> None:
    """``merge_partials`` in place, so the running output needs no second copy."""
    new = torch.logaddexp(lse, l)
    safe = new.masked_fill(torch.isinf(new), 0.0)
    out.mul_(torch.exp(lse - safe).unsqueeze(-1)).add_(o.mul_(torch.exp(l - safe).unsqueeze(-1)))
    lse.copy_(new)


class RingAttention(torch.autograd.Function):
    """Exact attention over the ring: forward merges P partial results, backward returns dK/dV home.

    Every block runs chapter 2's chunked kernel (online softmax forward, recomputation from the final
    log-sum-exp backward), so no rank holds more than one (chunk x chunk) tile of scores per head. Local
    positions increase within a shard (plain and zig-zag), so the diagonal block is ordinary causal."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, zigzag: bool, chunk: int, blocking: bool,
                kernel: str, group: dist.ProcessGroup | None, stats: RingStats | None) -> Tensor:
        comm = RingComm(group, blocking=blocking)
        world, rank, local_len = comm.world_size, comm.rank, q.shape[2]
        acc = accumulator_dtype(q.dtype)
        qa = q.to(acc)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)
        k_cur, v_cur = k, v
        for step in range(world):
            incoming = comm.start([k_cur, v_cur]) if step < world - 1 else None  # overlaps the compute below
            blk = plan_block(rank, step, world, local_len, causal, zigzag)
            if blk is not None:
                rows, cols = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
                if kernel == "fused":  # torch's flash kernel, in the inputs' dtype
                    o, l = (t.to(acc) for t in fused_forward(q[:, :, rows], k_cur[:, :, cols], v_cur[:, :, cols],
                                                             blk.masked))
                else:
                    o, l = chunked_forward(qa[:, :, rows], k_cur[:, :, cols].to(acc), v_cur[:, :, cols].to(acc),
                                           blk.masked, q_chunk=chunk, k_chunk=chunk)
                _merge_into(out[:, :, rows], lse[:, :, rows], o, l)
                del o, l
            if stats is not None:
                stats.work.append(0 if blk is None else blk.work)
            if incoming is not None:
                comm.wait()
                k_cur, v_cur = incoming
        if stats is not None:
            stats.forward_bytes += comm.bytes_sent
            stats.timings += comm.timings
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.zigzag, ctx.chunk, ctx.blocking, ctx.kernel = causal, zigzag, chunk, blocking, kernel
        ctx.group, ctx.stats = group, stats
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        comm = RingComm(ctx.group, blocking=ctx.blocking)
        grads = RingComm(ctx.group, first_tag=2, blocking=ctx.blocking)  # the dK/dV accumulators
        world, rank, local_len = comm.world_size, comm.rank, q.shape[2]
        acc = accumulator_dtype(q.dtype)
        # the other ranks' blocks come first (the order is explained below): post the first K/V hop now
        first = comm.start([k, v]) if world > 1 else [k, v]
        qa, da = q.to(acc), dout.contiguous().to(acc)
        delta = (da * out.to(acc)).sum(-1)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)

        def block_into(step: int, k_blk: Tensor, v_blk: Tensor, dk_acc: Tensor, dv_acc: Tensor) -> None:
            blk = plan_block(rank, step, world, local_len, ctx.causal, ctx.zigzag)
            if blk is None:
                return
            rows, cols = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
            if ctx.kernel == "fused":
                grads_b = fused_backward(q[:, :, rows], k_blk[:, :, cols], v_blk[:, :, cols], dout[:, :, rows],
                                         out[:, :, rows], lse[:, :, rows], blk.masked)
                for total, part in zip((dq[:, :, rows], dk_acc[:, :, cols], dv_acc[:, :, cols]), grads_b):
                    total += part
                return
            chunked_backward(qa[:, :, rows], k_blk[:, :, cols].to(acc), v_blk[:, :, cols].to(acc),
                             da[:, :, rows], lse[:, :, rows], delta[:, :, rows], blk.masked,
                             q_chunk=ctx.chunk, k_chunk=ctx.chunk,
                             into=(dq[:, :, rows], dk_acc[:, :, cols], dv_acc[:, :, cols]))

        # The other ranks' blocks first (steps 1..P-1), the rank's own last: a block's dK/dV accumulator
        # starts at the first rank that sees it and travels with it, and the last hop brings it home,
        # where the owner adds its own share. The K/V transfer hides behind the block before it; each
        # accumulator is waited for before the block adds into it (hiding that hop too would need a
        # second block-sized buffer, the memory this kernel exists to save).
        if world > 1:
            comm.wait()
        k_cur, v_cur = first
        del first
        accumulators: list[Tensor] = []
        for step in range(1, world):
            incoming = comm.start([k_cur, v_cur]) if step < world - 1 else None
            if step == 1:
                accumulators = [torch.zeros(k.shape, dtype=acc, device=k.device) for _ in range(2)]
            else:
                grads.wait()
            block_into(step, k_cur, v_cur, *accumulators)
            if incoming is None:  # the last of the others' blocks: free it before the hop home
                del k_cur, v_cur
            accumulators = grads.start(accumulators)
            if incoming is not None:
                comm.wait()
                k_cur, v_cur = incoming
                del incoming
        if world > 1:
            grads.wait()
        else:
            accumulators = [torch.zeros(k.shape, dtype=acc, device=k.device) for _ in range(2)]
        block_into(0, k, v, *accumulators)
        if ctx.stats is not None:
            ctx.stats.backward_bytes += comm.bytes_sent + grads.bytes_sent
            ctx.stats.timings += comm.timings + grads.timings
        dk, dv = accumulators
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None


def ring_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, zigzag: bool = False,
                   group: dist.ProcessGroup | None = None, stats: RingStats | None = None,
                   check: bool = True, chunk: int = 128, blocking: bool = False, kernel: str = "chunked") -> Tensor:
    """Attention of this rank's queries against the whole sequence, spread over ``group``.

    q (B, H, T/P, D) and k, v (B, Hkv, T/P, D) are this rank's shard, laid out by
    ``sharding.shard(..., zigzag=zigzag)``. ``check`` verifies that every rank agrees (one tiny
    all_gather), so a mismatch raises instead of hanging. ``chunk`` is the block kernel's tile (128: a smaller tile than one process's 256 trims the
    per-rank peak, which is the point of the ring, for a few per cent of time);
    ``blocking=True`` waits for every transfer as soon as it is posted (the control that shows how
    much of the communication the overlap hides). ``kernel="fused"`` runs torch's flash kernel on each
    block instead of the chunked one (``ctxlab.attention_lse``: its log-sum-exp, where torch has it).
    """
    group = require_process_group(group)
    check_qkv(q, k, v)
    if check:  # first: a check that fails on one rank only would leave the others waiting
        check_same_everywhere("ring attention", q, k, causal, zigzag, group)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must hold the same number of local positions, got {q.shape[2]} and {k.shape[2]}")
    if zigzag and q.shape[2] % 2:
        raise ValueError(f"zig-zag sharding needs an even local length (two chunks per rank), got {q.shape[2]}")
    positive_int("chunk", chunk)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "fused" and not fused_supported(q):
        raise ValueError(f"kernel='fused' has no torch kernel for {q.dtype} on {q.device.type} (float32/64 and "
                         "bfloat16 on CPU, float16/bfloat16 on CUDA): use kernel='chunked'")
    if not isinstance(blocking, bool):
        raise TypeError(f"blocking must be a bool, got {blocking!r}")
    return RingAttention.apply(q, k, v, bool(causal), bool(zigzag), chunk, blocking, kernel, group, stats)
