"""Hugging Face checkpoints of the Llama family loaded into ctxlab's model, weight for weight.

Both lay RoPE out the same way (channel i paired with channel i + d/2), so no weight is permuted;
transformers' separate k and v projections become ctxlab's one ``kv_proj`` (k rows, then v rows).
A checkpoint is a state dict, a ``.safetensors`` or ``.bin`` file, or a folder holding either
(sharded files included) beside its ``config.json``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .config import ModelConfig
from .model import GPT, rotary_embedding

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_PER_LAYER = {"input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
              "self_attn.q_proj.weight": "attn.q_proj.weight", "self_attn.q_proj.bias": "attn.q_proj.bias",
              "self_attn.o_proj.weight": "attn.out_proj.weight", "mlp.gate_proj.weight": "mlp.gate.weight",
              "mlp.up_proj.weight": "mlp.up.weight", "mlp.down_proj.weight": "mlp.down.weight"}
_TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "head.weight"}


def hf_to_ctxlab(cfg: ModelConfig, hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' parameter names and shapes mapped to ``GPT(cfg)``'s; a name it does not know is an error."""
    out: dict[str, Tensor] = {}
    kv: dict[tuple[int, str, str], Tensor] = {}
    for name, tensor in hf.items():
        layer = _LAYER.fullmatch(name)
        if name in _TOP:
            if name == "lm_head.weight" and cfg.tie_weights:
                continue  # tied: the head is the embedding
            out[_TOP[name]] = tensor
        elif layer and layer.group(2) in _PER_LAYER:
            out[f"blocks.{layer.group(1)}.{_PER_LAYER[layer.group(2)]}"] = tensor
        elif layer and (m := re.fullmatch(r"self_attn\.([kv])_proj\.(weight|bias)", layer.group(2))):
            kv[(int(layer.group(1)), m.group(1), m.group(2))] = tensor
        elif not name.endswith("rotary_emb.inv_freq"):  # old checkpoints store RoPE's buffer: recomputed here
            raise ValueError(f"checkpoint holds {name!r}, which a Llama-family model of this config does not have")
    for (i, which, kind), tensor in kv.items():
        if which == "k":
            if (i, "v", kind) not in kv:
                raise ValueError(f"checkpoint lacks model.layers.{i}.self_attn.v_proj.{kind}")
            out[f"blocks.{i}.attn.kv_proj.{kind}"] = torch.cat([tensor, kv[(i, "v", kind)]], dim=0)
    return out


def load_hf_weights(model: GPT, source: "dict[str, Tensor] | str | Path", assign: bool = False) -> GPT:
    """Copy a Hugging Face checkpoint into ``model`` (strict: every weight present, none left over).
    ``assign=True`` takes the checkpoint's tensors themselves (for a model built on the meta device)."""
    state = hf_to_ctxlab(model.cfg, read_checkpoint(source) if not isinstance(source, dict) else source)
    if model.cfg.tie_weights and "embed.weight" in state:
        state["head.weight"] = state["embed.weight"]
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint does not fit the ModelConfig: missing {missing[:4]}, unexpected {extra[:4]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model {tuple(expected[name].shape)}")
    model.load_state_dict(state, assign=assign)
    if model.cfg.tie_weights:
        model.head.weight = model.embed.weight  # one tensor again
    return model


def from_pretrained(folder: "str | Path", device: str = "cpu", dtype: torch.dtype | None = None,
                    **changes) -> GPT:
    """``GPT`` built from a checkpoint folder's ``config.json`` (``changes`` on top) with its weights,
    without first initialising (and so allocating) weights of its own."""
    cfg = ModelConfig.from_hf(Path(folder) / "config.json", **changes)
    with torch.device("meta"):
        model = GPT(cfg)
    model.rope = rotary_embedding(cfg)  # a buffer computed from the config: no checkpoint holds it
    load_hf_weights(model, folder, assign=True)
    return model.to(device=device, dtype=dtype)


def read_checkpoint(source: "str | Path") -> dict[str, Tensor]:
    """Every tensor of a checkpoint file, or of every shard in a folder, on the CPU."""
    path = Path(source)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise ValueError(f"source must be a checkpoint file or a folder of *.safetensors or *.bin, got {str(source)!r}")
    state: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file  # installed with transformers; only this format needs it

            state.update(load_file(str(file)))
        elif file.suffix in (".bin", ".pt", ".pth"):
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        else:
            raise ValueError(f"source must be .safetensors, .bin, .pt or .pth, got {file.name!r}")
    return state
