"""Ring beside Ulysses beside one process, and the ring's overlap measured: the workers and their arithmetic.

Every worker has the launcher's signature ``fn(rank, world_size, *args)`` and runs its rings on the
sub-groups of ``ring_workers.ring_group``. Times are taken in interleaved rounds (one process, then
the ring, then Ulysses, again and again), so a slow spell of the machine falls on all of them alike.
"""
from __future__ import annotations

import statistics
import time

import torch.distributed as dist

from ..attention import chunked_attention
from ..measure import measure_peak
from ..parallel.launch import rank_device
from ..parallel.ring import RingStats, ring_attention
from ..parallel.sharding import shard
from ..parallel.ulysses import ulysses_attention
from .decode import fit_line, per_round, spread
from .ring_workers import _inputs, ring_group

HEADS, HEAD_DIM = 4, 64  # the side-by-side's attention: 4 heads (and K/V heads) of 64, fp32, batch 1


def _step(method: str, q, k, v, dout, group, size: int, rank: int, stats=None, blocking: bool = False):
    """One causal forward + backward, each design with its default tile: "chunked" on the whole sequence in
    this process, else over ``group`` with zig-zag shards (``q`` etc. are then this rank's shards)."""
    if method == "chunked":
        out = chunked_attention(q, k, v, causal=True)
    elif method == "ring":
        out = ring_attention(q, k, v, causal=True, zigzag=True, group=group, stats=stats, check=False,
                             blocking=blocking)
    else:
        out = ulysses_attention(q, k, v, causal=True, zigzag=True, group=group, backend="chunked",
                                stats=stats)
    out.backward(dout)
    q.grad = k.grad = v.grad = None


def _operands(method: str, seq_len: int, rank: int, size: int, heads: int, head_dim: int, device) -> list:
    q, k, v, dout = _inputs(seq_len, 1, heads, heads, head_dim, 0, device)
    if method != "chunked":
        q, k, v, dout = (shard(t, rank, size, True, dim=2) for t in (q, k, v, dout))
    return [q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout]


def versus_worker(rank: int, world_size: int, seq_len: int, sizes: list[int], rounds: int = 5,
                  heads: int = HEADS, head_dim: int = HEAD_DIM) -> dict:
    """Per ring size P: this rank's peak memory and forward + backward seconds per round for the ring and
    Ulysses (both with the chunked kernel), and on rank 0 the same for one process on the whole sequence.
    Causal, zig-zag, fp32, batch 1; the bytes each design sent in one call."""
    device = rank_device()
    result: dict = {"chunked": {}, "ring": {}, "ulysses": {}}
    plans = [("chunked", 1)] + [(m, p) for p in sizes for m in ("ring", "ulysses")]
    for method, size in plans:
        group = ring_group(size, world_size) if method != "chunked" else None
        active = rank < size
        if active:
            ops = _operands(method, seq_len, rank, size, heads, head_dim, device)
            stats = RingStats() if method == "ring" else {}
            _step(method, *ops, group, size, rank, stats)  # warm up, and count the bytes once
            sent = stats.forward_bytes + stats.backward_bytes if method == "ring" else stats.get("bytes_sent", 0)
            peak = measure_peak(lambda: _step(method, *ops, group, size, rank), device)
            result[method][size] = {"peak": peak, "bytes_sent": sent, "seconds": []}
        dist.barrier()
    for _ in range(rounds):
        for method, size in plans:
            if rank < size:
                group = ring_group(size, world_size) if method != "chunked" else None
                ops = _operands(method, seq_len, rank, size, heads, head_dim, device)
                began = time.perf_counter()
                _step(method, *ops, group, size, rank)
                result[method][size]["seconds"].append(time.perf_counter() - began)
            dist.barrier()
    return result


