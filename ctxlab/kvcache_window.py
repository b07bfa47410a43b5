"""A sliding-window KV cache with attention sinks (StreamingLLM, Xiao et al. 2023): constant memory.

It keeps the first ``sinks`` tokens and the last ``window`` ones, so an unbounded dialogue costs
(sinks + window) tokens of cache, however long it runs. The first tokens stay because trained models
park much of their attention on them: evicting them breaks the softmax's balance, while keeping four
is enough (the paper's finding). Positions are slots in the cache, not places in the text: the
layer hands over k before RoPE and the cache rotates every held key by its slot when it is read, so
the positions never pass what the model was trained or scaled for. What leaves the window is gone:
the model keeps talking, but cannot recall a fact stated more than ``window`` tokens back.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig, positive_int
from .kvcache import _KVCache
from .positions import RotaryEmbedding, apply_rope


class SinkWindowCache(_KVCache):
    """Holds at most ``sinks + window`` tokens: the first ``sinks`` and the latest ``window`` (the step's
    own tokens included). Fed one token at a time, every query sees exactly those; a step of t tokens
    evicts first to make room for all t, so its first queries see t - 1 fewer old tokens."""

    rotates_keys = True

    def __init__(self, cfg: ModelConfig, batch_size: int, sinks: int, window: int,
                 rope: RotaryEmbedding | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        positive_int("batch_size", batch_size), positive_int("window", window)
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        if window < sinks:
            raise ValueError(f"window must be at least the number of sinks ({sinks}), got {window}")
        if sinks + window > cfg.max_seq_len:
            raise ValueError(f"sinks + window = {sinks + window} must be <= max_seq_len={cfg.max_seq_len}")
        if cfg.position_encoding == "rope" and rope is None:
            raise ValueError("a RoPE model's window cache needs its rope (pass rope=model.rope): "
                             "held keys are rotated by their slot")
        self.sinks, self.window, self.capacity = sinks, window, sinks + window
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, self.capacity, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # keys before RoPE
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.cos = self.sin = None
        if cfg.position_encoding == "rope":  # the slots' tables, computed once: slot i is position i
            self.cos, self.sin = rope(torch.arange(self.capacity, device=device), dtype)
        self.seq_len = 0   # tokens held
        self.seen = 0      # tokens read since the start
        self.evicted = 0   # tokens dropped from the window

    def make_room(self, t: int) -> None:
        """Evict the oldest window tokens so that ``t`` more fit; the sinks stay."""
        if t > self.window:
            raise ValueError(f"a step of {t} tokens does not fit a window of {self.window}: "
                             f"feed at most window={self.window} tokens at a time")
        excess = self.seq_len + t - self.capacity
        if excess > 0:
            kept = slice(self.sinks + excess, self.seq_len)
            to = slice(self.sinks, self.seq_len - excess)
            self.k[:, :, :, to] = self.k[:, :, :, kept].clone()
            self.v[:, :, :, to] = self.v[:, :, :, kept].clone()
            self.seq_len -= excess
            self.evicted += excess

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this step's k (before RoPE) and v; return every held key rotated by its slot, and v."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        keys = self.k[layer, :, :, :end]
        if self.cos is not None:
            keys = apply_rope(keys, self.cos[:end], self.sin[:end])
        return keys, self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.seq_len += t
        self.seen += t

    def nbytes(self) -> int:
        """Bytes reserved: the same after ten tokens or ten million."""
        return self.k.nbytes + self.v.nbytes
