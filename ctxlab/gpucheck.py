"""``python -m ctxlab.gpucheck``: one prepared run of the book's GPU measurements, written as JSON.

Needs only torch and numpy. Each section is independent: one that fails (or runs out of memory)
is recorded with its error and the run goes on. ``--dry-run`` runs the same code paths at tiny
sizes on the CPU, which is how the tests check it.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import traceback
from typing import Callable

import torch

from .command import check_output, command_errors
from .atomic import write_json
from .measure import matmul_peak, median_ms, run_point
from .search import search
from .bench.attention import sweep
from .bench.causal_skip import speed_sweep
from .gpu_results import validate
from .gpucheck_parallel import parallel_checks

SCHEMA_VERSION = 2  # 2: the 110M model's sections are named for it (were *_125m)


def attention_sweep(device: str, dtype: torch.dtype, seq_lens: list[int], backends: list[str],
                    max_len: dict[str, int] | None = None) -> list[dict]:
    """Memory and latency of causal attention fwd+bwd per backend, up to each backend's first OOM."""
    return sweep(seq_lens, backends, max_len=max_len, stop_after_oom=True, device=device, dtype=dtype, repeats=3)


def training_step_fn(cfg, seq_len: int, device: str, dtype: torch.dtype) -> Callable[[], float]:
    """A closure running one AdamW step of GPT(cfg) on random tokens; returns the loss."""
    from .model import GPT

    torch.manual_seed(0)
    model = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len))).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, cfg.vocab_size, (1, seq_len), device=device)

    def step() -> float:
        _, loss = model(tokens, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)
    return step


def largest_context(cfg, device: str, dtype: torch.dtype, start: int, limit: int, max_probe_s: float) -> dict:
    """Real search: double T until a training step runs out of memory (or a probe, model set-up included,
    passes ``max_probe_s``, or T reaches ``limit``), then bisect between the last fit and the first failure
    to within a quarter of ``start``. Each probe records its training step's seconds."""
    step_s: dict[int, float] = {}

    def fits(t: int) -> bool:
        row = run_point(lambda: {"s": median_ms(training_step_fn(cfg, t, device, dtype), 1, 0, device) / 1e3})
        step_s[t] = row.get("s", float("nan"))
        return not row["oom"]

    found = search(fits, 64, start=start, limit=limit, time_cap_s=max_probe_s, resolution=max(start // 4, 64))
    stopped = {"failure": "oom"}.get(found.stopped_by, found.stopped_by)
    return {"largest_fitting_T": found.largest, "stopped_by": stopped,
            "probes": [{"T": t, "fits": ok, "s": step_s[t]} for t, ok, _ in found.probes]}


def step_throughput(cfg, seq_len: int, device: str, dtype: torch.dtype, peak_tflops: float | None) -> dict:
    """Tokens per second of full training steps at ``seq_len`` and the model FLOPs utilisation."""
    from .flops import training_flops_per_token

    step = training_step_fn(cfg, seq_len, device, dtype)
    ms = median_ms(step, repeats=3, warmup=1, device=device)
    tokens_per_s = seq_len / (ms / 1e3)
    flops = training_flops_per_token(cfg, seq_len, causal_skip=True)
    mfu = tokens_per_s * flops / (peak_tflops * 1e12) if peak_tflops else None
    return {"T": seq_len, "ms_per_step": ms, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
            "flops_formula": "6N + 6 L d T (causal kernel skips masked blocks)", "peak_tflops": peak_tflops,
            "mfu": mfu}


def model_110m(**changes):
    """The planner's gpt-110m preset (GPT-3 Small's shape: 12 layers, width 768, 12 heads), 1024 positions."""
    from .planner import PRESETS

    return PRESETS["gpt-110m"].replace(**{"max_seq_len": 1024, **changes})


def serving_latency(device: str, dtype: torch.dtype, lengths: list[int], decode_tokens: int) -> list[dict]:
    """Prefill and per-token decode time of the case-study model's shape (random weights: timing only)."""
    from .casestudy.settings import Settings, extended_config
    from .latency import context_latency
    from .model import GPT

    torch.manual_seed(0)
    cfg = extended_config(Settings(), max(lengths) + decode_tokens)
    model = GPT(cfg).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(cfg.vocab_size, (1, max(lengths)), device=device)
    return context_latency(model, prompt, lengths, decode_tokens)


def decode_roofline_check(device: str, dtype: torch.dtype, dry_run: bool) -> dict:
    """Chapter 8b's decode roofline: on a GPU eight of Llama-3-8B's layers to 128K cached tokens."""
    from .bench.decode import decode_roofline, decode_setup
    from .config import ModelConfig

    if dry_run:
        cfg, contexts = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=256), (64, 128)
        return decode_roofline(cfg, contexts, rounds=2, steps=2, device=device, dtype=dtype)
    return decode_roofline(*decode_setup(device), device=device, dtype=dtype)


def zero_offload_check(dry_run: bool) -> dict:
    """Chapter 4b's ZeRO-3 on one rank (NCCL on a GPU) with and without offload, beside FSDP2: step times
    and the bytes that crossed between host and device, so their ratio is the link's effective rate."""
    from .bench.zero import zero_sweep
    from .config import ModelConfig

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32) if dry_run else \
        model_110m(max_seq_len=512)
    runs = (("ours", 0, ()), ("ours", 3, ()), ("ours", 3, ("optimizer", "params")), ("torch", 3, ()))
    return zero_sweep(1, cfg, steps=3 if dry_run else 5, batch=2, seq_len=16 if dry_run else 512, runs=runs)


