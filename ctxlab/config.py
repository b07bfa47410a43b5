"""The model's shape and options, validated once so that every module can trust them.

``ModelConfig.from_hf`` reads a Hugging Face ``config.json`` of the Llama family (Llama, Mistral,
Qwen2), or one of the shipped ones by name (``hf_config.SHIPPED_MODELS``), into the same config.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path

from torch import Tensor

from .hf_config import hf_config_fields, read_hf_config

# The names a config may choose, declared here at the bottom of the package. The modules that implement
# them (attention.py, positions.py) use the same names; tests check that their tables match.
ATTENTION_BACKENDS = ("naive", "sdpa", "chunked")
ROPE_SCALINGS = ("none", "pi", "ntk", "yarn", "yarn_paper", "dynamic_ntk", "llama3")
STATIC_SCALINGS = ("pi", "ntk", "yarn", "yarn_paper")  # a fixed scale s: positions up to s * original_len
POSITION_ENCODINGS = ("rope", "alibi")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")  # GPT-2's 2-matrix MLP; Llama's gated 3-matrix one: down(silu(gate x) * up x)
IGNORE = -100  # the target value every loss skips (torch's cross_entropy default): prompts, padding, masks


def positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is an integer > 0 (numpy's too; bool excluded); else a ValueError naming
    the parameter."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (numpy's too; bool excluded); else a ValueError
    naming the parameter."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
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
    """A causal transformer: by default the book's small GPT (LayerNorm, GELU MLP, tied head); with
    ``norm="rmsnorm"``, ``mlp="swiglu"``, ``tie_weights=False`` a Llama. ``n_kv_heads < n_heads`` gives
    GQA, ``n_kv_heads == 1`` MQA.

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
    d_ff: int | None = None  # the MLP's hidden width; None: mlp_ratio * d_model
    mlp: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    qk_norm: bool = False  # LayerNorm on each head's queries and keys before the dot product (QK-layernorm)
    rope_low_freq_factor: float = 1.0  # llama3 scaling: wavelengths over L / low are interpolated
    rope_high_freq_factor: float = 4.0  # ... and under L / high kept
    rope_beta_fast: float = 32.0  # YaRN: pairs turning more often than this over L are kept
    rope_beta_slow: float = 1.0  # ... and less often than this interpolated
    rope_attention_factor: float | None = None  # replaces the scaling's own (transformers' attention_factor)
    checkpoint_every: int = 0  # 0: keep all activations; k: recompute every k-th block in backward
    checkpoint_attention: bool = False  # selective recomputation: the attention core only, in every block
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
        _require(isinstance(self.qkv_bias, bool), "qkv_bias", "a bool", self.qkv_bias)
        _require(isinstance(self.qk_norm, bool), "qk_norm", "a bool", self.qk_norm)
        _require(self.d_ff is None or (isinstance(self.d_ff, int) and not isinstance(self.d_ff, bool) and self.d_ff > 0),
                 "d_ff", "None or a positive int", self.d_ff)
        _require(self.mlp in MLPS, "mlp", f"one of {MLPS}", self.mlp)
        _require(self.norm in NORMS, "norm", f"one of {NORMS}", self.norm)
        _require(isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1, "norm_eps", "in (0, 1)",
                 self.norm_eps)
        _require(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "in [0, 1)",
                 self.dropout)
        for name in ("checkpoint_every", "loss_chunk", "mlp_chunk"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                     name, "an int >= 0 (0 turns it off)", value)
        _require(isinstance(self.attn_chunk, int) and not isinstance(self.attn_chunk, bool) and self.attn_chunk > 0,
                 "attn_chunk", "a positive int", self.attn_chunk)
        _require(isinstance(self.share_layers, bool), "share_layers", "a bool", self.share_layers)
        _require(isinstance(self.checkpoint_attention, bool), "checkpoint_attention", "a bool",
                 self.checkpoint_attention)

    def _check_positions(self) -> None:
        _require(self.position_encoding in POSITION_ENCODINGS, "position_encoding", f"one of {POSITION_ENCODINGS}",
                 self.position_encoding)
        _require(not (self.position_encoding == "alibi" and self.attention == "chunked"), "position_encoding",
                 "'rope' with attention='chunked' (the chunked kernel takes no additive bias)", self.position_encoding)
        factor = self.rope_attention_factor
        _require(factor is None or (isinstance(factor, (int, float)) and not isinstance(factor, bool)
                                    and 0 < factor < math.inf), "rope_attention_factor",
                 "None (the scaling's own) or a finite number > 0", factor)
        if self.rope_scaling == "none":
            _require(self.rope_scale == 1, "rope_scale", "1 when rope_scaling='none'", self.rope_scale)
            return
        _require(self.position_encoding == "rope", "position_encoding", "'rope' when a rope_scaling is set",
                 self.position_encoding)
        orig = self.rope_original_len
        _require(isinstance(orig, int) and not isinstance(orig, bool) and orig > 0, "rope_original_len",
                 f"a positive int (the trained length) when rope_scaling={self.rope_scaling!r}", orig)
        _require(orig <= self.max_seq_len, "rope_original_len", f"<= max_seq_len={self.max_seq_len} (a scaling "
                 "stretches the trained length to a longer one)", orig)
        if self.rope_scaling == "llama3":
            _require(0 < self.rope_low_freq_factor < self.rope_high_freq_factor, "rope_low_freq_factor",
                     f"in (0, rope_high_freq_factor={self.rope_high_freq_factor})", self.rope_low_freq_factor)
        if self.rope_scaling == "yarn":
            _require(0 < self.rope_beta_slow < self.rope_beta_fast, "rope_beta_slow",
                     f"in (0, rope_beta_fast={self.rope_beta_fast})", self.rope_beta_slow)
        if self.rope_scaling in STATIC_SCALINGS:
            limit = int(self.rope_scale * orig)
            _require(self.max_seq_len <= limit, "max_seq_len",
                     f"<= rope_scale * rope_original_len = {limit} (the scaled maximum)", self.max_seq_len)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The MLP's hidden width."""
        return self.d_ff if self.d_ff is not None else self.mlp_ratio * self.d_model

    @property
    def rope_options(self) -> dict:
        """The chosen scaling's own parameters, as ``positions.scaled_rope`` takes them."""
        if self.rope_scaling == "llama3":
            return {"low_freq_factor": self.rope_low_freq_factor, "high_freq_factor": self.rope_high_freq_factor}
        if self.rope_scaling == "yarn":
            return {"beta_fast": self.rope_beta_fast, "beta_slow": self.rope_beta_slow}
        return {}

    @classmethod
    def from_hf(cls, source: "str | Path | dict", **changes) -> "ModelConfig":
        """The config of a Hugging Face ``config.json``: a path, a dict, or a name in ``hf_config.SHIPPED_MODELS``
        (``"llama-3-8b"``); ``changes`` are applied on top (``max_seq_len=4096``)."""
        return cls(**{**hf_config_fields(read_hf_config(source)), **changes})

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
    if scaling == "none" or cfg.position_encoding == "alibi" or (scale is None and seq_len <= original_len):
        return cfg.replace(max_seq_len=seq_len)  # every scaling at s = 1 is the trained RoPE
    if scaling == "dynamic_ntk" and scale is None:
        scale = 1.0  # transformers' factor; 1 gives NTK at s = T / L for every length T read
    s = float(max(1.0, seq_len / original_len) if scale is None else scale)
    if scaling in STATIC_SCALINGS and seq_len > s * original_len:
        s = seq_len / original_len  # past the fine-tuned range: stretch further, zero-shot
    return cfg.replace(max_seq_len=seq_len, rope_scaling=scaling, rope_scale=s, rope_original_len=original_len)


def reference_config(**changes) -> ModelConfig:
    """The book's reference model: 4 layers, width 256, 4 heads; a training step takes seconds on a CPU."""
    return ModelConfig(**changes)

