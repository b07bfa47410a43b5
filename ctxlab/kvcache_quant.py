"""A quantised KV cache: int8 or fp8 storage with scales, so a token of context costs 2-4x fewer bytes.

Decoding reads every cached key and value once per token, so at long context the cache's bytes are
the step's time; storing them in 8 bits halves what bf16 reads (quarters fp32), plus the scales.
Symmetric absmax quantisation: a group of numbers shares one scale = max |x| / qmax, and each is
stored as round(x / scale). Modes:

- ``int8``: keys and values per token (one scale per token and head, over head_dim);
- ``kivi``: KIVI's layout (Liu et al. 2024): keys per *channel* (one scale per channel over a group
  of ``group`` tokens: keys have outlier channels, so a per-token scale would be set by the outlier),
  values per token; the tokens of the group still filling stay in full precision (the residual);
- ``fp8``: float8 e4m3 (3 mantissa bits) per token, scaled so the largest value maps to 448.

Every read dequantises what is held (a kernel would do it on the fly); every attention, prefill
included, sees the cache as stored.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig, positive_int
from .kvcache import _KVCache

QUANT_MODES = ("int8", "kivi", "fp8")
INT8_MAX, FP8_MAX = 127.0, 448.0


def quantize(x: Tensor, dim: int, mode: str = "int8") -> tuple[Tensor, Tensor]:
    """(stored values, fp32 scales) with one scale per slice along ``dim`` (the reduced dimension)."""
    if mode not in ("int8", "fp8"):
        raise ValueError(f"mode must be 'int8' or 'fp8', got {mode!r}")
    top = INT8_MAX if mode == "int8" else FP8_MAX
    scale = (x.detach().abs().amax(dim=dim, keepdim=True).float() / top).clamp(min=1e-12)
    scaled = x.float() / scale
    if mode == "int8":
        return scaled.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale
    return scaled.to(torch.float8_e4m3fn), scale


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.float() * scale).to(dtype)


class QuantizedKVCache(_KVCache):
    """Same interface as :class:`~ctxlab.kvcache.ContiguousKVCache`; ``mode`` one of ``QUANT_MODES``."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, mode: str = "kivi", group: int = 32,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        positive_int("batch_size", batch_size), positive_int("max_len", max_len), positive_int("group", group)
        if mode not in QUANT_MODES:
            raise ValueError(f"mode must be one of {QUANT_MODES}, got {mode!r}")
        self.mode, self.group, self.max_len, self.dtype, self.seq_len = mode, group, max_len, dtype, 0
        store = torch.float8_e4m3fn if mode == "fp8" else torch.int8
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k_q = torch.zeros(shape, device=device, dtype=store)
        self.v_q = torch.zeros(shape, device=device, dtype=store)
        self.v_scale = torch.zeros(shape[:-1] + (1,), device=device)
        if mode == "kivi":  # one scale per channel and group of tokens; the filling group kept as it came
            self.k_scale = torch.zeros(shape[:3] + (-(-max_len // group), cfg.head_dim), device=device)
            self.k_residual = torch.zeros(shape[:3] + (group, cfg.head_dim), device=device, dtype=dtype)
            self.quantized = [0] * cfg.n_layers  # tokens of each layer already in whole groups
        else:
            self.k_scale = torch.zeros(shape[:-1] + (1,), device=device)

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Quantise positions [start, start + t) of one layer; return that layer's k/v so far, dequantised."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to position {end} but max_len={self.max_len}")
        fmt = "fp8" if self.mode == "fp8" else "int8"
        self.v_q[layer, :, :, start:end], self.v_scale[layer, :, :, start:end] = quantize(v, -1, fmt)
        values = dequantize(self.v_q[layer, :, :, :end], self.v_scale[layer, :, :, :end], self.dtype)
        if self.mode != "kivi":
            self.k_q[layer, :, :, start:end], self.k_scale[layer, :, :, start:end] = quantize(k, -1, fmt)
            return dequantize(self.k_q[layer, :, :, :end], self.k_scale[layer, :, :, :end], self.dtype), values
        return self._write_keys_per_channel(layer, start, end, k), values

    def _write_keys_per_channel(self, layer: int, start: int, end: int, k: Tensor) -> Tensor:
        g, done = self.group, self.quantized[layer]
        pending = torch.cat([self.k_residual[layer, :, :, :start - done], k.to(self.dtype)], dim=2)
        while pending.shape[2] >= g:  # a whole group: one scale per channel over its g tokens
            block = done // g
            self.k_q[layer, :, :, done:done + g], self.k_scale[layer, :, :, block:block + 1] = \
                quantize(pending[:, :, :g], 2, "int8")
            pending, done = pending[:, :, g:], done + g
        self.k_residual[layer, :, :, :pending.shape[2]] = pending
        self.quantized[layer] = done
        scales = self.k_scale[layer, :, :, :done // g].repeat_interleave(g, dim=2)
        return torch.cat([dequantize(self.k_q[layer, :, :, :done], scales, self.dtype), pending], dim=2)

    def bytes_per_token(self) -> float:
        """Cache bytes per token of context (all layers, k and v), scales included; KIVI's residual group
        is a fixed cost on top (``nbytes`` counts it)."""
        n_layers, batch, heads, _, head_dim = self.k_q.shape
        per_head = 2 * head_dim * self.k_q.element_size() + 4  # k and v stored, one fp32 scale for v
        per_head += 4 * head_dim / self.group if self.mode == "kivi" else 4  # k's scales
        return n_layers * heads * per_head

    def nbytes(self) -> int:
        """Bytes reserved by the cache: stored values, scales and (KIVI) the residual group."""
        extra = self.k_residual.nbytes if self.mode == "kivi" else 0
        return self.k_q.nbytes + self.v_q.nbytes + self.k_scale.nbytes + self.v_scale.nbytes + extra
