"""The model's shape and options, validated once so that every module can trust them."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .attention import BACKENDS
from .positions import ROPE_SCALINGS, STATIC_SCALINGS

POSITION_ENCODINGS = ("rope", "alibi")


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an int > 0 (bool excluded); else a ValueError naming the parameter."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def require(ok: bool, name: str, allowed: str, value: object) -> None:
    """A ValueError naming the parameter, the values it allows and the value it got, unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _require(ok: bool, name: str, allowed: str, value: object) -> None:
    require(ok, f"ModelConfig.{name}", allowed, value)


@dataclass
class ModelConfig:
    """A small causal GPT. ``n_kv_heads < n_heads`` gives GQA, ``n_kv_heads == 1`` gives MQA."""

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    max_seq_len: int = 1024
    attention: str = "sdpa"
    rope_base: float = 10000.0
    rope_scaling: str = "none"
    rope_scale: float = 1.0
    rope_original_len: int | None = None  # the trained length that a RoPE scaling stretches
    position_encoding: str = "rope"
    tie_weights: bool = True
    dropout: float = 0.0
    mlp_ratio: int = 4
    checkpoint_every: int = 0  # 0: keep all activations; k: recompute every k-th block in backward
    share_layers: bool = False  # one block's weights reused by every layer (ALBERT-style)
    loss_chunk: int = 0  # 0: full logits; n: cross-entropy over n tokens at a time, recomputed in backward
    mlp_chunk: int = 0  # 0: whole sequence; n: the MLP over n tokens at a time, recomputed in backward
    attn_chunk: int = 256  # block size of the chunked attention backend (queries and keys)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "mlp_ratio"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                     name, "a positive int", value)
        _require(self.d_model % self.n_heads == 0, "d_model", f"divisible by n_heads={self.n_heads}", self.d_model)
        _require(self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0,
                 "n_kv_heads", f"a divisor of n_heads={self.n_heads}", self.n_kv_heads)
        _require(self.head_dim % 2 == 0, "d_model", "such that d_model / n_heads is even (RoPE rotates pairs)",
                 self.d_model)
        _require(self.attention in BACKENDS, "attention", f"one of {tuple(BACKENDS)}", self.attention)
        _require(isinstance(self.rope_base, (int, float)) and self.rope_base > 1, "rope_base", "a number > 1",
                 self.rope_base)
        _require(self.rope_scaling in ROPE_SCALINGS, "rope_scaling", f"one of {ROPE_SCALINGS}", self.rope_scaling)
        _require(isinstance(self.rope_scale, (int, float)) and self.rope_scale >= 1, "rope_scale", "a number >= 1",
                 self.rope_scale)
        self._check_positions()
        _require(isinstance(self.tie_weights, bool), "tie_weights", "a bool", self.tie_weights)
        _require(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "in [0, 1)",
                 self.dropout)
        for name in ("checkpoint_every", "loss_chunk", "mlp_chunk"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                     name, "an int >= 0 (0 turns it off)", value)
        _require(isinstance(self.attn_chunk, int) and not isinstance(self.attn_chunk, bool) and self.attn_chunk > 0,
                 "attn_chunk", "a positive int", self.attn_chunk)
        _require(isinstance(self.share_layers, bool), "share_layers", "a bool", self.share_layers)

    def _check_positions(self) -> None:
        _require(self.position_encoding in POSITION_ENCODINGS, "position_encoding", f"one of {POSITION_ENCODINGS}",
                 self.position_encoding)
        _require(not (self.position_encoding == "alibi" and self.attention == "chunked"), "position_encoding",
                 "'rope' with attention='chunked' (the chunked kernel takes no additive bias)", self.position_encoding)
        if self.rope_scaling == "none":
            _require(self.rope_scale == 1, "rope_scale", "1 when rope_scaling='none'", self.rope_scale)
            return
        _require(self.position_encoding == "rope", "position_encoding", "'rope' when a rope_scaling is set",
                 self.position_encoding)
        orig = self.rope_original_len
        _require(isinstance(orig, int) and not isinstance(orig, bool) and orig > 0, "rope_original_len",
                 f"a positive int (the trained length) when rope_scaling={self.rope_scaling!r}", orig)
        if self.rope_scaling in STATIC_SCALINGS:
            limit = int(self.rope_scale * orig)
            _require(self.max_seq_len <= limit, "max_seq_len",
                     f"<= rope_scale * rope_original_len = {limit} (the scaled maximum)", self.max_seq_len)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def recomputes(self, layer: int) -> bool:
        """The checkpoint policy: every k-th block (k = checkpoint_every) is recomputed in backward."""
        return self.checkpoint_every > 0 and layer % self.checkpoint_every == 0

    def replace(self, **changes) -> "ModelConfig":
        """A validated copy with some fields changed."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"ModelConfig has no field(s) {sorted(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelConfig(**values)


def reference_config(**changes) -> ModelConfig:
    """The book's reference model: 4 layers, width 256, 4 heads; a training step takes seconds on a CPU."""
    return ModelConfig(**changes)