def fused_block_check(device: str, dtype: torch.dtype, dry_run: bool) -> dict:
    """Chapter 5's ring with ``kernel="fused"`` needs torch's flash kernel with its log-sum-exp: two key
    ranges through it, merged, and each range's backward from the whole row's output and lse, against SDPA
    in float32 on the same inputs. On CUDA this is the only test of that path (ctxlab.attention_lse)."""
    from .attention import merge_partials, sdpa_attention
    from .attention_lse import fused_backward, fused_forward

    b, h, h_kv, t, d = (1, 2, 1, 64, 16) if dry_run else (1, 32, 8, 4096, 128)
    gen = torch.Generator().manual_seed(0)
    q, d_out = (torch.randn(b, h, t, d, generator=gen).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(b, h_kv, t, d, generator=gen).to(device, dtype) for _ in range(2))
    ref = [x.float().requires_grad_() for x in (q, k, v)]
    whole = sdpa_attention(*ref, causal=True)
    whole.backward(d_out.float())
    early, late = slice(0, t // 2), slice(t // 2, t)  # keys before the queries' half: all visible
    qs = q[:, :, late]
    out, lse = merge_partials(*fused_forward(qs, k[:, :, early], v[:, :, early], False),
                              *fused_forward(qs, k[:, :, late], v[:, :, late], True))
    grads = [fused_backward(qs, k[:, :, s], v[:, :, s], d_out[:, :, late], out, lse, s == late)
             for s in (early, late)]
    dq = sum(g[0].float() for g in grads)
    dk, dv = (torch.cat([g[i].float() for g in grads], dim=2) for i in (1, 2))

    def rel(mine: torch.Tensor, want: torch.Tensor) -> float:
        return ((mine.float() - want).abs().max() / want.abs().max()).item()

    return {"dtype": str(dtype).replace("torch.", ""), "shape": [b, h, h_kv, t, d],
            "out": rel(out, whole.detach()[:, :, late]), "dq": rel(dq, ref[0].grad[:, :, late]),
            "dk_late": rel(dk[:, :, t // 2:], ref[1].grad[:, :, late]),
            "dv_late": rel(dv[:, :, t // 2:], ref[2].grad[:, :, late])}


ALL_TECHNIQUES = dict(attention="sdpa", checkpoint_every=1, loss_chunk=4096, mlp_chunk=4096)


def sections(dry_run: bool, device: str) -> dict[str, Callable[[], object]]:
    """name -> measurement; sizes shrink to a few seconds on the CPU in dry-run mode."""
    dtype = torch.float32 if dry_run else torch.bfloat16
    seqs = [64, 128] if dry_run else [2**i for i in range(10, 18)]
    from .attention import BACKENDS
    from .config import reference_config

    peak: dict = {}

    def measure_peak_rate() -> dict:
        peak.update(matmul_peak(device, dtype, 256 if dry_run else 8192))
        return peak

    tiny = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    ref = reference_config(**(tiny if dry_run else {}), **ALL_TECHNIQUES)
    big = ref if dry_run else model_110m(**ALL_TECHNIQUES)
    start, limit, cap = (32, 64, 30.0) if dry_run else (8192, 2**21, 120.0)
    return {
        "matmul_peak": measure_peak_rate,
        "attention": lambda: attention_sweep(device, dtype, seqs, list(BACKENDS), {"chunked": 16384}),
        "attention_speed": lambda: speed_sweep([64, 128] if dry_run else [2**i for i in range(10, 15)],
                                               repeats=2 if dry_run else 5, device=device, dtype=dtype),
        "max_context_reference": lambda: largest_context(ref, device, dtype, start, limit, cap),
        "max_context_110m": lambda: largest_context(big, device, dtype, start, limit, cap),
        "throughput_110m": lambda: step_throughput(big, 128 if dry_run else 16384, device, dtype,
                                                   peak.get("tflops")),
        "parallel": lambda: parallel_checks(device),
        "casestudy_latency": lambda: serving_latency(device, dtype, [64, 128] if dry_run else
                                                     [512, 2048, 8192, 32768], 4 if dry_run else 32),
        "decode_roofline": lambda: decode_roofline_check(device, dtype, dry_run),
        "zero_offload": lambda: zero_offload_check(dry_run),
        "ring_fused_block": lambda: fused_block_check(device, dtype, dry_run),
    }


def run(out: str, dry_run: bool = False, only: list[str] | None = None) -> dict:
    """Run every section (or ``only`` those), write the JSON atomically to ``out``, return it."""
    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    todo = sections(dry_run, device)
    unknown = set(only or []) - set(todo)
    if unknown:
        raise ValueError(f"only must name sections from {tuple(todo)}, got {sorted(unknown)}")
    result = {
        "schema_version": SCHEMA_VERSION,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "date": datetime.date.today().isoformat(),
        "dry_run": dry_run, "sections": {},
    }
    for name, fn in todo.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            value, error = fn(), None
        except Exception as err:  # a failing section is recorded and the others still run
            value, error = None, "".join(traceback.format_exception_only(type(err), err)).strip()
        result["sections"][name] = {"value": value, "error": error, "seconds": time.perf_counter() - t0}
        print(f"[gpucheck] {name}: {'ok' if error is None else error} ({time.perf_counter() - t0:.1f} s)", flush=True)
    validate(result)  # the schema the chapters read
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.gpucheck", description=__doc__)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpucheck.json"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, same code paths")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    check_output(parser, args.out)  # before an hour of measurements, not after
    with command_errors(parser):
        result = run(args.out, dry_run=args.dry_run, only=args.only)
        print(f"{'section':<24} {'status':<8} seconds")
        for name, sec in result["sections"].items():
            print(f"{name:<24} {'ok' if sec['error'] is None else 'FAILED':<8} {sec['seconds']:.1f}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
