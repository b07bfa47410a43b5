"""The largest trainable context under a memory budget, per technique, and how well the memory model predicts it.

For the reference model (4 layers, width 256, 4 heads, fp32, batch 1, AdamW) it searches the largest
T whose training step (forward, backward, optimiser step) fits the budget: by measurement (traced
with ``FakeTensorMode`` on CPU, real steps on CUDA) and by the analytic model.
"""
from __future__ import annotations

import argparse
import time

import torch

from ..command import command_errors
from ..attention import chunked_attention, naive_attention
from ..config import ModelConfig, reference_config
from ..measure import measure_peak
from ..memory_model import max_context, measure_step_memory, predict_step_memory
from . import format_table, relative_errors
from .korthikanti import korthikanti_bytes, megatron_layer_bytes
from .selective import activation_bytes

MIB = 2**20
# each row adds one technique to the one above it (from "chunked" on)
ROWS: list[tuple[str, list[str]]] = [
    ("naive", ["naive"]),
    ("sdpa", ["sdpa"]),
    ("chunked", ["chunked"]),
    ("+ checkpointing", ["chunked", "checkpoint"]),
    ("+ chunked loss", ["chunked", "checkpoint", "chunked_loss"]),
    ("all (+ chunked MLP)", ["chunked", "checkpoint", "chunked_loss", "chunked_mlp"]),
]


