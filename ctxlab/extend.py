"""Train short, then extend: the experiment of chapter 6, as one command.

``python -m ctxlab.extend train``  trains the small base model on the passkey task at ``TRAIN_LEN``
(and an ALiBi twin); ``python -m ctxlab.extend extend`` fine-tunes it at ``FACTOR`` x that length
with no scaling (the control), PI and YaRN. Checkpoints hold weights and config only (a few MB),
are written atomically and load with ``weights_only=True``; a JSON beside them records the command,
seeds and timings. ``passkey_accuracy`` is the measurement.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .atomic import write_json
from .config import ModelConfig
from .data import VOCAB_SIZE, passkey_batch, passkey_batches
from .model import GPT
from .positions import STATIC_SCALINGS
from .train import load_checkpoint, save_checkpoint, train

TRAIN_LEN, FACTOR = 128, 4
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "book" / "checkpoints" / "positions"
BASE = dict(vocab_size=VOCAB_SIZE, d_model=64, n_layers=2, n_heads=4, max_seq_len=TRAIN_LEN)
BATCH_TOKENS = 16 * TRAIN_LEN  # tokens per step, at every length
FINETUNES = ("none", "pi", "yarn")
# Retrieval is learned abruptly, at a step that varies with the seed (and with the thread count, which
# changes rounding): at 1200 steps two of seeds 0-2 had not learned it yet; at 2400 all three had.
TRAIN_STEPS, EXTEND_STEPS = 2400, 150


def base_config(position_encoding: str = "rope") -> ModelConfig:
    return ModelConfig(**BASE, position_encoding=position_encoding)


def with_positions(cfg: ModelConfig, seq_len: int, scaling: str = "none", scale: float | None = None,
                   original_len: int = TRAIN_LEN) -> ModelConfig:
    """The config that reads ``seq_len`` tokens; a static scaling defaults to s = max(1, seq_len / original_len)."""
    if scaling == "none" or cfg.position_encoding == "alibi":
        return cfg.replace(max_seq_len=seq_len)
    s = float(max(1.0, seq_len / original_len) if scale is None else scale)
    if scaling in STATIC_SCALINGS and seq_len > s * original_len:
        s = seq_len / original_len  # past the fine-tuned range: stretch further, zero-shot
    return cfg.replace(max_seq_len=seq_len, rope_scaling=scaling, rope_scale=s, rope_original_len=original_len)


def save_model(path: Path, model: GPT, meta: dict) -> None:
    """Weights and config at ``path``, ``meta`` beside it as JSON; the JSON first, so a ``.pt`` on disk
    always has its record (both writes are atomic)."""
    write_json(path.with_suffix(".json"), meta, indent=2)
    save_checkpoint(path, {"config": asdict(model.cfg), "model": model.state_dict(), "meta": meta})


def load_model(path: str | Path, cfg: ModelConfig | Callable[[ModelConfig], ModelConfig] | None = None,
               device: str = "cpu") -> GPT:
    """Weights from ``path`` in a model built from ``cfg``: the saved config by default, or a function of
    it (read from the same load). RoPE tables are not weights, so one checkpoint reads with any scaling."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; create it with `python -m ctxlab.extend train`")
    state = load_checkpoint(path)
    saved = ModelConfig(**state["config"])
    model = GPT(cfg(saved) if callable(cfg) else cfg if cfg is not None else saved)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def passkey_accuracy(model: GPT, seq_len: int, n: int = 200, seed: int = 10_000, depth=None, n_depths: int = 5,
                     batch: int = 50) -> dict:
    """All-digits-correct rate over ``n`` samples (greedy; teacher forcing reads all digits in one pass, and a
    key is right exactly when greedy decoding would be), with per-sample correctness, depth, key position and
    answer loss. With ``depth=None`` depths cycle over ``n_depths`` even steps from 0 to 1, so each is equally
    tested; ``depth="random"`` draws them uniformly."""
    if n < 1 or batch < 1 or n_depths < 2:
        raise ValueError(f"n and batch must be >= 1 and n_depths >= 2, got n={n}, batch={batch}, n_depths={n_depths}")
    device = next(model.parameters()).device
    out = {"correct": [], "depth": [], "target_depth": [], "key_pos": [], "loss": []}
    for start in range(0, n, batch):
        m = min(batch, n - start)
        d = [((start + i) % n_depths) / (n_depths - 1) for i in range(m)] if depth is None else \
            (None if depth == "random" else depth)
        b = passkey_batch(m, seq_len, seed + start, depth=d)
        logits, _ = model(b.tokens.to(device))
        answer = logits[:, b.answer_pos.to(device)].float().cpu()
        out["correct"] += (answer.argmax(-1) == b.key).all(-1).tolist()
        out["loss"] += F.cross_entropy(answer.transpose(1, 2), b.key, reduction="none").mean(-1).tolist()
        out["depth"] += b.depth.tolist()
        out["target_depth"] += list(d) if isinstance(d, list) else [d] * m
        out["key_pos"] += b.key_pos.tolist()
    out["accuracy"] = sum(out["correct"]) / n
    return out


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
        saved, seq_len, scaling, scale=None if scaling == "none" else float(FACTOR)))
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
    p.add_argument("stage", choices=["train", "extend", "all"])
    p.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {TRAIN_STEPS} train, {EXTEND_STEPS} extend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-samples", type=int, default=200, help="passkey samples for the check after each run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
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
    runs = args.out / "runs.json"
    log = json.loads(runs.read_text()) if runs.exists() else []
    log.append({"command": command, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1),
                "torch": torch.__version__, "device": args.device})
    write_json(runs, log, indent=2)
    _log(f"done in {math.ceil(time.perf_counter() - t0)} s; command and seeds recorded in {runs}")


if __name__ == "__main__":
    main()
