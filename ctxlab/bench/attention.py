"""Attention memory and latency vs context length: naive attention grows like T^2, fused kernels like T."""
from __future__ import annotations

import argparse
import statistics

import torch

from ..command import command_errors
from ..attention import BACKENDS, attention, chunked_attention
from ..config import positive_int
from ..flops import count_flops
from ..measure import measure_peak, run_point, times_ms
from . import format_table
from .causal_skip import fitted_exponent, speed_sweep, time_ratio

MIB = 2**20


def attention_point(backend: str, seq_len: int, batch: int = 1, heads: int = 4, head_dim: int = 64,
                    backward: bool = True, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    repeats: int = 3, budget_bytes: int | None = None) -> dict:
    """Peak memory (MiB) and median latency (ms) of one causal attention call, optionally with backward."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    positive_int("seq_len", seq_len)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, generator=gen).to(device, dtype).requires_grad_(backward)
               for _ in range(3))

    def step() -> None:
        out = attention(q, k, v, backend=backend, causal=True)
        if backward:
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None

    peak = measure_peak(step, device, budget_bytes=budget_bytes)  # over the budget: MemoryError, an OOM row
    times = times_ms(step, repeats=repeats, warmup=1, device=device)
    # the median is the typical time; the best is the least disturbed by other work on the machine
    return {"peak_mib": peak / MIB, "ms": statistics.median(times), "best_ms": min(times)}


def sweep(seq_lens: list[int], backends: list[str] | None = None, backward: bool = True,
          max_len: dict[str, int] | None = None, stop_after_oom: bool = False, **kw) -> list[dict]:
    """One row per (backend, T); out-of-memory points are recorded as such and the sweep goes on.

    ``max_len`` caps a backend's T (the chunked backend's Python loop is slow at long T);
    ``stop_after_oom`` moves on to the next backend after its first out-of-memory point, since a
    longer T cannot fit either."""
    rows = []
    for backend in backends or list(BACKENDS):
        for t in seq_lens:
            if max_len and t > max_len.get(backend, t):
                break
            rows.append(run_point(lambda: attention_point(backend, t, backward=backward, **kw),
                                  backend=backend, T=t, pass_="fwd+bwd" if backward else "fwd"))
            if stop_after_oom and rows[-1]["oom"]:
                break
    return rows


def peak_ratio(rows: list[dict], num: str, den: str, seq_len: int) -> float:
    """peak(num) / peak(den) at one T (fwd+bwd rows); nan when either point ran out of memory."""
    def peak(backend: str) -> float:
        for r in rows:
            if r["backend"] == backend and r["T"] == seq_len and r["pass_"] == "fwd+bwd" and not r["oom"]:
                return r["peak_mib"]
        return float("nan")
    return peak(num) / peak(den)


def heads_comparison(seq_len: int, width: int, shapes: list[tuple[int, int]]) -> list[dict]:
    """One attention core (scores, softmax, weighted sum; forward and backward) of fixed ``width`` per
    (heads, kv_heads) shape: counted FLOPs, tracked peak MiB of the naive and fused kernels, and the KV
    cache bytes per token in fp32 (erratum E3)."""
    from ..flops import count_flops

    rows = []
    for heads, kv_heads in shapes:
        g = torch.Generator().manual_seed(0)
        d = width // heads
        q = torch.randn(1, heads, seq_len, d, generator=g, requires_grad=True)
        k, v = (torch.randn(1, kv_heads, seq_len, d, generator=g, requires_grad=True) for _ in range(2))

        def step(backend: str):
            return lambda: attention(q, k, v, backend=backend, causal=True).sum().backward()
        rows.append({"heads": heads, "kv_heads": kv_heads, "flops": count_flops(step("naive")),
                     "naive_mib": measure_peak(step("naive"), "cpu") / 2**20,
                     "sdpa_mib": measure_peak(step("sdpa"), "cpu") / 2**20, "kv_bytes": 2 * kv_heads * d * 4})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench attention", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-len", type=int, default=None, help="largest T (default 8192 on CPU, 65536 on GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ratio-at", type=int, default=8192,
                        help="the T whose sdpa/naive peak ratio the last line reports (default 8192)")
    parser.add_argument("--time-at", type=int, default=4096,
                        help="largest T of the interleaved speed sweep, whose chunked/sdpa time ratio the last "
                             "line reports (default 4096)")
    args = parser.parse_args(argv)
    if args.time_at < 1024 or args.time_at & (args.time_at - 1):
        parser.error(f"--time-at must be a power of two >= 1024 (the speed sweep starts at 512), got {args.time_at}")
    if args.max_len is not None and args.max_len < 512:
        parser.error(f"--max-len must be >= 512 (the sweep starts there), got {args.max_len}")
    with command_errors(parser):
        max_len = args.max_len if args.max_len is not None else (65536 if args.device == "cuda" else 8192)
        seq_lens = [2**i for i in range(9, 30) if 2**i <= max_len]
        rows = []
        for backward in (False, True):
            rows += sweep(seq_lens, backward=backward, device=args.device, repeats=args.repeats)
        print(f"causal attention, B=1, H=4, head_dim=64, fp32, device={args.device}")
        print(format_table(rows, ["backend", "pass_", "T", "peak_mib", "ms"]))
        ratio = peak_ratio(rows, "sdpa", "naive", args.ratio_at)
        speed_lens = [t for t in (2**i for i in range(9, 30)) if t <= args.time_at]
        speed = speed_sweep(speed_lens, repeats=max(args.repeats, 3), device=args.device)
        print(f"forward + backward, in turns over {max(args.repeats, 3)} repeats: median and quartiles (ms)")
        print(format_table(speed, ["backend", "T", "ms", "q1_ms", "q3_ms"]))
        print("time ~ T^k, k fitted: " + ", ".join(f"{name} {fitted_exponent(speed, name):.2f}"
                                                 for name in dict.fromkeys(r["backend"] for r in speed)))
        chunked, q1, q3 = time_ratio(speed, "chunked", "sdpa", args.time_at)
        print(f"chunked / sdpa at T={args.time_at}: median {chunked:.2f}, quartiles {q1:.2f}-{q3:.2f}")
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, args.time_at, 64, generator=gen, requires_grad=True) for _ in range(3))
        flops = {skip: count_flops(lambda: chunked_attention(q, k, v, skip_future=skip).sum().backward())
                 for skip in (True, False)}
        print(f"sdpa_vs_naive_peak_memory_ratio_T{args.ratio_at}={ratio:.4f} "
              f"causal_skip_flops_ratio={flops[True] / flops[False]:.4f} "
              f"chunked_vs_sdpa_time_T{args.time_at}={chunked:.3f}")
