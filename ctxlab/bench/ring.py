"""Ring attention across P ranks: exactness vs full attention, per-rank memory, per-rank work, bytes sent.

``python -m ctxlab.bench ring --world-size 4`` starts P gloo ranks (NCCL with one GPU per rank) through
``ctxlab.parallel.launch``; under ``torchrun`` the same workers run in the ranks torchrun started.
The workers below are also what the tests and chapter 5 run.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from ..attention import naive_attention
from ..memory import measure_peak
from ..parallel.launch import launch, rank_device, run_from_env, under_torchrun
from ..parallel.ring import RingStats, comm_bytes_formula, ring_attention
from ..parallel.sharding import shard

MIB = 2**20
CASES = [(causal, zigzag) for causal in (False, True) for zigzag in (False, True)]


def _inputs(seq_len: int, batch: int, heads: int, kv_heads: int, head_dim: int, seed: int, device) -> list:
    """The same q, k, v and output gradient on every rank (seeded), full length."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads), (batch, kv_heads), (batch, kv_heads), (batch, heads)]
    return [torch.randn(*s, seq_len, head_dim, generator=gen).to(device) for s in shapes]


def exactness_worker(rank: int, world_size: int, cases: list[tuple[bool, bool]], seq_len: int, batch: int = 1,
                     heads: int = 4, kv_heads: int = 2, head_dim: int = 16) -> list[dict]:
    """Per case: this rank's max |ring - full| of the output and of dQ, dK, dV (fp32), its work per step
    and the bytes it sent. The reference is naive attention over the whole sequence in this process."""
    device = rank_device()
    rows = []
    for case, (causal, zigzag) in enumerate(cases):
        q, k, v, dout = _inputs(seq_len, batch, heads, kv_heads, head_dim, case, device)
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = naive_attention(*full, causal=causal)
        ref.backward(dout)
        local = [shard(t, rank, world_size, zigzag, dim=2).requires_grad_() for t in (q, k, v)]
        stats = RingStats()
        out = ring_attention(*local, causal=causal, zigzag=zigzag, stats=stats)
        out.backward(shard(dout, rank, world_size, zigzag, dim=2))

        def err(mine: torch.Tensor, whole: torch.Tensor) -> float:
            return (mine.detach() - shard(whole.detach(), rank, world_size, zigzag, dim=2)).abs().max().item()

        rows.append({"causal": causal, "zigzag": zigzag, "rank": rank, "err_out": err(out, ref),
                     **{f"err_d{n}": err(m.grad, w.grad) for n, m, w in zip("qkv", local, full)},
                     "work": stats.work, "forward_bytes": stats.forward_bytes, "backward_bytes": stats.backward_bytes,
                     "kv_block_bytes": local[1].numel() * local[1].element_size()})
    return rows


def training_step_worker(rank: int, world_size: int, zigzags: list[bool], seq_len: int | None = None,
                         seed: int = 0) -> list[dict]:
    """A training step of a small reference GPT split over the ranks vs the same step on the whole
    sequence in this process: |loss difference| and max |gradient difference| per layout (T = 8P by default)."""
    from ..config import reference_config
    from ..model import GPT
    from ..parallel.context import context_parallel_step

    device = rank_device()
    seq_len = seq_len or 8 * world_size
    rows = []
    for zigzag in zigzags:
        torch.manual_seed(seed)
        cfg = reference_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=seq_len)
        model = GPT(cfg).to(device)
        seq = torch.randint(0, cfg.vocab_size, (2, seq_len + 1), generator=torch.Generator().manual_seed(seed)).to(device)
        tokens, targets = seq[:, :-1], seq[:, 1:].clone()
        targets[0, seq_len // 3] = -100  # an ignored target changes the token count: the loss must still agree
        _, loss_full = model(tokens, targets)
        loss_full.backward()
        full_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        loss = context_parallel_step(model, tokens, targets, zigzag=zigzag)
        rows.append({"zigzag": zigzag, "loss": loss.item(), "loss_err": abs(loss.item() - loss_full.item()),
                     "grad_err": max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), full_grads)),
                     "attention_after": cfg.attention})
    return rows


