"""The chatbot case study, end to end: train short, lose far facts, extend, fine-tune, measure.

``python -m ctxlab.casestudy`` trains the small GPT on synthetic dialogues (:mod:`ctxlab.dialogue`) at
``train_len`` tokens with gradient clipping; measures answer accuracy by distance to the fact at 1x, 2x
and 4x that length; extends RoPE 4x with YaRN (the best scaling of chapter 6, :mod:`ctxlab.extend`) and
fine-tunes briefly at 4x with flash (SDPA) attention and activation checkpointing; measures again; then
times prefill and per-token decode with a KV cache as the context grows and records peak memory.
Results (JSON, with seed and settings) and weights-only checkpoints are written atomically to
``book/data/casestudy/``; an interrupted run resumes from its last training checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from .config import ModelConfig
from .dialogue import DialogueSpec, answer_accuracy, dialogue_batch, min_length
from .extend import load_model, save_model, with_positions
from .latency import context_latency
from .memory import measure_peak
from .model import GPT
from .positions import STATIC_SCALINGS
from .train import train

OUT_DIR = Path(__file__).resolve().parents[1] / "book" / "data" / "casestudy"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers; stored beside them so a run can be checked and repeated."""

    train_len: int = 128
    factor: int = 4
    base_steps: int = 1500
    finetune_steps: int = 200
    batch: int = 32
    finetune_batch: int = 8
    lr: float = 1e-3
    finetune_lr: float = 3e-4
    clip: float = 1.0
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    order_digits: int = 2          # a 2-digit order number: the 2-layer model learns the copy in minutes
    scaling: str = "yarn"
    attention: str = "sdpa"        # fine-tuning at 4x: flash attention, O(T) memory
    recompute_every: int = 1       # and every block recomputed in backward (activation checkpointing)
    save_every: int = 100          # training checkpoint interval (steps), for resuming
    eval_samples: int = 96         # per distance bin
    latency_lens: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    decode_tokens: int = 16
    seed: int = 0


QUICK = Settings(train_len=48, base_steps=40, finetune_steps=6, batch=8, finetune_batch=4, d_model=32, n_layers=1,
                 save_every=10, eval_samples=8, latency_lens=(48, 192), decode_tokens=4)


def check_settings(s: Settings) -> None:
    """Reject bad settings before any work, naming the field and what it accepts."""
    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {getattr(s, name)!r}")

    def posint(name: str) -> None:
        v = getattr(s, name)
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "a positive int")

    for name in ("train_len", "factor", "base_steps", "finetune_steps", "batch", "finetune_batch", "d_model",
                 "n_layers", "n_heads", "save_every", "eval_samples", "decode_tokens"):
        posint(name)
    need(s.train_len >= 2 * min_length(0) and s.train_len % 2 == 0, "train_len",
         f"an even int >= {2 * min_length(0)} (room for facts and filler)")
    need(s.factor >= 2, "factor", "an int >= 2 (the extension multiplies the context)")
    need(s.lr > 0 and s.finetune_lr > 0 and s.clip > 0, "lr", "positive, with finetune_lr and clip positive")
    need(s.scaling in STATIC_SCALINGS, "scaling", f"one of {STATIC_SCALINGS}")
    need(s.attention in ("sdpa", "chunked", "naive"), "attention", "one of ('sdpa', 'chunked', 'naive')")
    need(isinstance(s.recompute_every, int) and s.recompute_every >= 0, "recompute_every", "an int >= 0")
    need(len(s.latency_lens) >= 2 and all(isinstance(n, int) and n >= 8 for n in s.latency_lens)
         and list(s.latency_lens) == sorted(set(s.latency_lens)), "latency_lens",
         "at least two increasing ints >= 8")
    DialogueSpec(order_digits=s.order_digits)  # raises on a bad order_digits


