"""Ring attention across P ranks: exactness vs full attention, per-rank memory, per-rank work, bytes sent;
the ring beside Ulysses and one process (peak and time at T=4096), and the ring's overlap measured.

``python -m ctxlab.bench ring --world-size 4`` starts P gloo ranks (NCCL with one GPU per rank) through
``ctxlab.parallel.launch``; ``torchrun --nproc-per-node 4 -m ctxlab.bench ring`` runs the same workers
in the ranks torchrun started (one per GPU, on one node or many). ``--out book/data/ring.json`` stores
every measurement for chapter 5.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from ..atomic import write_json
from ..command import check_output, command_errors
from ..parallel.launch import launch, run_from_env, under_torchrun
from ..parallel.ring import comm_bytes_formula, hiding_length
from ..parallel.ulysses import comm_bytes_formula as ulysses_bytes
from .ring_versus import HEAD_DIM, HEADS, hidden_share, hiding_fit, overlap_worker, slowest_rank, versus_worker
from .ring_workers import imbalance, jobs_worker

MIB = 2**20
CASES = [(causal, zigzag) for causal in (False, True) for zigzag in (False, True)]


def ring_sizes(world_size: int) -> list[int]:
    """1, the powers of two below P, and P: the ring sizes the memory comparison measures."""
    return sorted({1, world_size} | {2**i for i in range(1, world_size.bit_length()) if 2**i <= world_size})


def bench_worker(rank: int, world_size: int, seq_len: int, mem_seq_len: int, versus_len: int = 4096,
                 overlap_lens: tuple[int, ...] = (16, 64, 256, 1024, 2048), rounds: int = 5) -> dict:
    runs = [(world_size, causal, zigzag, seq_len) for causal, zigzag in CASES]
    uly = [(p, causal, True, seq_len) for p in ring_sizes(world_size)[1:] for causal in (False, True)]
    heads = max(8, world_size)  # Ulysses needs P to divide the heads and K/V heads
    result = jobs_worker(rank, world_size, {"exact": (runs,), "memory": (mem_seq_len, ring_sizes(world_size)),
                                            "ulysses_exact": (uly, 1, heads, heads // 2, 16, torch.float32, "ulysses")})
    sizes = [p for p in ring_sizes(world_size) if p > 1 and versus_len % (2 * p) == 0]
    result["versus"] = versus_worker(rank, world_size, versus_len, sizes, rounds)
    if world_size >= 2:
        result["overlap"] = overlap_worker(rank, world_size, list(overlap_lens), 2, 2 * rounds + 1)
    return result


def gathering_worker(rank: int, world_size: int, seq_len: int, mem_seq_len: int, *extra) -> list[dict]:
    """``bench_worker`` with every rank's result gathered, for torchrun (which has no parent to collect them)."""
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, bench_worker(rank, world_size, seq_len, mem_seq_len, *extra))
    return everyone


def summary(results: list[dict], world_size: int, versus_len: int) -> dict:
    """The side-by-side figures and the overlap, as chapter 5 reads them from the stored run."""
    versus = [r["versus"] for r in results]
    sizes = sorted(versus[0]["ring"])
    side = {"chunked": {1: slowest_rank(versus, "chunked", 1)}}
    for method in ("ring", "ulysses"):
        side[method] = {p: slowest_rank(versus, method, p) for p in sizes}
    out = {"T": versus_len, "side_by_side": side}
    if "overlap" in results[0]:
        rows = [r for res in results for r in res.get("overlap", [])]
        lens = sorted({r["L"] for r in rows})
        forward = [0]  # a ring of 2 has one forward hop, posted before the block computes
        out["overlap"] = {"rows": rows, "hidden_share": {n: hidden_share(rows, n) for n in lens},
                          "forward_hidden_share": {n: hidden_share(rows, n, forward) for n in lens},
                          "fit": hiding_fit(rows)}
    return out