def bad_input_worker(rank: int, world_size: int) -> dict[str, str]:
    """The messages ring attention gives, on every rank, for inputs that would otherwise hang or be wrong."""
    device = rank_device()
    messages = {}
    local_len = 4 + 2 * rank  # a different length on every rank
    q = torch.randn(1, 2, local_len, 8, device=device)
    for name, call in (("mismatched_shapes", lambda: ring_attention(q, q, q)),
                       ("odd_zigzag", lambda: ring_attention(q[:, :, :3], q[:, :, :3], q[:, :, :3], zigzag=True))):
        try:
            call()
            messages[name] = ""
        except ValueError as err:
            messages[name] = str(err)
    return messages


def suite_worker(rank: int, world_size: int, cases: list[tuple[bool, bool]], seq_len: int,
                 zigzags: list[bool], bad_inputs: bool = False) -> dict:
    """Several checks in one launch (starting ranks costs seconds)."""
    return {"exact": exactness_worker(rank, world_size, cases, seq_len),
            "train": training_step_worker(rank, world_size, zigzags) if zigzags else [],
            "bad": bad_input_worker(rank, world_size) if bad_inputs else {}}


def _sub_group(size: int, world_size: int):
    """A group of ranks [0, size); every rank must call this, in the same order."""
    return None if size == world_size else dist.new_group(list(range(size)))


def _ring_peak(rank: int, size: int, group, seq_len: int, batch: int, heads: int, head_dim: int) -> int:
    """Peak bytes of one causal zig-zag ring attention forward + backward on this rank (inputs excluded)."""
    device = rank_device()
    q, k, v, dout = (shard(t, rank, size, True, dim=2)
                     for t in _inputs(seq_len, batch, heads, heads, head_dim, 0, device))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step() -> None:
        ring_attention(q, k, v, causal=True, zigzag=True, group=group, check=False).backward(dout)
        q.grad = k.grad = v.grad = None

    return measure_peak(step, device)


def memory_worker(rank: int, world_size: int, seq_len: int, sizes: list[int], batch: int = 1, heads: int = 4,
                  head_dim: int = 32) -> dict[int, int]:
    """Per ring size P in ``sizes``: this rank's peak attention memory for the same total ``seq_len``."""
    peaks = {}
    for size in sizes:
        group = _sub_group(size, world_size)
        if rank < size:
            peaks[size] = _ring_peak(rank, size, group, seq_len, batch, heads, head_dim)
        dist.barrier()
    return peaks


def budget_worker(rank: int, world_size: int, budget_bytes: int, sizes: list[int], granule: int = 16,
                  batch: int = 1, heads: int = 4, head_dim: int = 32) -> dict[int, int]:
    """Per ring size P: the largest total T (a multiple of 2P * granule / 2) whose per-rank peak stays
    within ``budget_bytes``, found by doubling then bisecting the local length on the real ring."""
    device = rank_device()
    largest = {}
    for size in sizes:
        group = _sub_group(size, world_size)
        if rank < size:
            def fits(local_len: int) -> bool:
                peak = torch.tensor([_ring_peak(rank, size, group, local_len * size, batch, heads, head_dim)],
                                    device=device)
                dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)  # every rank takes the same branch
                return int(peak.item()) <= budget_bytes

            lo, hi = 0, granule
            while fits(hi):
                lo, hi = hi, 2 * hi
            while hi - lo > granule:
                mid = (lo + hi) // 2 // granule * granule
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
            largest[size] = lo * size
        dist.barrier()
    return largest


def imbalance(rows: list[dict], causal: bool, zigzag: bool) -> float:
    """max over mean of per-rank work (score entries computed) in one case of an exactness run."""
    work = [sum(r["work"]) for r in rows if r["causal"] == causal and r["zigzag"] == zigzag]
    return max(work) / (sum(work) / len(work))


