"""The case study's steps: train (resumable, data parallel when asked), evaluate by distance, time, measure.

``run`` does them in order and writes ``results.json``; a finished stage's checkpoint is reused, so an
interrupted run picks up where it stopped. With ``data_parallel`` = N > 1 every training stage runs on N
ranks (:mod:`ctxlab.parallel.ddp`: one GPU each under NCCL, CPU processes under gloo), each on its slice
of the same global batch, so the run is the single-process run up to floating-point rounding.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import write_json
from ..config import positive_int
from ..tasks import dialogue_batch
from ..evaluate import answer_accuracy
from ..latency import context_latency
from ..measure import measure_peak
from ..model import GPT
from ..parallel.ddp import DataParallel, split_batch
from ..parallel.launch import launch, rank_device
from ..train import load_model, save_model, train
from .settings import (Settings, base_config, check_device, check_settings, dialogue_batches, distance_bins,
                       extended_config, spec_of)

OUT_DIR = Path(__file__).resolve().parents[2] / "book" / "data" / "casestudy"
DP_TIMEOUT_S = 6 * 3600  # a data-parallel stage that runs longer than this is stopped and reported


@torch.no_grad()
def accuracy_by_distance(model: GPT, s: Settings, seq_len: int, n: int | None = None, seed: int = 50_000) -> list[dict]:
    """Whole-answer accuracy on ``n`` fresh dialogues per distance bin (seeded by bin and length)."""
    n = s.eval_samples if n is None else n
    device = next(model.parameters()).device
    rows = []
    for lo, hi in distance_bins(s.train_len, seq_len):
        tokens, targets, dist = dialogue_batch(n, seq_len, seed + 7919 * seq_len + lo, max_distance=hi - 1,
                                               min_distance=lo, spec=spec_of(s))
        correct = torch.cat([answer_accuracy(model, tokens[i:i + 32].to(device), targets[i:i + 32].to(device)).cpu()
                             for i in range(0, n, 32)])
        rows.append({"seq_len": seq_len, "lo": lo, "hi": hi, "n": n, "correct": int(correct.sum()),
                     "accuracy": correct.mean().item(), "mean_distance": dist.float().mean().item()})
    return rows


def _pooled(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(1, sum(r["n"] for r in rows))


def far_accuracy(rows: list[dict], train_len: int) -> float:
    """Accuracy over the bins whose facts lie at least ``train_len`` tokens back: never seen in training."""
    return _pooled([r for r in rows if r["lo"] >= train_len])


def near_accuracy(rows: list[dict], train_len: int) -> float:
    """Accuracy over the bins whose facts lie within ``train_len`` tokens: distances seen in training."""
    return _pooled([r for r in rows if r["hi"] <= train_len])


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_stage(s: Settings, out: Path, name: str, device: str, scaling: str = "none",
                data_parallel: int = 1) -> dict:
    """Train the base model (``name == 'base'``) or fine-tune it at ``factor`` x with ``scaling``, resuming from
    ``<name>.state.pt`` when a previous run was interrupted; returns the saved meta (skips work already done)."""
    final = out / f"{name}.pt"
    if final.exists():
        _log(f"{name}: found {final.name}, reusing it")
        return json.loads(final.with_suffix(".json").read_text())
    if data_parallel == 1:
        return train_stage_worker(0, 1, s, out, name, device, scaling)
    backend = "gloo" if device == "cpu" else "nccl"
    return launch(train_stage_worker, data_parallel, s, out, name, device, scaling, backend=backend, timeout=DP_TIMEOUT_S)[0]


def train_stage_worker(rank: int, world_size: int, s: Settings, out: Path, name: str, device: str, scaling: str) -> dict:
    """One rank of a training stage (the only one when ``world_size == 1``); rank 0 writes the files."""
    final, state = out / f"{name}.pt", out / f"{name}.state.pt"
    base = name == "base"
    seq_len = s.train_len if base else s.factor * s.train_len
    if base:
        torch.manual_seed(s.seed)
        model = GPT(base_config(s))
    else:
        cfg = extended_config(s, seq_len, scaling).replace(attention=s.attention, checkpoint_every=s.recompute_every)
        model = load_model(out / "base.pt", cfg)
    steps, lr, batch = (s.base_steps, s.lr, s.batch) if base else (s.finetune_steps, s.finetune_lr, s.finetune_batch)
    get_batch = dialogue_batches(s, batch, seq_len, s.seed + (0 if base else 1))
    if world_size > 1:
        device = str(rank_device())
        model = DataParallel(model.to(device))
        whole = get_batch

        def get_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            return tuple(split_batch(t, rank, world_size) for t in whole(step))
    resume = state.exists()
    if resume and rank == 0:
        done = torch.load(state, map_location="cpu", weights_only=True, mmap=True)["step"]  # mapped, not read
        _log(f"{name}: resuming from step {done} of {steps} ({state.name})")
    t0 = time.perf_counter()
    hist = train(model.train(), get_batch, steps, lr=lr, warmup=min(100 if base else 20, steps), clip=s.clip,
                 seed=s.seed, device=device, checkpoint_path=state, checkpoint_every=s.save_every, resume=resume,
                 progress=rank == 0 and sys.stderr.isatty())
    trained = getattr(model, "module", model)
    model = GPT(trained.cfg.replace(checkpoint_every=0, attention="sdpa"))  # inference-time options,
    model.load_state_dict(trained.state_dict())                           # the same weights
    model.eval()
    meta = {"what": name, "seq_len": seq_len, "steps": steps, "lr": lr, "batch": batch, "scaling": scaling,
            "attention": "sdpa" if base else s.attention, "recompute_every": 0 if base else s.recompute_every,
            "final_loss": hist.losses[-1], "clipped_fraction": hist.clipped_fraction,
            "seconds_this_run": round(time.perf_counter() - t0, 1), "resumed": resume, "seed": s.seed,
            "device": device if world_size == 1 else str(device).split(":")[0], "data_parallel": world_size}
    if rank == 0:
        save_model(final, model.cpu(), meta)
        state.unlink()
        _log(f"{name}: saved {final.name}, loss {hist.losses[-1]:.3f}, {meta['seconds_this_run']} s")
    return meta


def evaluate(s: Settings, out: Path, name: str, scaling: str, device: str) -> list[dict]:
    """Accuracy by distance of checkpoint ``name`` read at 1x, 2x, ..., factor x with ``scaling``."""
    rows, k = [], 1
    while k <= s.factor:
        seq_len = k * s.train_len
        model = load_model(out / f"{name}.pt", extended_config(s, seq_len, scaling), device)
        rows += accuracy_by_distance(model, s, seq_len)
        k *= 2
    return rows


def latency(s: Settings, out: Path, device: str) -> list[dict]:
    """Prefill and per-token decode time of the fine-tuned model at each of ``latency_lens`` tokens."""
    top = max(s.latency_lens) + s.decode_tokens
    model = load_model(out / f"finetuned_{s.scaling}.pt", extended_config(s, top), device)
    g = torch.Generator().manual_seed(s.seed + 99)
    prompt = torch.randint(spec_of(s).vocab_size, (1, max(s.latency_lens)), generator=g).to(device)
    return context_latency(model, prompt, s.latency_lens, s.decode_tokens)


def training_memory(s: Settings, device: str) -> list[dict]:
    """Peak bytes of one fine-tuning step at factor x: naive attention, keep everything vs the run's options."""
    seq_len = s.factor * s.train_len
    tokens, targets = dialogue_batches(s, s.finetune_batch, seq_len, s.seed + 5)(0)
    rows = []
    for attention, every in (("naive", 0), (s.attention, 0), (s.attention, s.recompute_every)):
        model = GPT(extended_config(s, seq_len).replace(attention=attention, checkpoint_every=every)).to(device)

        def step() -> None:
            model(tokens.to(device), targets.to(device))[1].backward()
        rows.append({"attention": attention, "recompute_every": every, "seq_len": seq_len,
                     "batch": s.finetune_batch, "peak_bytes": measure_peak(step, device)})
    return rows


