"""The context planner: the largest trainable context and the inference KV-cache budget of a model on a GPU.

Every byte comes from the validated memory model (:func:`~ctxlab.memory_model.predict_step_memory`,
:func:`~ctxlab.memory_model.count_params`, :func:`~ctxlab.kvcache.kv_cache_bytes_per_token`); this
file only adapts it to settings that model does not have, and each adaptation is an assumption:

- **precision**: ``"fp32"`` keeps weights, gradients and both AdamW moments in fp32 (4 + 4 + 8 bytes per
  parameter) and activations in 4 bytes; ``"bf16"`` is mixed precision: bf16 weights and gradients,
  fp32 master weights and moments (2 + 2 + 4 + 8 = 16 bytes per parameter, as counted by ZeRO,
  Rajbhandari et al. 2020) and every activation in 2 bytes (in practice a few, such as the logits,
  are often kept in fp32).
- **context parallelism** over ``context_ranks`` = P: each rank holds the whole model and T/P tokens
  of every activation (the memory model at T/P tokens), plus ring attention's transients in the
  backward pass of one layer (an incoming K/V block, fp32 dK/dV accumulators and the pair in transit,
  fp32 dQ; see :mod:`ctxlab.parallel.ring`). T is a multiple of P times ``granularity``.
- **pipeline stages** p: ``n_layers`` split into p equal stages; the planned device is the heaviest
  one, counted as L/p layers with the embedding and the head. Under 1F1B with at least p micro-batches
  (one sequence each) the first stage holds the saved activations of p micro-batches at once
  (Narayanan et al. 2021), so pipelining divides the model states by p, not the activations.
- **inference**: weights in the training precision plus a KV cache of T tokens; with P ranks the cache
  is split along the sequence and with p stages along the layers. Decode activations are O(width)
  per token and are left out.
- **ZeRO** (``zero_stage`` 1-3, Rajbhandari et al. 2020) shards the model states over ``zero_ranks``
  ranks that each hold the whole model (by default the context-parallel ranks, as in EasyContext):
  :func:`~ctxlab.model_states.model_state_bytes`. At stage 3 a rank also holds, while a block runs,
  that block's whole weights and gradients and the embedding, head and final norm (gathered for the
  whole step, as ``ctxlab.parallel.zero`` does): the "gathered" part. ``offload`` moves the optimizer's
  states (with the gradient slices) and, at stage 3, the weights' slices to host memory, whose size and
  PCIe time are not checked.
- nothing else is counted: no CUDA context, allocator fragmentation, communication or prefetch
  buffers, host memory. Leave a margin of a few GiB.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from .config import ModelConfig, positive_int, reference_config
from .hf_config import SHIPPED_MODELS
from .flops import training_flops_per_token
from .kvcache import kv_cache_bytes_per_token
from .memory_model import apply_techniques, count_params, predict_step_memory
from .model_states import STATE_BYTES, check_zero, model_state_bytes, offloaded_parts
from .search import largest_fitting

GIB = 2**30

# the book's reference model, two GPT-style shapes named by their parameter counts (with a 32000-token
# vocabulary and a tied head), and the published Llama-family models (ctxlab/hf_configs/)
PRESETS: dict[str, ModelConfig] = {
    "reference": reference_config(),
    "gpt-110m": ModelConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12),  # GPT-3 Small's shape
    "gpt-1.3b": ModelConfig(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16),  # GPT-3 XL's shape
    **{name: ModelConfig.from_hf(name) for name in SHIPPED_MODELS},
}
TECHNIQUE_FLAGS = {"flash": "efficient_attention", "checkpoint": "checkpointing", "chunked-loss": "chunked_loss"}

# bytes per parameter of each model state, and per activation element
PRECISIONS: dict[str, dict[str, int]] = {name: {**STATE_BYTES[name], "activation": {"fp32": 4, "bf16": 2}[name]}
                                         for name in STATE_BYTES}


def custom_model(layers: int, width: int, heads: int, kv_heads: int | None = None, vocab: int = 32000,
                 d_ff: int | None = None, llama: bool = False) -> ModelConfig:
    """A model shape of your own (ModelConfig checks it: width divisible by heads, kv_heads divides heads).
    ``llama=True``: RMSNorm, SwiGLU (``d_ff`` wide, default 8/3 of the width rounded up to 256) and an
    untied head; otherwise GPT-2's LayerNorm, 4x GELU MLP and tied head."""
    if llama:
        d_ff = d_ff if d_ff is not None else -(-(8 * width // 3) // 256) * 256
        return ModelConfig(vocab_size=vocab, d_model=width, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                           d_ff=d_ff, mlp="swiglu", norm="rmsnorm", tie_weights=False)
    return ModelConfig(vocab_size=vocab, d_model=width, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads, d_ff=d_ff)


@dataclass
class ContextPlan:
    """What fits: the largest trainable context and the KV-cache budget, with their memory breakdowns."""

    model: ModelConfig  # the planned shape with its techniques applied (all layers, before the pipeline split)
    params: int
    memory_bytes: int
    precision: str
    train_context: int  # largest trainable T (0: the model states alone do not fit)
    train_breakdown: dict[str, int]  # bytes on the heaviest device at train_context
    kv_tokens: int  # tokens the KV cache can hold at inference, over all P ranks
    kv_bytes_per_token: int  # for the whole model (all layers)
    inference_breakdown: dict[str, int] = field(default_factory=dict)
    host_bytes: int = 0  # model states offloaded to each rank's host memory (not in the breakdown's total)

    def summary(self) -> str:
        """Two lines a reader can compare: largest trainable T and inference KV budget."""
        train = (f"largest trainable context {self.train_context:,} tokens" if self.train_context
                 else "training does not fit: the model states alone exceed the memory")
        host = f"\nhost memory per rank for offloaded states: {self.host_bytes / GIB:,.1f} GiB (not checked)" \
            if self.host_bytes else ""
        return (f"{self.params / 1e6:,.0f}M params, {self.memory_bytes / GIB:g} GiB, {self.precision}: {train}\n"
                f"inference KV cache: {self.kv_tokens:,} tokens ({self.kv_bytes_per_token / 2**10:,.1f} KiB per token)"
                + host)


def resolve_model(model: str | ModelConfig) -> ModelConfig:
    """A ModelConfig, a preset name, or the path of a Hugging Face config.json."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str) and model.lower() in PRESETS:
        return PRESETS[model.lower()]
    if isinstance(model, str) and model.endswith(".json"):
        return ModelConfig.from_hf(model)
    raise ValueError(f"model must be a ModelConfig, a config.json path or one of {tuple(PRESETS)}, got {model!r}")


def plan_context(model: str | ModelConfig = "gpt-110m", memory_gib: float = 80, precision: str = "bf16", *,
                 checkpointing: bool = False, efficient_attention: bool = False, chunked_loss: bool = False,
                 kv_heads: int | None = None, context_ranks: int = 1, pipeline_stages: int = 1,
                 granularity: int = 64, zero_stage: int = 0, offload: tuple[str, ...] = (),
                 zero_ranks: int | None = None) -> ContextPlan:
    """The largest trainable context and the inference KV budget of ``model`` on ``memory_gib`` GiB per GPU.

    ``efficient_attention`` uses the chunked (flash-style) backend, otherwise the naive one that stores
    T x T probabilities; ``checkpointing`` recomputes every block; ``chunked_loss`` computes the loss over
    1024 tokens at a time; ``kv_heads`` sets grouped-query attention; ``zero_stage``, ``offload`` and
    ``zero_ranks`` shard and offload the model states. See the module docstring for what is assumed
    about precision, context-parallel ranks, pipeline stages and ZeRO.
    """
    cfg = resolve_model(model)
    if not isinstance(memory_gib, (int, float)) or isinstance(memory_gib, bool) or not memory_gib > 0:
        raise ValueError(f"memory_gib must be a positive number of GiB, got {memory_gib!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    for name, flag in (("checkpointing", checkpointing), ("efficient_attention", efficient_attention),
                       ("chunked_loss", chunked_loss)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    ranks = positive_int("context_ranks", context_ranks)
    stages = positive_int("pipeline_stages", pipeline_stages)
    g = positive_int("granularity", granularity)
    offload = check_zero(zero_stage, offload)
    shards = positive_int("zero_ranks", zero_ranks) if zero_ranks is not None else ranks
    if cfg.n_layers % stages:
        raise ValueError(f"pipeline_stages must divide n_layers={cfg.n_layers} (equal stages), got {stages}")
    if kv_heads is not None:
        positive_int("kv_heads", kv_heads)
        if cfg.n_heads % kv_heads:
            raise ValueError(f"kv_heads must divide n_heads={cfg.n_heads}, got {kv_heads}")
        cfg = cfg.replace(n_kv_heads=kv_heads)
    techniques = ["chunked" if efficient_attention else "naive"]
    techniques += ["checkpoint"] * checkpointing + ["chunked_loss"] * chunked_loss
    cfg = apply_techniques(cfg, techniques)
    stage = cfg.replace(n_layers=cfg.n_layers // stages)
    budget = int(memory_gib * GIB)
    prec = PRECISIONS[precision]

    n_stage = count_params(stage)
    sharded = model_state_bytes(n_stage, zero_stage, shards, precision, offload)
    on_host = offloaded_parts(zero_stage, offload, precision)
    states = {part: 0 if part in on_host else int(sharded[part]) for part in STATE_BYTES[precision]}
    if zero_stage == 3:  # whole while in use: one block, and the embedding, head and final norm
        states["gathered"] = count_params(stage.replace(n_layers=1)) * (prec["weights"] + prec["gradients"])

    def train_bytes(t_local: int) -> dict[str, int]:
        """Bytes on the heaviest device when each rank holds t_local tokens."""
        step = predict_step_memory(stage, t_local, 1, prec["activation"])
        # 1F1B: the stage also keeps what `stages - 1` other micro-batches saved for their backward
        activations = step["activations"] + (stages - 1) * step["saved_activations"]
        if ranks > 1:
            kv = cfg.n_kv_heads * cfg.head_dim
            activations += t_local * kv * (2 * prec["activation"] + 4 * 4) + t_local * cfg.d_model * 4
        parts = dict(states, activations=activations)
        parts["total"] = sum(parts.values())
        return parts

    def fits(t_local: int) -> bool:
        return train_bytes(t_local)["total"] <= budget

    lo = largest_fitting(fits, g)  # memory grows with T
    train_breakdown = train_bytes(lo) if lo else dict(states, activations=0, total=sum(states.values()))

    kv_stage = kv_cache_bytes_per_token(stage, prec["weights"])
    weights = n_stage * prec["weights"]
    kv_local = max(0, (budget - weights) // kv_stage)
    inference = {"weights": weights, "kv cache": kv_local * kv_stage, "total": weights + kv_local * kv_stage}
    return ContextPlan(model=cfg, params=count_params(cfg), memory_bytes=budget, precision=precision,
                       train_context=lo * ranks, train_breakdown=train_breakdown, kv_tokens=kv_local * ranks,
                       kv_bytes_per_token=kv_cache_bytes_per_token(cfg, prec["weights"]),
                       inference_breakdown=inference, host_bytes=int(sharded["host"]))


def prefill_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of reading ``seq_len`` tokens: a third of training's 6N + 12LdT per token, causal half."""
    return seq_len * training_flops_per_token(cfg, seq_len, causal_skip=True) / 3


# the techniques of chapters 2, 5 and 4, added one at a time, as plan_context keywords
def technique_ladder(cfg: ModelConfig, context_ranks: int = 8, pipeline_stages: int = 4) -> list[tuple[str, dict]]:
    """Cumulative settings: none, + checkpointing, + efficient attention, + chunked loss, + GQA, + CP, + pipeline.
    GQA keeps a quarter of the heads as k/v heads, or the model's own fewer."""
    kv = min(cfg.n_kv_heads, max(1, cfg.n_heads // 4))
    steps = [("none", {}), ("+ checkpointing", dict(checkpointing=True)),
             ("+ efficient attention", dict(efficient_attention=True)), ("+ chunked loss", dict(chunked_loss=True)),
             (f"+ GQA ({kv} kv heads)", dict(kv_heads=kv)),
             (f"+ context parallel P={context_ranks}", dict(context_ranks=context_ranks)),
             (f"+ pipeline p={pipeline_stages}", dict(pipeline_stages=pipeline_stages))]
    ladder, settings = [], {}
    for name, change in steps:
        settings = {**settings, **change}
        ladder.append((name, settings))
    return ladder


def breakdown_html(plan: ContextPlan) -> str:
    """The plan as a small HTML table (GiB per part), for a widget view or a notebook cell."""
    def rows(parts: dict[str, int]) -> str:
        return "".join(f"<tr><td>{k}</td><td style='text-align:right'>{v / GIB:,.2f}</td></tr>"
                       for k, v in parts.items())
    train = f"{plan.train_context:,} tokens" if plan.train_context else "does not fit (model states alone)"
    return (f"<div style='font-family:monospace'><b>{plan.params / 1e6:,.0f}M parameters, "
            f"{plan.memory_bytes / GIB:g} GiB, {plan.precision}</b><br>"
            f"largest trainable context: <b>{train}</b><br>"
            f"inference KV cache: <b>{plan.kv_tokens:,} tokens</b> "
            f"({plan.kv_bytes_per_token / 2**10:,.1f} KiB per token)"
            f"<table><tr><th>training, heaviest GPU</th><th>GiB</th></tr>{rows(plan.train_breakdown)}"
            f"<tr><th>inference</th><th>GiB</th></tr>{rows(plan.inference_breakdown)}</table></div>")


def main(argv: list[str] | None = None) -> None:
    """``python -m ctxlab.planner --model llama-3-8b --gpu-gib 80 --techniques flash,checkpoint,chunked-loss``"""
    parser = argparse.ArgumentParser(prog="python -m ctxlab.planner", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3-8b", help=f"one of {', '.join(PRESETS)}, or a config.json path")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory per GPU, GiB")
    parser.add_argument("--precision", default="bf16", choices=tuple(PRECISIONS))
    parser.add_argument("--techniques", default="", help=f"comma-separated, from {', '.join(TECHNIQUE_FLAGS)}")
    parser.add_argument("--context-ranks", type=int, default=1, help="context-parallel ranks P")
    parser.add_argument("--pipeline", type=int, default=1, help="pipeline stages p")
    parser.add_argument("--zero", type=int, default=0, help="ZeRO stage 0-3 (shards the model states)")
    parser.add_argument("--zero-ranks", type=int, default=None, help="ranks ZeRO shards over (default: P)")
    parser.add_argument("--offload", default="", help="comma-separated, from optimizer,params (ZeRO >= 1)")
    args = parser.parse_args(argv)
    chosen = [t for t in args.techniques.split(",") if t]
    unknown = sorted(set(chosen) - set(TECHNIQUE_FLAGS))
    if unknown:
        parser.error(f"--techniques must be among {', '.join(TECHNIQUE_FLAGS)}, got {', '.join(unknown)}")
    try:
        plan = plan_context(args.model, args.gpu_gib, args.precision, context_ranks=args.context_ranks,
                            pipeline_stages=args.pipeline, zero_stage=args.zero, zero_ranks=args.zero_ranks,
                            offload=args.offload, **{TECHNIQUE_FLAGS[t]: True for t in chosen})
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    print(plan.summary())
    for title, parts in (("training, heaviest GPU", plan.train_breakdown), ("inference", plan.inference_breakdown)):
        print(f"{title}:")
        print("\n".join(f"  {part:>15}: {value / GIB:9.2f} GiB" for part, value in parts.items()))
    print(f"params={plan.params} max_train_context={plan.train_context} kv_bytes_per_token={plan.kv_bytes_per_token}")


if __name__ == "__main__":
    main(sys.argv[1:])
