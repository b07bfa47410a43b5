"""Hugging Face ``config.json`` files of the Llama family, read into ``ModelConfig``'s fields.

The shipped files (``hf_configs/``) are the published configs of six models, numbers only; a
reader's own ``config.json`` is read the same way. Every field ctxlab cannot honour is refused
with its name, rather than silently dropped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HF_CONFIG_DIR = Path(__file__).resolve().parent / "hf_configs"
SHIPPED_MODELS = ("llama-2-7b", "llama-3-8b", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.1", "qwen2.5-7b")
HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
# transformers' rope_type -> ctxlab's rope_scaling
HF_ROPE_TYPES = {"default": "none", "linear": "pi", "dynamic": "dynamic_ntk", "yarn": "yarn", "llama3": "llama3"}


def _require(ok: bool, key: str, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"config.json {key} must be {allowed}, got {value!r}")


def read_hf_config(source: object) -> dict:
    """The dict of a config.json: from a dict, a file or folder path, or a name in ``SHIPPED_MODELS``."""
    if isinstance(source, dict):
        return dict(source)
    if isinstance(source, str) and source.lower() in SHIPPED_MODELS:
        source = HF_CONFIG_DIR / f"{source.lower()}.json"
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a config.json path, a dict or one of {SHIPPED_MODELS}, "
                        f"got {type(source).__name__}")
    path = Path(source) / "config.json" if Path(source).is_dir() else Path(source)
    if not path.is_file():
        raise ValueError(f"source must be a config.json path or one of {SHIPPED_MODELS}, got {str(source)!r}")
    return json.loads(path.read_text())


def _get(hf: dict, key: str) -> object:
    if key not in hf:
        raise ValueError(f"config.json lacks {key!r}, which every {tuple(HF_ARCHITECTURES)} config has")
    return hf[key]


def hf_config_fields(hf: dict) -> dict:
    """``ModelConfig`` keyword arguments for a Llama, Mistral or Qwen2 config.json."""
    arch = (hf.get("architectures") or [None])[0]
    family = HF_ARCHITECTURES.get(arch) if arch else hf.get("model_type")
    _require(family in HF_ARCHITECTURES.values(), "architectures", f"one of {tuple(HF_ARCHITECTURES)}",
             arch or hf.get("model_type"))
    width, heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
    _require(isinstance(heads, int) and heads > 0 and isinstance(width, int) and width % heads == 0, "hidden_size",
             f"divisible by num_attention_heads={heads!r}", width)
    _require(hf.get("head_dim") in (None, width // heads), "head_dim",
             f"hidden_size / num_attention_heads = {width // heads} (ctxlab splits the width into the heads)",
             hf.get("head_dim"))
    _require(hf.get("hidden_act", "silu") == "silu", "hidden_act", "'silu' (SwiGLU)", hf.get("hidden_act"))
    _require(not hf.get("mlp_bias", False), "mlp_bias", "false", hf.get("mlp_bias"))
    max_len = _get(hf, "max_position_embeddings")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    _require(kind in HF_ROPE_TYPES, "rope_scaling.rope_type", f"one of {tuple(HF_ROPE_TYPES)}", kind)
    fields = dict(vocab_size=_get(hf, "vocab_size"), d_model=width, n_layers=_get(hf, "num_hidden_layers"),
                  n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads, max_seq_len=max_len,
                  d_ff=_get(hf, "intermediate_size"), mlp="swiglu", norm="rmsnorm",
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_weights=bool(hf.get("tie_word_embeddings", False)),
                  qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
                  rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))))
    window = hf.get("sliding_window") if hf.get("use_sliding_window", family == "mistral") else None
    if window is not None and window < max_len:
        # ctxlab attends over the whole context: read such a model only as far as the two agree
        fields["max_seq_len"] = window
    if kind != "default":
        fields.update(_rope_fields(kind, rope, fields["max_seq_len"], hf))
    return fields


def _rope_fields(kind: str, rope: dict, max_len: int, hf: dict) -> dict:
    factor = rope.get("factor")
    _require(isinstance(factor, (int, float)) and factor >= 1, "rope_scaling.factor", "a number >= 1", factor)
    original = rope.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    if kind == "linear":  # position interpolation names no trained length: the one s stretches to max_len
        original = math.ceil(max_len / factor)
    if kind == "dynamic" or original is None:  # transformers' convention: the trained length is max_len
        original = max_len
    out = dict(rope_scaling=HF_ROPE_TYPES[kind], rope_scale=float(factor), rope_original_len=int(original))
    if kind in ("linear", "yarn"):
        out["max_seq_len"] = max(max_len, int(factor * original))  # the context the scaling was set up for
    if kind == "dynamic":
        out["max_seq_len"] = int(factor * max_len)  # transformers sets no limit; this is where it was aimed
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(_get(rope, "low_freq_factor")),
                   rope_high_freq_factor=float(_get(rope, "high_freq_factor")))
    if kind == "yarn":
        _require(not rope.get("mscale") and not rope.get("mscale_all_dim") and rope.get("truncate", True),
                 "rope_scaling", "YaRN without mscale or truncate overrides", rope)
        if rope.get("attention_factor") is not None:
            out["rope_attention_factor"] = float(rope["attention_factor"])
        out.update(rope_beta_fast=float(rope.get("beta_fast") or 32.0),
                   rope_beta_slow=float(rope.get("beta_slow") or 1.0))
    return out
