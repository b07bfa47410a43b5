"""What each rank runs to check and measure ring attention; shared by the ring bench, the tests and chapter 5.

Every worker has the launcher's signature ``fn(rank, world_size, *args)``. A ring of P ranks is the
sub-group of ranks [0, P), so one launch of the largest P also runs the smaller rings (starting ranks
costs seconds; the rings themselves are small). Ranks outside a ring wait at a barrier.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..attention import sdpa_attention
from ..config import IGNORE
from ..measure import measure_peak
from ..parallel.launch import rank_device
from ..parallel.ring import RingStats, ring_attention
from ..parallel.sharding import shard
from ..parallel.ulysses import ulysses_attention
from ..search import search

_GROUPS: dict[int, object] = {}


def ring_group(size: int, world_size: int):
    """The group of ranks [0, size) (None = all ranks). Every rank must ask for the same sizes in the same order."""
    if not 1 <= size <= world_size:
        raise ValueError(f"ring size must be in [1, world_size={world_size}], got {size}")
    if size == world_size:
        return None
    if size not in _GROUPS:
        _GROUPS[size] = dist.new_group(list(range(size)))
    return _GROUPS[size]


def _inputs(seq_len: int, batch: int, heads: int, kv_heads: int, head_dim: int, seed: int, device,
            dtype: torch.dtype = torch.float32) -> list:
    """The same q, k, v and output gradient on every rank (seeded), full length."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads), (batch, kv_heads), (batch, kv_heads), (batch, heads)]
    return [torch.randn(*s, seq_len, head_dim, generator=gen, dtype=dtype).to(device) for s in shapes]


def exactness_worker(rank: int, world_size: int, runs: list[tuple[int, bool, bool, int]], batch: int = 1,
                     heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
                     dtype: torch.dtype = torch.float32, method: str = "ring", blocking: bool = False,
                     kernel: str = "chunked") -> list[dict]:
    """For each run (P, causal, zigzag, T): this rank's max |ring - full| (or Ulysses', ``method``) of the
    output and of dQ, dK, dV, the ring's work per step and the bytes sent. The reference is torch's SDPA
    over the whole sequence here. ``blocking`` runs the ring with every transfer waited for at once;
    ``kernel`` is the ring's block kernel."""
    device = rank_device()
    rows = []
    for seed, (size, causal, zigzag, seq_len) in enumerate(runs):
        group = ring_group(size, world_size)
        if rank < size:
            q, k, v, dout = _inputs(seq_len, batch, heads, kv_heads, head_dim, seed, device, dtype)
            full = [t.clone().requires_grad_() for t in (q, k, v)]
            ref = sdpa_attention(*full, causal=causal)
            ref.backward(dout)
            local = [shard(t, rank, size, zigzag, dim=2).requires_grad_() for t in (q, k, v)]
            stats = RingStats() if method == "ring" else {}
            if method == "ring":
                out = ring_attention(*local, causal=causal, zigzag=zigzag, group=group, stats=stats, blocking=blocking,
                                     kernel=kernel)
            else:
                out = ulysses_attention(*local, causal=causal, zigzag=zigzag, group=group, stats=stats)
            out.backward(shard(dout, rank, size, zigzag, dim=2))

            def err(mine: torch.Tensor, whole: torch.Tensor) -> float:
                return (mine.detach() - shard(whole.detach(), rank, size, zigzag, dim=2)).abs().max().item()

            sizes = {"kv_block_bytes": local[1].numel() * local[1].element_size(),
                     "q_block_bytes": local[0].numel() * local[0].element_size()}
            counts = {"work": stats.work, "forward_bytes": stats.forward_bytes, "backward_bytes": stats.backward_bytes,
                      "exchanges": len(stats.timings)} if method == "ring" else {"bytes_sent": stats.get("bytes_sent", 0)}
            rows.append({"method": method, "P": size, "causal": causal, "zigzag": zigzag, "T": seq_len, "rank": rank,
                         "err_out": err(out, ref), **{f"err_d{n}": err(m.grad, w.grad) for n, m, w in zip("qkv", local, full)},
                         **counts, **sizes})
        dist.barrier()
    return rows


def training_step_worker(rank: int, world_size: int, runs: list[tuple[int, bool]], seed: int = 0,
                         method: str = "ring") -> list[dict]:
    """For each run (P, zigzag): one training step of a small reference GPT on T = 8P tokens split over P
    ranks (ring or Ulysses, ``method``) vs the same step on the whole sequence in this process:
    |loss difference|, max |gradient difference|."""
    from ..config import reference_config
    from ..model import GPT
    from ..parallel.context import context_parallel_step

    device = rank_device()
    rows = []
    for size, zigzag in runs:
        group = ring_group(size, world_size)
        if rank < size:
            seq_len = 8 * size
            torch.manual_seed(seed)
            kv_heads = max(2, size) if method == "ulysses" else 2  # Ulysses: P must divide the K/V heads
            cfg = reference_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=kv_heads,
                                   max_seq_len=seq_len)
            model = GPT(cfg).to(device)
            seq = torch.randint(0, 64, (2, seq_len + 1), generator=torch.Generator().manual_seed(seed)).to(device)
            tokens, targets = seq[:, :-1], seq[:, 1:].clone()
            targets[0, seq_len // 3] = IGNORE  # an ignored target changes the token count: the loss must still agree
            attend_before = [block.attn.attend for block in model.blocks]
            _, loss_full = model(tokens, targets)
            loss_full.backward()
            full_grads = [p.grad.clone() for p in model.parameters()]
            model.zero_grad()
            loss = context_parallel_step(model, tokens, targets, group=group, zigzag=zigzag, method=method)
            rows.append({"P": size, "zigzag": zigzag, "rank": rank, "loss": loss.item(),
                         "loss_err": abs(loss.item() - loss_full.item()),
                         "grad_err": max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), full_grads)),
                         "attention_restored": [b.attn.attend for b in model.blocks] == attend_before})
        dist.barrier()
    return rows