def context_rows(cfg: ModelConfig, budget_bytes: float, device: str = "cpu", measure: bool = True) -> list[dict]:
    """One row per technique set: predicted and (optionally) measured largest T."""
    rows = []
    for name, techniques in ROWS:
        row = {"technique": name, "predicted_T": max_context(cfg, budget_bytes, techniques)}
        if measure:
            t0 = time.perf_counter()
            traced = "sdpa" if "chunked" in techniques and device == "cpu" else None
            row["measured_T"] = max_context(cfg, budget_bytes, techniques, method="measure", device=device,
                                            traced_attention=traced)
            row["search_s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def attention_peak_ratio(seq_len: int = 8192, device: str = "cpu") -> dict:
    """Peak memory of chunked vs naive attention, forward + backward, B=1, H=4, head dim 64, fp32."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, seq_len, 64, generator=gen).to(device).requires_grad_(True) for _ in range(3))
    grad = torch.ones_like(q)
    peaks = {name: measure_peak(lambda: fn(q, k, v).backward(grad), device) / MIB
             for name, fn in (("chunked", chunked_attention), ("naive", naive_attention))}
    return {**peaks, "ratio": peaks["chunked"] / peaks["naive"]}


MODEL_CHECKS: list[tuple[str, dict, int]] = [
    ("naive", dict(attention="naive"), 2048),
    ("sdpa", dict(attention="sdpa"), 4096),
    ("sdpa, MQA", dict(attention="sdpa", n_kv_heads=1), 4096),
    ("chunked", dict(attention="chunked", attn_chunk=512), 2048),
    ("sdpa, shared layers", dict(attention="sdpa", share_layers=True), 4096),
    ("sdpa, checkpoint every 2nd", dict(attention="sdpa", checkpoint_every=2), 8192),
    ("sdpa, all", dict(attention="sdpa", checkpoint_every=1, loss_chunk=1024, mlp_chunk=1024), 8192),
    ("vocab 32000, sdpa", dict(attention="sdpa", vocab_size=32000), 2048),
    ("vocab 32000, checkpoint + chunked loss", dict(attention="sdpa", vocab_size=32000, checkpoint_every=1,
                                                    loss_chunk=1024), 2048),
]


def model_error_rows(cfg: ModelConfig, device: str = "cpu", scale: float = 1.0) -> list[dict]:
    """Predicted vs measured peak of one training step for several configurations."""
    rows = []
    for name, changes, seq_len in MODEL_CHECKS:
        c, t = cfg.replace(**changes), max(64, int(seq_len * scale))
        measured = measure_step_memory(c, t, device=device)["total"]
        predicted = predict_step_memory(c, t)["total"]
        rows.append({"config": name, "T": t, "measured_mib": measured / MIB, "predicted_mib": predicted / MIB})
    relative_errors(rows, "predicted_mib", "measured_mib", key="rel_error")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench memory", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-mib", type=float, default=None,
                        help="tracked memory budget (default 1024 on CPU, the GPU's free memory on CUDA)")
    parser.add_argument("--quick", action="store_true", help="256 MiB budget, attention ratio at T=2048, smaller checks")
    parser.add_argument("--predict-only", action="store_true", help="skip the measured searches")
    args = parser.parse_args(argv)
    with command_errors(parser):
        if args.budget_mib is not None and args.budget_mib <= 0:
            parser.error(f"--budget-mib must be positive, got {args.budget_mib}")
        if args.budget_mib is not None:
            budget = args.budget_mib * MIB
        elif args.device == "cuda":
            budget = torch.cuda.mem_get_info()[0] * 0.9
        else:
            budget = (256 if args.quick else 1024) * MIB
        cfg = reference_config()
        print(f"reference model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size}, "
              f"fp32, batch 1, AdamW; budget {budget / MIB:.0f} MiB tracked; device={args.device}")
        rows = context_rows(cfg, budget, args.device, measure=not args.predict_only)
        key = "predicted_T" if args.predict_only else "measured_T"
        for r in rows:
            r["x_naive"] = r[key] / rows[0][key]
        print(format_table(rows, ["technique", "measured_T", "predicted_T", "x_naive", "search_s"]))
        if args.device == "cpu" and not args.predict_only:
            print("(chunked rows: measured probes trace torch's fused kernel, which saves the same tensors; see below)")
            check_t = 2048
            c = cfg.replace(attention="chunked", attn_chunk=512)
            chunked = measure_step_memory(c, check_t)["total"]
            fused = measure_step_memory(c.replace(attention="sdpa"), check_t)["total"]
            print(f"training-step peak at T={check_t}: chunked backend {chunked / MIB:.1f} MiB, fused kernel "
                  f"{fused / MIB:.1f} MiB (ratio {chunked / fused:.3f})")
        seq_len = 2048 if args.quick else 8192
        att = attention_peak_ratio(seq_len, args.device)
        print(f"attention fwd+bwd at T={seq_len} (B=1, H=4, head dim 64, fp32): chunked {att['chunked']:.1f} MiB, "
              f"naive {att['naive']:.1f} MiB")
        checks = model_error_rows(cfg, args.device, scale=0.25 if args.quick else 1.0)
        print("memory model, one training step, predicted vs measured:")
        print(format_table(checks, ["config", "T", "measured_mib", "predicted_mib", "rel_error"]))
        s, h, a = 2048, 2560, 32  # GPT-3 2.7B's layer
        traced, formula = megatron_layer_bytes(s, 1, h, a), korthikanti_bytes(s, 1, h, a)
        print(f"one GPT-3 2.7B layer at s={s}, 16-bit with dropout: traced {traced / MIB:.1f} MiB, "
              f"s b h (34 + 5 a s / h) = {formula / MIB:.1f} MiB")
        t_sel = 1024 if args.quick else 2048
        naive = cfg.replace(attention="naive")
        selective = activation_bytes(naive.replace(checkpoint_attention=True), t_sel) / activation_bytes(naive, t_sel)
        print(f"naive attention at T={t_sel}: selective recomputation keeps {selective:.3f} of the activations")
        print(f"memory_model_max_abs_relative_error={max(abs(r['rel_error']) for r in checks):.4f}")
        print(f"chunked_vs_naive_peak_memory_ratio_T{seq_len}={att['ratio']:.4f}")
        print(f"max_context_ratio_all_vs_naive={rows[-1]['x_naive']:.2f} "
              f"korthikanti_rel_error={(traced - formula) / formula:.2e} "
              f"selective_recompute_memory_ratio={selective:.4f}")
