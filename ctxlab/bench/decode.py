"""The decode roofline, measured: time per generated token against the bytes it reads.

A decode step is timed at several context lengths on a model large enough that a step is not
Python overhead (its weights are far larger than the CPU's caches) and at batch 1, where reading
the weights is a matrix-vector product like reading the cache. The cache is filled with random
keys and values (a step's time does not depend on what they are), so no prefill is needed. The
lengths are timed in turns, round after round, so that a slow spell of a shared machine falls on
all of them; each point is a median with its quartiles. A line fitted to time vs T gives the cost
of one more cached token (the slope) and of the weights (the intercept); the bytes model predicts
both from one measured bandwidth, and the crossover T_x = intercept / slope from bytes alone.
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from ..config import ModelConfig, positive_int
from ..kvcache import ContiguousKVCache, kv_cache_bytes_per_token
from ..measure import read_bandwidth, synchronize
from ..model import GPT
from ..serving import crossover_context, decode_bytes, weight_bytes_read
from .causal_skip import quartiles

# 171 MB of fp32 weights (above the 105 MiB L3 of the book's CPU), a crossover near 4.6K tokens at batch 1
CPU_DECODE = dict(vocab_size=512, d_model=768, n_layers=6, n_heads=12)
CPU_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_DECODE = dict(vocab_size=32000, d_model=4096, n_layers=8, n_heads=32, n_kv_heads=8, mlp="swiglu",
                  norm="rmsnorm", d_ff=14336, tie_weights=False)  # 8 of Llama-3-8B's layers
GPU_CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)


def decode_setup(device: str) -> tuple[ModelConfig, tuple[int, ...]]:
    """The roofline's model and contexts for a device: small enough for a CPU, large on a GPU."""
    shape, contexts = (GPU_DECODE, GPU_CONTEXTS) if torch.device(device).type == "cuda" else (CPU_DECODE, CPU_CONTEXTS)
    return ModelConfig(**shape, max_seq_len=max(contexts)), contexts


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b x."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need at least two (x, y) pairs of equal count, got {len(xs)} and {len(ys)}")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def per_round(times_by_rank: Sequence[Sequence[float]], pick=max) -> list[float]:
    """One figure per interleaved round from every rank's times in it: ``max`` for when the slowest rank
    finished (a step ends with it), ``min`` for a wait that other ranks' lateness also lengthens."""
    return [pick(times) for times in zip(*times_by_rank)]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    q1, q3 = quartiles(list(values))
    return q1, statistics.median(values), q3


@torch.no_grad()
def decode_times(cfg: ModelConfig, contexts: Sequence[int], batch: int = 1, rounds: int = 7, steps: int = 8,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[int, list[float]]:
    """ms per decode step at each context, ``rounds`` times in turns (each the mean of ``steps`` steps)."""
    positive_int("batch", batch), positive_int("rounds", rounds), positive_int("steps", steps)
    if not contexts or min(contexts) < 1:
        raise ValueError(f"contexts must be positive ints, got {list(contexts)}")
    torch.manual_seed(seed)
    cfg = cfg.replace(max_seq_len=max(contexts) + steps + 1)
    model = GPT(cfg).to(device=device, dtype=dtype).eval()
    caches = {}
    for n in contexts:
        cache = ContiguousKVCache(cfg, batch, n + steps + 1, device, dtype)
        cache.k.normal_(), cache.v.normal_()
        caches[n] = cache
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    times: dict[int, list[float]] = {n: [] for n in contexts}
    for r in range(rounds + 1):  # round 0 warms up
        for n in contexts:
            cache = caches[n]
            cache.seq_len = n
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(token, cache=cache)
            synchronize(device)
            if r:
                times[n].append((time.perf_counter() - t0) * 1e3 / steps)
    return times


def decode_roofline(cfg: ModelConfig, contexts: Sequence[int], batch: int = 1, rounds: int = 7, steps: int = 8,
                    device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Measured step times beside the bytes model: per context the median and quartiles, the fitted line,
    its slope per round (the spread), the predicted slope and intercept from the measured bandwidth, and
    the crossover predicted (bytes only) and measured (intercept / slope)."""
    element = torch.finfo(dtype).bits // 8
    bandwidth = read_bandwidth(device, dtype=dtype)
    times = decode_times(cfg, contexts, batch, rounds, steps, device, dtype)
    rows = []
    for n in contexts:
        q1, med, q3 = spread(times[n])
        rows.append({"context": n, "ms": med, "ms_q1": q1, "ms_q3": q3,
                     "bytes": decode_bytes(cfg, n, batch, element)["total"],
                     "predicted_ms": decode_bytes(cfg, n, batch, element)["total"] / bandwidth["bytes_per_s"] * 1e3})
    intercept, slope = fit_line(list(contexts), [r["ms"] for r in rows])
    per_round = [fit_line(list(contexts), [times[n][i] for n in contexts])[1] for i in range(rounds)]
    kv_per_token = batch * kv_cache_bytes_per_token(cfg, element)
    return {
        "config": {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))},
        "batch": batch, "dtype": str(dtype).replace("torch.", ""), "device": device, "rounds": rounds,
        "steps": steps, "bandwidth": bandwidth, "rows": rows,
        "weight_bytes": weight_bytes_read(cfg, batch, element), "kv_bytes_per_token": kv_per_token,
        "intercept_ms": intercept, "slope_ms_per_token": slope,
        "slope_quartiles": spread(per_round),
        "predicted_slope_ms_per_token": kv_per_token / bandwidth["bytes_per_s"] * 1e3,
        "predicted_intercept_ms": weight_bytes_read(cfg, batch, element) / bandwidth["bytes_per_s"] * 1e3,
        "crossover_predicted": crossover_context(cfg, batch, element),
        "crossover_measured": intercept / slope if slope > 0 else float("inf"),
    }
