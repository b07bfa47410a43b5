"""Multi-key and latest-value retrieval and loss by position, per RoPE scaling, over seeds (chapter 6).

Reads the checkpoints of ``python -m ctxlab.extend retrieval`` (in ``retrieval/`` of its ``--out``):
per seed a base model trained at ``TRAIN_LEN`` and one fine-tune per method of ``FINE_TUNED`` at
``FACTOR`` x that length. Each
method reads a length T as below (``reading``); zero-shot, a static scaling takes s = T / T_train,
fine-tuned it keeps the s = FACTOR it was tuned with up to FACTOR x and stretches past it.

- ``none``: the trained RoPE; ``pi``, ``ntk``, ``yarn``, ``llama3``: the scalings of ``positions``;
- ``abf``: a new base (``ABF_BASE``), no scaling (Xiong et al. 2023 raise 10,000 to 500,000);
- the ablation, zero-shot: ``pi_temperature`` is PI with YaRN's attention factor 0.1 ln s + 1, and
  ``yarn_no_temperature`` YaRN with the factor left at 1, so the ramp's and the temperature's shares
  of YaRN's gain can be told apart.
"""
from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import torch

from ..book_files import CHECKOUT_BOOK
from ..config import ModelConfig, positive_int, with_positions
from ..evaluate import retrieval_accuracy, token_losses
from ..positions import yarn_attention_factor
from ..tasks import FACTOR, RETRIEVAL_TASKS, TRAIN_LEN, tracking_batch
from ..train import load_model

CHECKPOINT_DIR = CHECKOUT_BOOK / "checkpoints" / "positions" / "retrieval"  # under extend's --out
SEEDS = (0, 1, 2)
ABF_BASE = 500_000.0
FINE_TUNED = ("none", "pi", "ntk", "yarn", "llama3", "abf")
ABLATION = ("pi_temperature", "yarn_no_temperature")
MULTIPLES = (1, 2, 4, 8)


def reading(cfg: ModelConfig, method: str, seq_len: int, fine_tuned: bool) -> ModelConfig:
    """The config with which ``method`` reads ``seq_len`` tokens (of a model saved with any positions)."""
    if method not in FINE_TUNED + ABLATION:
        raise ValueError(f"method must be one of {FINE_TUNED + ABLATION}, got {method!r}")
    trained = cfg.replace(rope_scaling="none", rope_scale=1.0, rope_original_len=None, rope_attention_factor=None,
                          rope_base=ModelConfig.rope_base)
    if method == "abf":
        return trained.replace(max_seq_len=seq_len, rope_base=ABF_BASE)
    scaling = {"pi_temperature": "pi", "yarn_no_temperature": "yarn"}.get(method, method)
    out = with_positions(trained, seq_len, scaling, float(FACTOR) if fine_tuned else None, original_len=TRAIN_LEN)
    if method == "pi_temperature":
        out = out.replace(rope_attention_factor=yarn_attention_factor(out.rope_scale))
    if method == "yarn_no_temperature":
        out = out.replace(rope_attention_factor=1.0)
    return out


def checkpoint(seed: int, method: str | None, ckpt_dir: Path = CHECKPOINT_DIR) -> Path:
    """Where seed ``seed``'s base model (``method=None``) or its fine-tune with ``method`` lies."""
    return Path(ckpt_dir) / f"seed{seed}" / ("base.pt" if method is None else f"finetuned_{method}.pt")


BIN = 32  # tokens per bin of the loss by position
TASK_KEYS = {"multikey": 4, "latest": 1}  # keys per text: four for MK-NIAH, one variable for "latest"