def slowest_rank(results: list[dict], method: str, size: int) -> dict:
    """Per-rank figures of one design at one P, taken from its worst rank: the largest peak, and each
    round's time of the slowest rank (the step ends when that rank does); (q1, median, q3) of them."""
    rows = [r[method][size] for r in results if size in r[method]]
    seconds = per_round([row["seconds"] for row in rows])
    return {"peak": max(row["peak"] for row in rows), "bytes_sent": max(row["bytes_sent"] for row in rows),
            "seconds": spread(seconds), "rounds": seconds}


def overlap_worker(rank: int, world_size: int, local_lens: list[int], size: int = 2, rounds: int = 3,
                   heads: int = HEADS, head_dim: int = HEAD_DIM) -> list[dict]:
    """On a ring of ``size`` ranks, per local length L = T/P: every exchange of one ring call's forward and
    backward, with the transfers overlapped (the ring as it runs) and blocking (the control), ``rounds``
    times in turns: seconds of work done while each was in flight, seconds waited, bytes."""
    device = rank_device()
    group = ring_group(size, world_size)
    rows = []
    for local_len in local_lens:
        for round_ in range(rounds):
            for blocking in (False, True):
                if rank < size:
                    ops = _operands("ring", local_len * size, rank, size, heads, head_dim, device)
                    stats = RingStats()
                    dist.barrier(group=group)
                    _step("ring", *ops, group, size, rank, stats, blocking=blocking)
                    rows += [{"L": local_len, "round": round_, "blocking": blocking, "rank": rank, "exchange": i,
                              "nbytes": t.nbytes, "overlapped_s": t.overlapped_s, "wait_s": t.wait_s}
                             for i, t in enumerate(stats.timings)]
                dist.barrier()
    return rows


def exchange_medians(rows: list[dict], local_len: int, blocking: bool) -> list[dict]:
    """Per exchange of one call (in the order ``RingStats.timings`` lists them), the medians over rounds
    and ranks of its seconds in flight with work and its seconds waited."""
    mine = [r for r in rows if r["L"] == local_len and r["blocking"] == blocking]
    return [{"nbytes": statistics.median(r["nbytes"] for r in mine if r["exchange"] == i),
             "overlapped_s": statistics.median(r["overlapped_s"] for r in mine if r["exchange"] == i),
             "wait_s": statistics.median(r["wait_s"] for r in mine if r["exchange"] == i)}
            for i in sorted({r["exchange"] for r in mine})]


def hiding_fit(rows: list[dict], heads: int = HEADS, head_dim: int = HEAD_DIM) -> dict:
    """The forward's first hop (rank 0's diagonal block computes while it travels) as a model: the
    transfer's latency and bandwidth from the blocking control (a straight line through wait vs bytes),
    and the block kernel's FLOP rate at the longest L (2 L^2 d H FLOPs: half of a causal block's 4 L^2 d H)."""
    lens = sorted({r["L"] for r in rows})
    sent = [exchange_medians(rows, n, True)[0] for n in lens]
    latency, seconds_per_byte = fit_line([x["nbytes"] for x in sent], [x["wait_s"] for x in sent])
    longest = exchange_medians(rows, lens[-1], False)[0]
    flop_rate = 2 * lens[-1] ** 2 * head_dim * heads / longest["overlapped_s"]
    bandwidth = 1 / seconds_per_byte if seconds_per_byte > 0 else None  # None: too small to see the bytes
    return {"latency_s": max(latency, 0.0), "bandwidth": bandwidth, "flop_rate": flop_rate}


def hidden_share(rows: list[dict], local_len: int, exchanges: list[int] | None = None) -> float:
    """1 - (time waited with the transfers overlapped) / (time the same transfers take when blocking),
    per-exchange medians summed over ``exchanges`` (all by default): the share the computation hid."""
    over, control = (exchange_medians(rows, local_len, b) for b in (False, True))
    chosen = range(len(control)) if exchanges is None else exchanges
    blocked = sum(control[i]["wait_s"] for i in chosen)
    return 1.0 - sum(over[i]["wait_s"] for i in chosen) / blocked if blocked > 0 else 1.0
