"""Chapter 6's second experiment, over seeds: train short on position-sensitive tasks, then extend.

Per seed, a base model (the passkey model's shape) is trained at ``TRAIN_LEN`` tokens on
``tasks.chapter6_batches`` (multi-key texts and variable tracking), then fine-tuned at ``FACTOR`` x
that length once per method of ``bench.positions_retrieval.FINE_TUNED``, each set up as that
method reads the longer length. The runs are independent, so they are shared out over processes
(one thread each); every checkpoint is written atomically with a JSON of its settings beside it.
``python -m ctxlab.extend retrieval`` (or ``all``) runs it; ``python -m ctxlab.bench positions``
measures the checkpoints.
"""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import torch

from .bench.positions_retrieval import CHECKPOINT_DIR, FINE_TUNED, SEEDS, checkpoint, reading
from .config import ModelConfig
from .model import GPT
from .tasks import FACTOR, TRAIN_LEN, VOCAB_SIZE, chapter6_batches
from .train import load_model, save_model, train

# the small model of both of chapter 6's experiments (extend.py trains the passkey one with it)
BASE = dict(vocab_size=VOCAB_SIZE, d_model=64, n_layers=2, n_heads=4, max_seq_len=TRAIN_LEN)
BATCH_TOKENS = 16 * TRAIN_LEN  # tokens per step, at every length
TRAIN_STEPS, EXTEND_STEPS = 2000, 150
BASE_LR, EXTEND_LR = 3e-3, 1e-3


def data_seed(seed: int, fine_tune: bool = False) -> int:
    """Training texts' seeds, far from each other and from the evaluation's (10,000 + ...)."""
    return 1_000_000 * (seed + 1) + (500_000 if fine_tune else 0)


def train_base(out: Path, seed: int, steps: int = TRAIN_STEPS, device: str = "cpu") -> dict:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**BASE))
    t0 = time.perf_counter()
    hist = train(model, chapter6_batches(BATCH_TOKENS // TRAIN_LEN, TRAIN_LEN, data_seed(seed)), steps,
                 lr=BASE_LR, warmup=min(50, steps), clip=1.0, seed=seed, device=device)
    meta = {"what": f"base model, seed {seed}, trained at {TRAIN_LEN} on chapter6_batches", "steps": steps,
            "seed": seed, "batch": BATCH_TOKENS // TRAIN_LEN, "seq_len": TRAIN_LEN, "lr": BASE_LR,
            "final_loss": sum(hist.losses[-50:]) / len(hist.losses[-50:]),
            "seconds": round(time.perf_counter() - t0, 1), "device": device}
    save_model(checkpoint(seed, None, out), model.cpu(), meta)
    return meta


def fine_tune(out: Path, seed: int, method: str, steps: int = EXTEND_STEPS, device: str = "cpu") -> dict:
    seq_len = FACTOR * TRAIN_LEN
    model = load_model(checkpoint(seed, None, out), lambda saved: reading(saved, method, seq_len, True), device)
    t0 = time.perf_counter()
    hist = train(model.train(), chapter6_batches(BATCH_TOKENS // seq_len, seq_len, data_seed(seed, True)), steps,
                 lr=EXTEND_LR, warmup=min(20, steps), clip=1.0, seed=seed, device=device)
    meta = {"what": f"seed {seed}'s base model fine-tuned at {seq_len} with {method!r}", "steps": steps,
            "seed": seed, "method": method, "batch": BATCH_TOKENS // seq_len, "seq_len": seq_len, "lr": EXTEND_LR,
            "rope_scaling": model.cfg.rope_scaling, "rope_scale": model.cfg.rope_scale,
            "rope_base": model.cfg.rope_base, "final_loss": sum(hist.losses[-20:]) / len(hist.losses[-20:]),
            "seconds": round(time.perf_counter() - t0, 1), "device": device}
    save_model(checkpoint(seed, method, out), model.cpu(), meta)
    return meta


def _job(job: tuple) -> dict:
    torch.set_num_threads(1)  # one process per core
    kind, *args = job
    return train_base(*args) if kind == "base" else fine_tune(*args)


def run(out: Path = CHECKPOINT_DIR, seeds=SEEDS, steps: int = TRAIN_STEPS, extend_steps: int = EXTEND_STEPS,
        workers: int = 2, device: str = "cpu", log=print) -> list[dict]:
    """Every seed's base model, and each seed's fine-tunes as soon as its base model is saved,
    ``workers`` at a time."""
    tunes = {s: [("tune", out, s, m, extend_steps, device) for m in FINE_TUNED] for s in seeds}
    if device != "cpu" or workers == 1:
        return [_log(_job(j), log) for s in seeds for j in [("base", out, s, steps, device)] + tunes[s]]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        bases = [pool.apply_async(_job, (("base", out, s, steps, device),)) for s in seeds]
        pending, metas = [], []
        for s, base in zip(seeds, bases):
            metas.append(_log(base.get(), log))
            pending += [pool.apply_async(_job, (job,)) for job in tunes[s]]
        metas += [_log(p.get(), log) for p in pending]
        pool.close()
        pool.join()
        return metas


def _log(meta: dict, log) -> dict:
    log(f"{meta['what']}: loss {meta['final_loss']:.3f}, {meta['seconds']} s")
    return meta