def text_loss(model, seq_len: int, n: int, seed: int) -> tuple[list[float], list[int]]:
    """Answer loss (nats) of variable-tracking texts by position, in bins of ``BIN`` tokens: sums and
    counts. Two assignments (the first at the start) and four questions per T_train of text."""
    tokens, targets = tracking_batch(n, seq_len, seed, n_sets=2, n_asks=4 * seq_len // TRAIN_LEN)
    loss = token_losses(model, tokens, targets)
    scored = ~loss.isnan()
    sums = torch.where(scored, loss, 0.0).sum(0).view(-1, BIN).sum(1)
    return [round(x, 4) for x in sums.tolist()], scored.sum(0).view(-1, BIN).sum(1).tolist()


def _summary(res: dict) -> dict:
    """What the JSON keeps of ``retrieval_accuracy``: the rates, and the accuracy per depth."""
    depths = sorted(set(res["target_depth"]))
    by_depth = [[ok for ok, d in zip(res["correct"], res["target_depth"]) if d == depth] for depth in depths]
    return {"accuracy": res["accuracy"], "in_text_rate": res["in_text_rate"], "depths": depths,
            "by_depth": [sum(c) / len(c) for c in by_depth]}


def evaluate(seed: int, method: str, fine_tuned: bool, samples: int, text_samples: int,
             ckpt_dir: Path = CHECKPOINT_DIR, multiples=MULTIPLES, device: str = "cpu") -> dict:
    """One (seed, method, zero-shot or fine-tuned) row: per multiple of T_train, each task's accuracy
    (overall and per depth) and the loss by position of the tracking texts."""
    path = checkpoint(seed, method if fine_tuned else None, ckpt_dir)
    row = {}
    for m in multiples:
        seq_len = m * TRAIN_LEN
        model = load_model(path, lambda saved: reading(saved, method, seq_len, fine_tuned), device).eval()
        cell = {task: _summary(retrieval_accuracy(model, task, seq_len, n=samples, seed=10_000 + 1_000 * seed,
                                                  n_keys=TASK_KEYS[task])) for task in RETRIEVAL_TASKS}
        cell["loss_sum"], cell["loss_count"] = text_loss(model, seq_len, text_samples, 30_000 + seed)
        row[str(m)] = cell
    return row


def _job(job: tuple) -> tuple:
    torch.set_num_threads(1)  # one process per core
    return job[:3], evaluate(*job)


def run(seeds=SEEDS, samples: int = 100, text_samples: int = 32, ckpt_dir: Path = CHECKPOINT_DIR,
        workers: int = 2, device: str = "cpu") -> dict:
    """{"zero_shot" | "fine_tuned": {method: {seed: row}}} for every reading, ``workers`` processes at a time."""
    positive_int("samples", samples)
    positive_int("text_samples", text_samples)
    jobs = [(s, m, False, samples, text_samples, ckpt_dir, MULTIPLES, device) for s in seeds
            for m in FINE_TUNED + ABLATION]
    jobs += [(s, m, True, samples, text_samples, ckpt_dir, MULTIPLES, device) for s in seeds for m in FINE_TUNED]
    if device != "cpu" or workers == 1:
        done = [_job(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            done = pool.map(_job, jobs)
            pool.close()
            pool.join()
    out: dict = {"train_len": TRAIN_LEN, "multiples": list(MULTIPLES), "seeds": list(seeds), "samples": samples,
                 "text_samples": text_samples, "bin": BIN, "zero_shot": {}, "fine_tuned": {}}
    for (seed, method, tuned), row in done:
        out["fine_tuned" if tuned else "zero_shot"].setdefault(method, {})[str(seed)] = row
    return out


def seed_accuracies(results: dict, phase: str, method: str, task: str, multiple: int) -> list[float]:
    """One accuracy per seed."""
    return [row[str(multiple)][task]["accuracy"] for row in results[phase][method].values()]


def depth_accuracy(results: dict, phase: str, method: str, task: str, multiple: int) -> tuple[list, list]:
    """(depths, accuracy at each depth, mean over seeds) of the answer's needle: 0 = start of the text."""
    rows = [r[str(multiple)][task] for r in results[phase][method].values()]
    return rows[0]["depths"], [sum(col) / len(col) for col in zip(*(r["by_depth"] for r in rows))]


def binned_loss(results: dict, phase: str, method: str, multiple: int, per: int = 1) -> list[float]:
    """Mean answer loss per ``per`` bins of position, pooled over seeds (nan where no answer fell)."""
    cells = [r[str(multiple)] for r in results[phase][method].values()]
    sums = [sum(col) for col in zip(*(c["loss_sum"] for c in cells))]
    counts = [sum(col) for col in zip(*(c["loss_count"] for c in cells))]
    out = []
    for i in range(0, len(sums), per):
        n = sum(counts[i:i + per])
        out.append(sum(sums[i:i + per]) / n if n else float("nan"))
    return out


def seed_losses(results: dict, phase: str, method: str, multiple: int) -> list[float]:
    """Per seed, the mean answer loss over every position of the tracking texts at ``multiple`` x."""
    return [sum(r[str(multiple)]["loss_sum"]) / sum(r[str(multiple)]["loss_count"])
            for r in results[phase][method].values()]


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value): what the chapter prints as mean ± sd."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def readings(results: dict) -> list[tuple[str, str, str]]:
    """(label, phase, method) of every reading, in the order the report and the chapter list them."""
    zero = [(m if m == "none" else f"{m}_zero_shot", "zero_shot", m) for m in FINE_TUNED + ABLATION]
    tuned = [(f"{m}_finetuned", "fine_tuned", m) for m in FINE_TUNED]
    return [r for r in zero + tuned if r[2] in results[r[1]]]


def accuracy_table(results: dict, task: str) -> str:
    """``task``'s accuracy per reading and length, mean ± sd over seeds."""
    lines = [f"{task} accuracy, mean ± sd over {len(results['seeds'])} seeds ({results['samples']} texts each)",
             f"{'reading':>29} " + " ".join(f"{m}x".rjust(11) for m in results["multiples"])]
    for label, phase, method in readings(results):
        cells = [mean_and_spread(seed_accuracies(results, phase, method, task, m)) for m in results["multiples"]]
        lines.append(f"{label:>29} " + " ".join(f"{a:.2f} ± {s:.2f}" for a, s in cells))
    return "\n".join(lines)


def loss_table(results: dict) -> str:
    """The tracking texts' mean answer loss per reading and length (loss against the length read)."""
    lines = [f"mean answer loss over the text (nats), mean ± sd over {len(results['seeds'])} seeds",
             f"{'reading':>29} " + " ".join(f"{m}x".rjust(11) for m in results["multiples"])]
    for label, phase, method in readings(results):
        cells = [mean_and_spread(seed_losses(results, phase, method, m)) for m in results["multiples"]]
        lines.append(f"{label:>29} " + " ".join(f"{a:.3f}±{s:.3f}" for a, s in cells))
    return "\n".join(lines)


def report(results: dict) -> str:
    """Both tasks' accuracy tables, the loss against length, and the loss by position at the longest length."""
    longest = max(results["multiples"])
    lines = [accuracy_table(results, task) for task in RETRIEVAL_TASKS] + [loss_table(results)]
    lines.append(f"answer loss (nats) of the tracking texts by position at {longest}x, per T_train of position")
    lines.append(f"{'reading':>29} " + " ".join(f"{i}-{i + 1}x".rjust(6) for i in range(longest)))
    for label, phase, method in readings(results):
        losses = binned_loss(results, phase, method, longest, TRAIN_LEN // results["bin"])
        lines.append(f"{label:>29} " + " ".join(f"{v:6.3f}" for v in losses))
    return "\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:])


def last_line(results: dict, task: str = "multikey") -> str:
    """``multikey_4x none=... pi_zero_shot=... ... seeds=N``: means over seeds at FACTOR x."""
    fields = [("none", "zero_shot", "none")] + [(f"{m}_zero_shot", "zero_shot", m) for m in
                                                 ("pi", "ntk", "yarn", "llama3")]
    fields += [(f"{m}_finetuned", "fine_tuned", m) for m in ("pi", "yarn")]
    values = " ".join(f"{label}={mean_and_spread(seed_accuracies(results, phase, method, task, FACTOR))[0]:.3f}"
                      for label, phase, method in fields)
    return f"{task}_{FACTOR}x {values} seeds={len(results['seeds'])}"
