"""Serving latency as the context grows: prefill of the whole prompt, then decode one token at a time.

Prefill reads T tokens at once (MLP linear in T, attention quadratic); a decode step with a KV cache
reads every cached key and value once (linear in T). Both are measured on a trained model, with
the KV cache bytes and the prefill's peak memory beside them.
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from .config import positive_int
from .kvcache import ContiguousKVCache, kv_cache_bytes_per_token
from .measure import measure_peak, median_ms, synchronize
from .model import GPT


@torch.no_grad()
def decode_ms_per_token(model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int = 5) -> float:
    """Median time of one greedy step with a KV cache after a ``prompt`` prefill (the prefill is not timed)."""
    positive_int("new_tokens", new_tokens), positive_int("repeats", repeats)
    device = prompt.device
    times = []
    for _ in range(repeats + 1):  # the first round warms up
        cache = ContiguousKVCache(model.cfg, prompt.shape[0], prompt.shape[1] + new_tokens, device)
        logits, _ = model(prompt, cache=cache)
        nxt = logits[:, -1:].argmax(-1)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits, _ = model(nxt, cache=cache)
            nxt = logits[:, -1:].argmax(-1)
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3 / new_tokens)
    return statistics.median(times[1:])


@torch.no_grad()
def context_latency(model: GPT, prompt: torch.Tensor, lengths: Sequence[int], decode_tokens: int = 16) -> list[dict]:
    """One row per context length: prefill ms, decode ms per token, KV cache bytes, prefill peak bytes."""
    if not lengths or max(lengths) > prompt.shape[1] or min(lengths) < 1:
        raise ValueError(f"lengths must be in [1, prompt length {prompt.shape[1]}], got {list(lengths)}")
    if max(lengths) + decode_tokens > model.cfg.max_seq_len:
        raise ValueError(f"max(lengths) + decode_tokens must be <= max_seq_len={model.cfg.max_seq_len}")
    device = prompt.device
    rows = []
    for n in lengths:
        x = prompt[:, :n]
        rows.append({"context": n, "prefill_ms": median_ms(lambda: model(x), repeats=7, warmup=2, device=device),
                     "decode_ms_per_token": decode_ms_per_token(model, x, decode_tokens),
                     "kv_cache_bytes": kv_cache_bytes_per_token(model.cfg) * n * x.shape[0],
                     "prefill_peak_bytes": measure_peak(lambda: model(x), device)})
    return rows
