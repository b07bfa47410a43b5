"""What skipping the future buys: chunked attention with and without its causal block skip, and how
its time compares with naive attention and torch's SDPA as T grows.

Under a causal mask a query block sees no key block that lies wholly after it, so a tiled kernel can
skip those blocks (FlashAttention-2 does, Dao 2023). With n blocks a side it computes n(n + 1) / 2
of the n^2 blocks: a FLOP ratio of (n + 1) / (2n), towards one half. The FLOPs are counted
(``FlopCounterMode``, forward and backward); the times of forward + backward are taken in turns
(skip, full, skip, full, ...) so that both see the same machine, and the ratio is reported per pair
with its quartiles.

``python -m ctxlab.bench causal_skip [--seq-len 2048] [--chunk 256] [--repeats 9]``; last line:
``causal_skip_flops_ratio=... predicted=... time_ratio=... time_ratio_q1=... time_ratio_q3=...``.
``speed_sweep`` times the four kernels in turns per T (``python -m ctxlab.bench attention`` prints it).
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch

from ..attention import chunked_attention, naive_attention, sdpa_attention
from ..config import positive_int
from ..flops import count_flops
from ..measure import synchronize, times_ms


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (both the value itself for a single sample)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def predicted_ratio(seq_len: int, chunk: int) -> float:
    """Blocks a causal tiled kernel computes over all blocks, with n = ceil(T / chunk) a side."""
    n = -(-seq_len // chunk)
    return (n + 1) / (2 * n)


def skip_comparison(seq_len: int = 2048, chunk: int = 256, heads: int = 4, head_dim: int = 64, repeats: int = 9,
                    device: str = "cpu") -> dict:
    """FLOPs and forward + backward time of causal chunked attention, skipping the future or not."""
    for name, value in (("seq_len", seq_len), ("chunk", chunk), ("heads", heads), ("head_dim", head_dim),
                        ("repeats", repeats)):
        positive_int(name, value)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq_len, head_dim, generator=gen).to(device).requires_grad_() for _ in range(3))

    def step(skip: bool) -> torch.Tensor:
        out = chunked_attention(q, k, v, q_chunk=chunk, k_chunk=chunk, skip_future=skip)
        out.backward(torch.ones_like(out))
        grads = [t.grad for t in (q, k, v)]
        q.grad = k.grad = v.grad = None
        return torch.cat([out.detach().flatten()] + [g.flatten() for g in grads])

    same = float((step(True) - step(False)).abs().max())
    flops = {skip: count_flops(lambda: step(skip)) for skip in (True, False)}
    ratios = []
    for _ in range(repeats):  # in turns, so that a busy moment of the machine hits both
        ms = {}
        for skip in (True, False):
            synchronize(device)
            t0 = time.perf_counter()
            step(skip)
            synchronize(device)
            ms[skip] = time.perf_counter() - t0
        ratios.append(ms[True] / ms[False])
    q1, q3 = quartiles(ratios)
    return {"seq_len": seq_len, "chunk": chunk, "max_difference": same, "flops_skip": flops[True],
            "flops_full": flops[False], "flops_ratio": flops[True] / flops[False],
            "predicted_ratio": predicted_ratio(seq_len, chunk), "time_ratio": statistics.median(ratios),
            "time_ratio_q1": q1, "time_ratio_q3": q3, "repeats": repeats}


def speed_sweep(seq_lens: list[int], repeats: int = 5, heads: int = 4, head_dim: int = 64,
                device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[dict]:
    """Forward + backward time of causal attention per T: naive, chunked with and without its causal
    block skip, and torch's SDPA, timed in turns (one call of each, ``repeats`` times) so that a busy
    moment of the machine hits all four; median and quartiles (ms) per (backend, T)."""
    positive_int("repeats", repeats)
    variants = {"naive": naive_attention, "chunked": chunked_attention,
                "chunked, no skip": functools.partial(chunked_attention, skip_future=False),
                "sdpa": sdpa_attention}
    rows = []
    for t in seq_lens:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, t, head_dim, generator=gen).to(device, dtype).requires_grad_()
                   for _ in range(3))

        def step(fn) -> None:
            out = fn(q, k, v, causal=True)
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None
        times: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            step(fn)  # warm-up
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name] += times_ms(lambda: step(fn), repeats=1, warmup=0, device=device)
        for name, ms in times.items():
            q1, q3 = quartiles(ms)
            rows.append({"backend": name, "T": t, "ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3,
                         "samples": ms})
    return rows


def fitted_exponent(rows: list[dict], backend: str) -> float:
    """Least-squares slope of log(median ms) against log(T): time grows like T to this power."""
    points = [(math.log(r["T"]), math.log(r["ms"])) for r in rows if r["backend"] == backend]
    if len(points) < 2:
        raise ValueError(f"fitted_exponent needs at least two T for backend {backend!r}, got {len(points)}")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def time_ratio(rows: list[dict], num: str, den: str, seq_len: int) -> tuple[float, float, float]:
    """Median and quartiles of the per-turn time ratio num / den at one T (turns pair the samples)."""
    by = {r["backend"]: r["samples"] for r in rows if r["T"] == seq_len}
    ratios = [a / b for a, b in zip(by[num], by[den])]
    q1, q3 = quartiles(ratios)
    return statistics.median(ratios), q1, q3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench causal_skip", description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256, help="query and key block size")
    parser.add_argument("--repeats", type=int, default=9, help="timed pairs (skip, full)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        r = skip_comparison(args.seq_len, args.chunk, repeats=args.repeats, device=args.device)
    except ValueError as err:
        parser.error(str(err))
    print(f"causal chunked attention, T={r['seq_len']}, blocks of {r['chunk']}, forward + backward, {args.device}")
    print(f"  outputs and gradients equal: largest difference {r['max_difference']:.1e}")
    print(f"  FLOPs: skip {r['flops_skip']:,}  full {r['flops_full']:,}")
    print(f"  time ratio skip / full over {r['repeats']} interleaved pairs: median {r['time_ratio']:.3f}, "
          f"quartiles {r['time_ratio_q1']:.3f}-{r['time_ratio_q3']:.3f}")
    print(f"causal_skip_flops_ratio={r['flops_ratio']:.4f} predicted={r['predicted_ratio']:.4f} "
          f"time_ratio={r['time_ratio']:.3f} time_ratio_q1={r['time_ratio_q1']:.3f} "
          f"time_ratio_q3={r['time_ratio_q3']:.3f}")