def _ring_sizes(world_size: int) -> list[int]:
    return sorted({1, world_size} | {2**i for i in range(1, world_size.bit_length()) if 2**i <= world_size})


def bench_worker(rank: int, world_size: int, seq_len: int, mem_seq_len: int) -> dict:
    return {"exact": exactness_worker(rank, world_size, CASES, seq_len),
            "memory": memory_worker(rank, world_size, mem_seq_len, _ring_sizes(world_size))}


def gathering_worker(rank: int, world_size: int, seq_len: int, mem_seq_len: int) -> list[dict]:
    """``bench_worker`` with every rank's result gathered, for torchrun (which has no parent to collect them)."""
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, bench_worker(rank, world_size, seq_len, mem_seq_len))
    return everyone


def report(results: list[dict], world_size: int, seq_len: int, mem_seq_len: int) -> str:
    rows = [r for res in results for r in res["exact"]]
    lines = [f"ring attention on {world_size} ranks vs full attention in one process, fp32, B=1, H=4, Hkv=2, "
             f"head_dim=16, T={seq_len}", "causal  zigzag  err_out   err_dq    err_dk    err_dv"]
    max_err = 0.0
    for causal, zigzag in CASES:
        case = [r for r in rows if r["causal"] == causal and r["zigzag"] == zigzag]
        errs = [max(r[f"err_{n}"] for r in case) for n in ("out", "dq", "dk", "dv")]
        max_err = max(max_err, *errs)
        lines.append(f"{causal!s:6s}  {zigzag!s:6s}  " + "  ".join(f"{e:.2e}" for e in errs))
    peaks = {p: max(res["memory"][p] for res in results if p in res["memory"]) for p in _ring_sizes(world_size)}
    lines.append(f"per-rank peak attention memory (fwd+bwd, causal zig-zag, T={mem_seq_len}, B=1, H=4, head_dim=32): "
                 + ", ".join(f"P={p}: {b / MIB:.2f} MiB" for p, b in peaks.items()))
    for zigzag in (False, True):
        work = [sum(r["work"]) for r in rows if r["causal"] and r["zigzag"] == zigzag]
        lines.append(f"causal {'zig-zag' if zigzag else 'plain  '} per-rank work (score entries): {work}")
    r0 = next(r for r in rows if r["rank"] == 0)
    formula = comm_bytes_formula(world_size, r0["kv_block_bytes"])
    lines.append(f"bytes sent per rank per call: forward {r0['forward_bytes']} (formula {formula['forward']}), "
                 f"backward {r0['backward_bytes']} (formula {formula['backward']})")
    ratio = peaks[world_size] / peaks[1]
    lines.append(f"max_err={max_err:.3g} mem_ratio_p{world_size}_vs_p1={ratio:.4f} "
                 f"zigzag_imbalance={imbalance(rows, True, True):.4f} plain_imbalance={imbalance(rows, True, False):.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench ring", description=__doc__)
    parser.add_argument("--world-size", type=int, default=4, help="number of ranks P (ignored under torchrun)")
    parser.add_argument("--seq-len", type=int, default=256, help="T of the exactness checks")
    parser.add_argument("--mem-seq-len", type=int, default=1024, help="T of the memory comparison")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if under_torchrun():  # e.g. torchrun --nproc-per-node 4 -m ctxlab.bench ring
        results = run_from_env(gathering_worker, args.seq_len, args.mem_seq_len)
        if int(os.environ["RANK"]) == 0:
            print(report(results, len(results), args.seq_len, args.mem_seq_len))
        return
    if args.world_size < 1:
        raise SystemExit(f"--world-size must be >= 1, got {args.world_size}")
    results = launch(bench_worker, args.world_size, args.seq_len, args.mem_seq_len, timeout=args.timeout)
    print(report(results, args.world_size, args.seq_len, args.mem_seq_len))
