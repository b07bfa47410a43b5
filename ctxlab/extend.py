"""Train short, then extend: the experiment of chapter 6, as one command.

``python -m ctxlab.extend train``  trains the small base model on the passkey task at ``TRAIN_LEN``
(and an ALiBi twin); ``python -m ctxlab.extend extend`` fine-tunes it at ``FACTOR`` x that length
with no scaling (the control), PI and YaRN; ``python -m ctxlab.extend retrieval`` runs the
position-sensitive experiment over seeds (``extend_retrieval``); ``all`` runs the three.
Checkpoints hold weights and config only (a few MB), are written atomically and load with
``weights_only=True``; a JSON beside them records the command, seeds and timings. ``evaluate.passkey_accuracy`` is the measurement.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from .command import check_output, command_errors
from . import extend_retrieval as retrieval
from .extend_retrieval import BASE, BATCH_TOKENS
from .atomic import write_json
from .bench.positions_retrieval import FINE_TUNED, SEEDS
from .book_files import CHECKOUT_BOOK
from .config import ModelConfig, with_positions
from .tasks import FACTOR, TRAIN_LEN, passkey_batches
from .evaluate import passkey_accuracy
from .model import GPT
from .train import load_model, save_model, train

CHECKPOINT_DIR = CHECKOUT_BOOK / "checkpoints" / "positions"
FINETUNES = ("none", "pi", "yarn")
# Retrieval is learned abruptly, at a step that varies with the seed (and with the thread count, which
# changes rounding): at 1200 steps two of seeds 0-2 had not learned it yet; at 2400 all three had.
TRAIN_STEPS, EXTEND_STEPS = 2400, 150


def base_config(position_encoding: str = "rope") -> ModelConfig:
    return ModelConfig(**BASE, position_encoding=position_encoding)


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_base(out: Path, steps: int, seed: int, position_encoding: str = "rope", device: str = "cpu",
               eval_samples: int = 200) -> dict:
    torch.manual_seed(seed)
    model = GPT(base_config(position_encoding))
    t0 = time.perf_counter()
    hist = train(model, passkey_batches(BATCH_TOKENS // TRAIN_LEN, TRAIN_LEN, seed, loss_on="answer"), steps, lr=3e-3,
                 warmup=min(50, steps), clip=1.0,
                 seed=seed, device=device, progress=True)
    acc = passkey_accuracy(model.eval(), TRAIN_LEN, n=eval_samples)["accuracy"]
    meta = {"what": f"base model, {position_encoding}, trained at {TRAIN_LEN}", "steps": steps, "seed": seed,
            "batch": BATCH_TOKENS // TRAIN_LEN, "seq_len": TRAIN_LEN, "lr": 3e-3, "final_loss": hist.losses[-1], "passkey_1x": acc,
            "seconds": round(time.perf_counter() - t0, 1), "device": device}
    name = "base.pt" if position_encoding == "rope" else f"base_{position_encoding}.pt"
    save_model(out / name, model.cpu(), meta)
    _log(f"saved {out / name}: loss {hist.losses[-1]:.3f}, passkey@{TRAIN_LEN} {acc:.2f}, {meta['seconds']} s")
    return meta


def extend_base(out: Path, scaling: str, steps: int, seed: int, device: str = "cpu", eval_samples: int = 200) -> dict:
    seq_len = FACTOR * TRAIN_LEN
    model = load_model(out / "base.pt", lambda saved: with_positions(
        saved, seq_len, scaling, scale=None if scaling == "none" else float(FACTOR), original_len=TRAIN_LEN))
    cfg = model.cfg
    t0 = time.perf_counter()
    hist = train(model.train(), passkey_batches(BATCH_TOKENS // seq_len, seq_len, seed, loss_on="answer"), steps,
                 lr=1e-3, warmup=min(20, steps), clip=1.0,
                 seed=seed, device=device, progress=True)
    acc = passkey_accuracy(model.eval(), seq_len, n=eval_samples)["accuracy"]
    meta = {"what": f"base model fine-tuned at {seq_len} with rope_scaling={scaling!r}", "steps": steps,
            "seed": seed, "batch": BATCH_TOKENS // seq_len, "lr": 1e-3, "seq_len": seq_len, "rope_scale": cfg.rope_scale,
            "final_loss": hist.losses[-1], f"passkey_{FACTOR}x": acc,
            "seconds": round(time.perf_counter() - t0, 1), "device": device}
    save_model(out / f"finetuned_{scaling}.pt", model.cpu(), meta)
    _log(f"saved finetuned_{scaling}.pt: loss {hist.losses[-1]:.3f}, passkey@{seq_len} {acc:.2f}, "
         f"{meta['seconds']} s")
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ctxlab.extend", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["train", "extend", "retrieval", "all"])
    p.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {TRAIN_STEPS} train, {EXTEND_STEPS} extend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds of the retrieval experiment (0, 1, ...)")
    p.add_argument("--workers", type=int, default=2, help="processes for the retrieval experiment's runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-samples", type=int, default=200, help="passkey samples for the check after each run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args(argv)
    check_output(p, args.out, folder=True)
    with command_errors(p):
        if args.steps is not None and args.steps < 1:
            p.error(f"--steps must be >= 1, got {args.steps}")
        for name in ("seeds", "workers"):
            if getattr(args, name) < 1:
                p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.threads is not None:
            if args.threads < 1:
                p.error(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m ctxlab.extend " + " ".join(sys.argv[1:] if argv is None else argv)
        t0 = time.perf_counter()
        if args.stage in ("train", "all"):
            for enc in ("rope", "alibi"):
                _log(f"training the {enc} base model at {TRAIN_LEN} tokens ...")
                train_base(args.out, args.steps or TRAIN_STEPS, args.seed, enc, args.device, args.eval_samples)
        if args.stage in ("extend", "all"):
            for scaling in FINETUNES:
                _log(f"fine-tuning at {FACTOR * TRAIN_LEN} tokens with rope_scaling={scaling!r} ...")
                extend_base(args.out, scaling, args.steps or EXTEND_STEPS, args.seed + 1, args.device, args.eval_samples)
        if args.stage in ("retrieval", "all"):
            _log(f"retrieval experiment: {args.seeds} seeds, {len(FINE_TUNED)} fine-tunes each ...")
            retrieval.run(args.out / "retrieval", tuple(range(args.seeds)), args.steps or retrieval.TRAIN_STEPS,
                          args.steps or retrieval.EXTEND_STEPS, args.workers, args.device, _log)
        runs = args.out / "runs.json"
        log = json.loads(runs.read_text()) if runs.exists() else []
        log.append({"command": command, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1),
                    "workers": args.workers,
                    "torch": torch.__version__, "device": args.device})
        write_json(runs, log, indent=2)
        _log(f"done in {math.ceil(time.perf_counter() - t0)} s; command and seeds recorded in {runs}")


if __name__ == "__main__":
    main()
