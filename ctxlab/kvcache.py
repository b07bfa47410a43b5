"""KV caches for decoding: keep every layer's keys and values so a new token costs O(T), not O(T^2).

Bytes per token = 2 (k and v) x layers x kv_heads x head_dim x bytes per element: grouped-query
attention (fewer kv_heads) shrinks it, the context length multiplies it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_element: int = 4) -> int:
    """2 x layers x kv_heads x head_dim x bytes: what one more token of context costs at inference."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * bytes_per_element


class ContiguousKVCache:
    """One preallocated (batch, kv_heads, max_len, head_dim) buffer per layer for k and for v."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size} and {max_len}")
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.seq_len = 0

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v for positions [start, start + t) of one layer; return that layer's k/v so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to position {end} but max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.seq_len += t

    def nbytes(self) -> int:
        """Bytes reserved by the cache (what it costs whether or not the positions are used)."""
        return self.k.nbytes + self.v.nbytes