def check_data_parallel(n: object, s: Settings, device: str) -> int:
    """Ranks for the training stages: each must get a whole slice of every global batch."""
    positive_int("data_parallel", n)
    if n > 1 and (s.batch % n or s.finetune_batch % n):
        raise ValueError(f"data_parallel must divide batch={s.batch} and finetune_batch={s.finetune_batch}, got {n}")
    if n > 1 and device != "cpu" and (device != "cuda" or torch.cuda.device_count() < n):
        raise ValueError(f"data_parallel={n} on GPUs needs device 'cuda' and {n} GPUs "
                         f"(found {torch.cuda.device_count()}), or device 'cpu' (gloo processes)")
    return n


def run(s: Settings, out: Path, device: str = "cpu", command: str = "python -m ctxlab.casestudy",
        data_parallel: int = 1) -> dict:
    """The whole study; returns (and writes to ``out/results.json``) every measured number."""
    check_settings(s)
    check_device(device)
    check_data_parallel(data_parallel, s, device)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}
    if settings_path.exists() and json.loads(settings_path.read_text()) != mine:
        raise ValueError(f"{out} holds a run with other settings ({settings_path}); pass --fresh or another --out")
    write_json(settings_path, mine)
    t0 = time.perf_counter()
    _log(f"training at {s.train_len} tokens ({s.base_steps} steps, {data_parallel} rank(s)) ...")
    base_meta = train_stage(s, out, "base", device, data_parallel=data_parallel)
    _log(f"evaluating the base model at 1x..{s.factor}x ...")
    before = evaluate(s, out, "base", "none", device)
    zero_shot = evaluate(s, out, "base", s.scaling, device)
    _log(f"extending with {s.scaling} and fine-tuning at {s.factor * s.train_len} tokens ...")
    ft_meta = train_stage(s, out, f"finetuned_{s.scaling}", device, s.scaling, data_parallel)
    after = evaluate(s, out, f"finetuned_{s.scaling}", s.scaling, device)
    _log("control: the same fine-tune without any position scaling ...")
    control_meta = train_stage(s, out, "finetuned_none", device, "none", data_parallel)
    control = evaluate(s, out, "finetuned_none", "none", device)
    _log("timing prefill and decode ...")
    lat = latency(s, out, device)
    results = {
        "settings": mine, "device": device, "torch": torch.__version__, "command": command,
        "data_parallel": data_parallel,
        "base": base_meta, "finetuned": ft_meta, "control": control_meta, "accuracy_before": before,
        "accuracy_zero_shot": zero_shot, "accuracy_after": after, "accuracy_control": control,
        "latency": lat, "training_memory": training_memory(s, device),
        "far_accuracy_before": far_accuracy(before, s.train_len),
        "far_accuracy_zero_shot": far_accuracy(zero_shot, s.train_len),
        "far_accuracy_after": far_accuracy(after, s.train_len),
        "far_accuracy_control": far_accuracy(control, s.train_len),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    write_json(out / "results.json", results)
    return results


def summary_line(r: dict) -> str:
    lat = r["latency"]
    return (f"far_accuracy_before={r['far_accuracy_before']:.3f} far_accuracy_after={r['far_accuracy_after']:.3f} "
            f"decode_ms_per_token_short={lat[0]['decode_ms_per_token']:.3f} "
            f"decode_ms_per_token_long={lat[-1]['decode_ms_per_token']:.3f}")