def bad_input_worker(rank: int, world_size: int) -> dict[str, str]:
    """The messages ring and Ulysses attention give, on every rank, for inputs that would otherwise hang or be wrong."""
    device = rank_device()
    q = torch.randn(1, 2, 4 + 2 * rank, 8, device=device)  # a different length on every rank
    odd = torch.randn(1, world_size, 3, 8, device=device)  # heads enough for Ulysses, an odd length
    messages = {}
    for name, call in (("mismatched_shapes", lambda: ring_attention(q, q, q)),
                       ("odd_zigzag", lambda: ring_attention(q[:, :, :3], q[:, :, :3], q[:, :, :3], zigzag=True)),
                       ("ulysses_mismatched", lambda: ulysses_attention(q, q, q)),
                       ("ulysses_odd_zigzag", lambda: ulysses_attention(odd, odd, odd, zigzag=True))):
        try:
            call()
            messages[name] = ""
        except ValueError as err:
            messages[name] = str(err)
    return messages


def ring_peak(rank: int, size: int, group, seq_len: int, batch: int = 1, heads: int = 4, head_dim: int = 32) -> int:
    """Peak bytes of one causal zig-zag ring attention forward + backward on this rank (inputs excluded)."""
    device = rank_device()
    q, k, v, dout = (shard(t, rank, size, True, dim=2) for t in _inputs(seq_len, batch, heads, heads, head_dim, 0, device))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step() -> None:
        ring_attention(q, k, v, causal=True, zigzag=True, group=group, check=False).backward(dout)
        q.grad = k.grad = v.grad = None

    return measure_peak(step, device)


def memory_worker(rank: int, world_size: int, seq_len: int, sizes: list[int]) -> dict[int, int]:
    """Per ring size P in ``sizes``: this rank's peak attention memory for the same total ``seq_len``."""
    peaks = {}
    for size in sizes:
        group = ring_group(size, world_size)
        if rank < size:
            peaks[size] = ring_peak(rank, size, group, seq_len)
        dist.barrier()
    return peaks


def budget_worker(rank: int, world_size: int, budget_bytes: int, sizes: list[int], granule: int = 16) -> dict[int, int]:
    """Per ring size P: the largest total T = P * L (L a multiple of ``granule``) whose peak on every rank
    stays within ``budget_bytes``, measured on the real ring: doubling then bisection for the first size,
    then a walk from the previous size's L (per-rank memory depends mostly on L, so a few probes do)."""
    device = rank_device()
    largest, local = {}, 0
    for size in sizes:
        group = ring_group(size, world_size)
        if rank < size:
            def fits(local_len: int) -> bool:
                peak = torch.tensor([ring_peak(rank, size, group, local_len * size)], device=device)
                dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)  # every rank takes the same branch
                return int(peak.item()) <= budget_bytes

            # the first size from scratch; the next from the previous L, one granule a step
            local = search(fits, granule, start=local or granule, step=granule if local else None).largest
            largest[size] = local * size
        shared = torch.tensor([local], device=device)
        dist.broadcast(shared, src=0)  # rank 0 ran every ring: the next size starts from its L on every rank
        local = int(shared.item())
    return largest


JOBS = {"exact": exactness_worker, "train": training_step_worker, "bad": bad_input_worker,
        "memory": memory_worker, "budget": budget_worker,
        # the same checks with every transfer blocking (pass blocking=True), with torch's fused block kernel
        # (kernel="fused"), and for Ulysses (method="ulysses"), in float32 and float64
        "exact_blocking": exactness_worker, "exact_fused": exactness_worker, "ulysses_exact": exactness_worker, "ulysses_exact64": exactness_worker, "ulysses_train": training_step_worker}


def jobs_worker(rank: int, world_size: int, jobs: dict[str, tuple]) -> dict:
    """Several of the workers above in one launch: {name: args} -> {name: result}, run in that order."""
    unknown = set(jobs) - set(JOBS)
    if unknown:
        raise ValueError(f"jobs must be named from {tuple(JOBS)}, got {sorted(unknown)}")
    return {name: JOBS[name](rank, world_size, *args) for name, args in jobs.items()}


def imbalance(rows: list[dict], size: int, causal: bool = True, zigzag: bool = False) -> float:
    """max over mean of per-rank work (score entries computed) in one run of ``exactness_worker``."""
    work = [sum(r["work"]) for r in rows if (r["P"], r["causal"], r["zigzag"]) == (size, causal, zigzag)]
    if len(work) != size:
        raise ValueError(f"rows hold {len(work)} ranks for P={size}, causal={causal}, zigzag={zigzag}")
    return max(work) / (sum(work) / len(work))