def check_device(name: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', and only if that device is present."""
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here; use 'cpu'")
    return name


def spec_of(s: Settings) -> DialogueSpec:
    return DialogueSpec(order_digits=s.order_digits)


def base_config(s: Settings) -> ModelConfig:
    return ModelConfig(vocab_size=spec_of(s).vocab_size, d_model=s.d_model, n_layers=s.n_layers,
                       n_heads=s.n_heads, max_seq_len=s.train_len)


def extended_config(s: Settings, seq_len: int, scaling: str | None = None) -> ModelConfig:
    """The base config read at ``seq_len`` tokens with ``scaling`` (default: the run's) at scale ``factor``."""
    scaling = s.scaling if scaling is None else scaling
    return with_positions(base_config(s), seq_len, scaling, None if scaling == "none" else float(s.factor),
                          s.train_len)


def dialogue_batches(s: Settings, batch: int, seq_len: int, seed: int):
    """step -> (tokens, targets); each step's batch depends only on (seed, step), so resuming repeats nothing."""
    spec = spec_of(s)

    def get_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        tokens, targets, _ = dialogue_batch(batch, seq_len, g, spec=spec)
        return tokens, targets
    return get_batch


def distance_bins(train_len: int, seq_len: int) -> list[tuple[int, int]]:
    """Bins [0, T/2), [T/2, T), [T, 2T), [2T, 4T), ... cut to the distances a ``seq_len`` dialogue can hold."""
    top = seq_len - min_length(0)
    edges = [0, train_len // 2] + [train_len * 2 ** i for i in range(0, 8)]
    return [(a, min(b, top + 1)) for a, b in zip(edges, edges[1:]) if a <= top]


@torch.no_grad()
def accuracy_by_distance(model: GPT, s: Settings, seq_len: int, n: int | None = None, seed: int = 50_000) -> list[dict]:
    """Whole-answer accuracy on ``n`` fresh dialogues per distance bin (seeded by bin and length)."""
    n = s.eval_samples if n is None else n
    device = next(model.parameters()).device
    rows = []
    for lo, hi in distance_bins(s.train_len, seq_len):
        g = torch.Generator().manual_seed(seed + 7919 * seq_len + lo)
        tokens, targets, dist = dialogue_batch(n, seq_len, g, max_distance=hi - 1, min_distance=lo, spec=spec_of(s))
        correct = torch.cat([answer_accuracy(model, tokens[i:i + 32].to(device), targets[i:i + 32].to(device)).cpu()
                             for i in range(0, n, 32)])
        rows.append({"seq_len": seq_len, "lo": lo, "hi": hi, "n": n, "correct": int(correct.sum()),
                     "accuracy": correct.mean().item(), "mean_distance": dist.float().mean().item()})
    return rows


def far_accuracy(rows: list[dict], train_len: int) -> float:
    """Accuracy over the bins whose facts lie at least ``train_len`` tokens back: never seen in training."""
    far = [r for r in rows if r["lo"] >= train_len]
    return sum(r["correct"] for r in far) / max(1, sum(r["n"] for r in far))


def _log(msg: str) -> None:
    print(msg, flush=True)


def write_json(path: Path, data: dict) -> None:
    """Temporary file, fsync, rename: a reader never sees half a results file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train_stage(s: Settings, out: Path, name: str, device: str, scaling: str = "none") -> dict:
    """Train the base model (``name == 'base'``) or fine-tune it at ``factor`` x with ``scaling``, resuming from
    ``<name>.state.pt`` when a previous run was interrupted; returns the saved meta (skips work already done)."""
    final, state = out / f"{name}.pt", out / f"{name}.state.pt"
    if final.exists():
        _log(f"{name}: found {final.name}, reusing it")
        return json.loads(final.with_suffix(".json").read_text())
    base = name == "base"
    seq_len = s.train_len if base else s.factor * s.train_len
    if base:
        torch.manual_seed(s.seed)
        model = GPT(base_config(s))
    else:
        cfg = extended_config(s, seq_len, scaling).replace(attention=s.attention, checkpoint_every=s.recompute_every)
        model = load_model(out / "base.pt", cfg)
    steps, lr, batch = (s.base_steps, s.lr, s.batch) if base else (s.finetune_steps, s.finetune_lr, s.finetune_batch)
    resume = state.exists()
    if resume:
        _log(f"{name}: resuming from step {torch.load(state, weights_only=True)['step']} of {steps} ({state.name})")
    t0 = time.perf_counter()
    hist = train(model.train(), dialogue_batches(s, batch, seq_len, s.seed + (0 if base else 1)), steps, lr=lr,
                 warmup=min(100 if base else 20, steps), clip=s.clip, seed=s.seed, device=device,
                 checkpoint_path=state, checkpoint_every=s.save_every, resume=resume, progress=sys.stderr.isatty())
    model = model.eval()
    model.cfg = model.cfg.replace(checkpoint_every=0, attention="sdpa")  # inference-time options, same weights
    meta = {"what": name, "seq_len": seq_len, "steps": steps, "lr": lr, "batch": batch, "scaling": scaling,
            "attention": "sdpa" if base else s.attention, "recompute_every": 0 if base else s.recompute_every,
            "final_loss": hist.losses[-1], "clipped_fraction": sum(hist.clipped) / len(hist.clipped),
            "seconds_this_run": round(time.perf_counter() - t0, 1), "resumed": resume, "seed": s.seed,
            "device": device}
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


def run(s: Settings, out: Path, device: str = "cpu", command: str = "python -m ctxlab.casestudy") -> dict:
    """The whole study; returns (and writes to ``out/results.json``) every measured number."""
    check_settings(s)
    check_device(device)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}
    if settings_path.exists() and json.loads(settings_path.read_text()) != mine:
        raise ValueError(f"{out} holds a run with other settings ({settings_path}); pass --fresh or another --out")
    write_json(settings_path, mine)
    t0 = time.perf_counter()
    _log(f"training at {s.train_len} tokens ({s.base_steps} steps) ...")
    base_meta = train_stage(s, out, "base", device)
    _log(f"evaluating the base model at 1x..{s.factor}x ...")
    before = evaluate(s, out, "base", "none", device)
    zero_shot = evaluate(s, out, "base", s.scaling, device)
    _log(f"extending with {s.scaling} and fine-tuning at {s.factor * s.train_len} tokens ...")
    ft_meta = train_stage(s, out, f"finetuned_{s.scaling}", device, s.scaling)
    after = evaluate(s, out, f"finetuned_{s.scaling}", s.scaling, device)
    _log("timing prefill and decode ...")
    lat = latency(s, out, device)
    results = {
        "settings": mine, "device": device, "torch": torch.__version__, "command": command,
        "base": base_meta, "finetuned": ft_meta, "accuracy_before": before, "accuracy_zero_shot": zero_shot,
        "accuracy_after": after, "latency": lat, "training_memory": training_memory(s, device),
        "far_accuracy_before": far_accuracy(before, s.train_len),
        "far_accuracy_zero_shot": far_accuracy(zero_shot, s.train_len),
        "far_accuracy_after": far_accuracy(after, s.train_len),
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ctxlab.casestudy", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, under a minute (for tests)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default book/data/casestudy; --quick: a new temp dir)")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train-len", type=int, default=None)
    p.add_argument("--base-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--finetune-batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-samples", type=int, default=None, help="dialogues per distance bin")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 is fastest on a busy machine)")
    p.add_argument("--fresh", action="store_true", help="delete this study's files in --out and start over")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    changes = {f.name: getattr(args, f.name) for f in fields(Settings)
               if getattr(args, f.name, None) is not None}
    try:
        s = replace(s, **changes)
        if args.train_len is not None and not args.quick:
            s = replace(s, latency_lens=tuple(args.train_len * k for k in (1, 2, 4, 8, 16)))
        check_settings(s)
        check_device(args.device)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {args.threads}")
    except ValueError as err:
        p.error(str(err))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ctxlab-casestudy-")) if args.quick else OUT_DIR)
    if args.fresh and out.exists():
        for f in out.glob("*"):
            if f.suffix in (".pt", ".json"):
                f.unlink()
    command = " ".join(["python -m ctxlab.casestudy", *(sys.argv[1:] if argv is None else argv)])
    results = run(s, out, args.device, command)
    _log(f"results in {out / 'results.json'}; {results['seconds_this_run']} s")
    _log(summary_line(results))
    return results


if __name__ == "__main__":
    main()