def report(results: list[dict], world_size: int, seq_len: int, mem_seq_len: int, versus_len: int = 4096) -> str:
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
    uly = [r for res in results for r in res["ulysses_exact"]]
    uly_err = max(r[f"err_{n}"] for r in uly for n in ("out", "dq", "dk", "dv"))
    lines.append(f"Ulysses on rings of {sorted({r['P'] for r in uly})} ranks vs full attention: max error {uly_err:.2e}")
    s = summary(results, world_size, versus_len)
    side, base = s["side_by_side"], s["side_by_side"]["chunked"][1]
    lines.append(f"per rank, causal zig-zag, fp32, B=1, H=Hkv={HEADS}, head_dim={HEAD_DIM}, T={versus_len}, "
                 "forward+backward "
                 "(median [quartiles] over interleaved rounds of the slowest rank):")
    lines.append(f"  one process, chunked: {base['peak'] / MIB:6.2f} MiB  {base['seconds'][1] * 1e3:7.1f} ms "
                 f"[{base['seconds'][0] * 1e3:.1f}, {base['seconds'][2] * 1e3:.1f}]")
    kv_bytes = 4 * HEADS * versus_len * HEAD_DIM  # one rank's fp32 K (or V or Q) at P=1; divide by P
    for p in sorted(side["ring"]):
        ring_f = sum(comm_bytes_formula(p, kv_bytes // p).values())
        uly_f = ulysses_bytes(p, kv_bytes // p, kv_bytes // p)["total"]
        for method, f in (("ring", ring_f), ("ulysses", uly_f)):
            m = side[method][p]
            lines.append(f"  {method:7s} P={p}: {m['peak'] / MIB:6.2f} MiB ({m['peak'] / base['peak']:.3f}x)  "
                         f"{m['seconds'][1] * 1e3:7.1f} ms [{m['seconds'][0] * 1e3:.1f}, {m['seconds'][2] * 1e3:.1f}] "
                         f"({m['seconds'][1] / base['seconds'][1]:.3f}x)  sent {m['bytes_sent']} B (formula {f})")
    two = {m: side[m][min(side[m])] for m in ("ring", "ulysses")}
    fields = (f"max_err={max_err:.3g} mem_ratio_p{world_size}_vs_p1={peaks[world_size] / peaks[1]:.4f} "
              f"zigzag_imbalance={imbalance(rows, world_size, True, True):.4f} "
              f"plain_imbalance={imbalance(rows, world_size, True, False):.4f} "
              f"ring_peak_vs_chunked={two['ring']['peak'] / base['peak']:.3f} "
              f"ring_time_vs_chunked={two['ring']['seconds'][1] / base['seconds'][1]:.3f} "
              f"ulysses_max_err={uly_err:.3g} ulysses_bytes_per_rank={two['ulysses']['bytes_sent']} "
              f"ring_bytes_per_rank={two['ring']['bytes_sent']}")
    if "overlap" in s:
        shares = s["overlap"]["hidden_share"]
        lines.append("ring of 2, share of the communication hidden (1 - overlapped wait / blocking wait), by T/P: "
                     + ", ".join(f"{n}: {v:.2f}" for n, v in shares.items()) + "; forward hops only: "
                     + ", ".join(f"{n}: {v:.2f}" for n, v in s["overlap"]["forward_hidden_share"].items()))
        fit = s["overlap"]["fit"]
        if fit["bandwidth"] is not None:
            predicted = hiding_length(fit["flop_rate"], fit["bandwidth"], 4, HEADS, HEADS, HEAD_DIM, 0.5,
                                      fit["latency_s"])
            lines.append(f"hiding condition, from the control's latency {fit['latency_s'] * 1e6:.0f} us and "
                         f"bandwidth {fit['bandwidth'] / 1e9:.2f} GB/s and the kernel's "
                         f"{fit['flop_rate'] / 1e9:.1f} GFLOP/s: the first hop hides for T/P >= {predicted:.0f}")
        forward = s["overlap"]["forward_hidden_share"]
        fields += f" ring_hidden_comm_share={forward[max(forward)]:.3f}"  # at the longest T/P measured
    lines.append(fields)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench ring", description=__doc__)
    parser.add_argument("--world-size", type=int, default=4, help="number of ranks P (torchrun sets it itself)")
    parser.add_argument("--seq-len", type=int, default=256, help="T of the exactness checks")
    parser.add_argument("--mem-seq-len", type=int, default=1024, help="T of the memory comparison")
    parser.add_argument("--versus-len", type=int, default=4096, help="T of the side-by-side and overlap runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out", default=None, help="write every measurement as JSON here")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    check_output(parser, args.out)
    with command_errors(parser):
        if args.rounds < 1:
            parser.error(f"--rounds must be >= 1, got {args.rounds}")
        if args.versus_len < 4 or args.versus_len % 4:
            parser.error(f"--versus-len must be a positive multiple of 4, got {args.versus_len}")
        extra = (args.versus_len, tuple(n for n in (16, 64, 256, 1024, 2048) if n < args.versus_len // 2)
                 + (args.versus_len // 2,), args.rounds)
        if under_torchrun():
            results = run_from_env(gathering_worker, args.seq_len, args.mem_seq_len, *extra)
            if int(os.environ["RANK"]) == 0:
                print(report(results, len(results), args.seq_len, args.mem_seq_len, args.versus_len))
            return
        if args.world_size < 1:
            parser.error(f"--world-size must be >= 1, got {args.world_size}")
        began = time.perf_counter()
        results = launch(bench_worker, args.world_size, args.seq_len, args.mem_seq_len, *extra, timeout=args.timeout)
        text = report(results, args.world_size, args.seq_len, args.mem_seq_len, args.versus_len)
        if args.out:
            write_json(args.out, {"command": "python -m ctxlab.bench ring " + " ".join(argv if argv is not None else []),
                                  "world_size": args.world_size, "seconds": round(time.perf_counter() - began, 1),
                                  **summary(results, args.world_size, args.versus_len)})
        print(text)
