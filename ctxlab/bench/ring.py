"""Ring attention across P ranks: exactness vs full attention, per-rank memory, per-rank work, bytes sent.

``python -m ctxlab.bench ring --world-size 4`` starts P gloo ranks (NCCL with one GPU per rank) through
``ctxlab.parallel.launch``; ``torchrun --nproc-per-node 4 -m ctxlab.bench ring`` runs the same workers
in the ranks torchrun started (one per GPU, on one node or many).
"""
from __future__ import annotations

import argparse
import os

import torch.distributed as dist

from ..command import command_errors
from ..parallel.launch import launch, run_from_env, under_torchrun
from ..parallel.ring import comm_bytes_formula
from .ring_workers import imbalance, jobs_worker

MIB = 2**20
CASES = [(causal, zigzag) for causal in (False, True) for zigzag in (False, True)]


def ring_sizes(world_size: int) -> list[int]:
    """1, the powers of two below P, and P: the ring sizes the memory comparison measures."""
    return sorted({1, world_size} | {2**i for i in range(1, world_size.bit_length()) if 2**i <= world_size})


def bench_worker(rank: int, world_size: int, seq_len: int, mem_seq_len: int) -> dict:
    runs = [(world_size, causal, zigzag, seq_len) for causal, zigzag in CASES]
    return jobs_worker(rank, world_size, {"exact": (runs,), "memory": (mem_seq_len, ring_sizes(world_size))})


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
    peaks = {p: max(res["memory"][p] for res in results if p in res["memory"]) for p in ring_sizes(world_size)}
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
                 f"zigzag_imbalance={imbalance(rows, world_size, True, True):.4f} "
                 f"plain_imbalance={imbalance(rows, world_size, True, False):.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench ring", description=__doc__)
    parser.add_argument("--world-size", type=int, default=4, help="number of ranks P (torchrun sets it itself)")
    parser.add_argument("--seq-len", type=int, default=256, help="T of the exactness checks")
    parser.add_argument("--mem-seq-len", type=int, default=1024, help="T of the memory comparison")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    with command_errors(parser):
        if under_torchrun():
            results = run_from_env(gathering_worker, args.seq_len, args.mem_seq_len)
            if int(os.environ["RANK"]) == 0:
                print(report(results, len(results), args.seq_len, args.mem_seq_len))
            return
        if args.world_size < 1:
            parser.error(f"--world-size must be >= 1, got {args.world_size}")
        results = launch(bench_worker, args.world_size, args.seq_len, args.mem_seq_len, timeout=args.timeout)
        print(report(results, args.world_size, args.seq_len, args.mem_seq_len))
