"""The model's shape and options, validated once so that every module can trust them."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from torch import Tensor

# The names a config may choose, declared here at the bottom of the package. The modules that implement
# them (attention.py, positions.py) use the same names; tests check that their tables match.
ATTENTION_BACKENDS = ("naive", "sdpa", "chunked")
ROPE_SCALINGS = ("none", "pi", "ntk", "yarn", "dynamic_ntk")
STATIC_SCALINGS = ("pi", "ntk", "yarn")  # a fixed scale s: positions up to s * original_len
POSITION_ENCODINGS = ("rope", "alibi")
IGNORE = -100  # the target value every loss skips (torch's cross_entropy default): prompts, padding, masks


def positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is an integer > 0 (numpy's too; bool excluded); else a ValueError naming
    the parameter."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def require(ok: bool, name: str, allowed: str, value: object) -> None:
    """A ValueError naming the parameter, the values it allows and the value it got, unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_token_batch(tokens: object, targets: object) -> None:
    """Tokens and targets must be (batch, time) tensors of one shape: every parallel step splits them."""
    if not isinstance(tokens, Tensor) or not isinstance(targets, Tensor) or tokens.dim() != 2 \
            or tokens.shape != targets.shape:
        raise ValueError(f"tokens and targets must be (batch, time) tensors of one shape, got "
                         f"{tuple(getattr(tokens, 'shape', ())) or tokens!r} and "
                         f"{tuple(getattr(targets, 'shape', ())) or targets!r}")


def _require(ok: bool, name: str, allowed: str, value: object) -> None:
    require(ok, f"ModelConfig.{name}", allowed, value)


@dataclass(frozen=True)
class ModelConfig:
    """A small causal GPT. ``n_kv_heads < n_heads`` gives GQA, ``n_kv_heads == 1`` gives MQA.

    Frozen: a model reads its config once, when it is built, so a changed copy (``replace``) means a new
    model; nothing can change a config that a model already holds."""

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
            object.__setattr__(self, "n_kv_heads", self.n_heads)  # frozen: set once, here
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "mlp_ratio"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                     name, "a positive int", value)
        _require(self.d_model % self.n_heads == 0, "d_model", f"divisible by n_heads={self.n_heads}", self.d_model)
        _require(self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0,
                 "n_kv_heads", f"a divisor of n_heads={self.n_heads}", self.n_kv_heads)
        _require(self.head_dim % 2 == 0, "d_model", "such that d_model / n_heads is even (RoPE rotates pairs)",
                 self.d_model)
        _require(self.attention in ATTENTION_BACKENDS, "attention", f"one of {ATTENTION_BACKENDS}", self.attention)
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


def with_positions(cfg: ModelConfig, seq_len: int, scaling: str = "none", scale: float | None = None, *,
                   original_len: int) -> ModelConfig:
    """The config that reads ``seq_len`` tokens of a model trained at ``original_len``; a static scaling
    defaults to s = max(1, seq_len / original_len)."""
    if scaling == "none" or cfg.position_encoding == "alibi":
        return cfg.replace(max_seq_len=seq_len)
    s = float(max(1.0, seq_len / original_len) if scale is None else scale)
    if scaling in STATIC_SCALINGS and seq_len > s * original_len:
        s = seq_len / original_len  # past the fine-tuned range: stretch further, zero-shot
    return cfg.replace(max_seq_len=seq_len, rope_scaling=scaling, rope_scale=s, rope_original_len=original_len)


def reference_config(**changes) -> ModelConfig:
    """The book's reference model: 4 layers, width 256, 4 heads; a training step takes seconds on a CPU."""
    return ModelConfig(**changes)
