"""Passkey accuracy and loss by position at 1x, 2x, 4x, 8x the trained length, per position method.

Reads the checkpoints of ``python -m ctxlab.extend all``; then measures the retrieval experiment
over seeds (``positions_retrieval``: multi-key, latest value, loss by position, the temperature
ablation). Zero-shot rows use the base model with the scale set to the length (s = T / T_train);
fine-tuned rows use s = 4 up to 4x and s = 8 at 8x.
The ``none_finetuned`` row is the control: fine-tuned at 4x without any scaling.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..command import check_output, command_errors
from ..book_files import CHECKOUT_BOOK
from ..config import positive_int, with_positions
from ..tasks import FACTOR, TRAIN_LEN
from ..evaluate import passkey_accuracy
from ..train import load_model
from . import positions_retrieval as retrieval

CHECKPOINT_DIR = CHECKOUT_BOOK / "checkpoints" / "positions"  # what python -m ctxlab.extend writes

# method name -> (checkpoint, scaling, fixed scale or None for s = T / T_train)
METHODS = {
    "none": ("base.pt", "none", None),
    "pi_zero_shot": ("base.pt", "pi", None),
    "ntk_zero_shot": ("base.pt", "ntk", None),
    "yarn_zero_shot": ("base.pt", "yarn", None),
    "dynamic_ntk": ("base.pt", "dynamic_ntk", None),
    "alibi": ("base_alibi.pt", "none", None),
    "none_finetuned": ("finetuned_none.pt", "none", None),
    "pi_finetuned": ("finetuned_pi.pt", "pi", float(FACTOR)),
    "yarn_finetuned": ("finetuned_yarn.pt", "yarn", float(FACTOR)),
}
MULTIPLES = (1, 2, 4, 8)
SEGMENTS = ((0, 1), (1, 2), (2, 4), (4, 8))  # loss by position, in units of T_train


def model_for(method: str, seq_len: int, ckpt_dir: Path = CHECKPOINT_DIR, device: str = "cpu"):
    """The checkpoint of ``method`` set up to read ``seq_len`` tokens."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    file, scaling, scale = METHODS[method]
    def reading(saved):  # the saved positions undone, then set up for seq_len
        return with_positions(saved.replace(rope_scaling="none", rope_scale=1.0, rope_original_len=None),
                              seq_len, scaling, scale, original_len=TRAIN_LEN)

    return load_model(Path(ckpt_dir) / file, reading, device)


def run(methods=tuple(METHODS), multiples=MULTIPLES, samples: int = 200, loss_samples: int = 200,
        ckpt_dir: Path = CHECKPOINT_DIR, device: str = "cpu", log=print) -> dict:
    """Every (method, length): passkey accuracy with per-sample depth; and the answer loss by key position at
    the longest length (random depths)."""
    positive_int("samples", samples)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods must be among {tuple(METHODS)}, got {sorted(unknown)}")
    results = {"train_len": TRAIN_LEN, "multiples": list(multiples), "samples": samples, "passkey": {}, "loss": {}}
    for method in methods:
        results["passkey"][method] = {}
        for m in multiples:
            t0 = time.perf_counter()
            res = passkey_accuracy(model_for(method, m * TRAIN_LEN, ckpt_dir, device), m * TRAIN_LEN, n=samples)
            results["passkey"][method][str(m)] = res
            log(f"{method:>15} {m}x ({m * TRAIN_LEN:>5} tokens): passkey {res['accuracy']:.3f} "
                f"({time.perf_counter() - t0:.1f} s)")
        longest = max(multiples) * TRAIN_LEN
        res = passkey_accuracy(model_for(method, longest, ckpt_dir, device), longest, n=loss_samples, seed=20_000,
                               depth="random")
        results["loss"][method] = {"key_pos": res["key_pos"], "loss": [round(x, 4) for x in res["loss"]]}
    return results


def segment_losses(key_pos: list[int], loss: list[float], segments=SEGMENTS) -> list[float]:
    """Mean answer loss of the keys whose position lies in [a T_train, b T_train), per segment (nan if none)."""
    out = []
    for a, b in segments:
        part = [x for p, x in zip(key_pos, loss) if a * TRAIN_LEN <= p < b * TRAIN_LEN]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def depth_grid(by_length: dict, multiples: list[int], depths: list[float]) -> list[list[float]]:
    """Passkey accuracy per (depth, length) of one method's ``run`` results: a row per depth, a column per
    multiple of T_train (nan where no key sat at that depth)."""
    grid = []
    for depth in depths:
        row = []
        for m in multiples:
            cell = by_length[str(m)]
            hits = [ok for ok, d in zip(cell["correct"], cell["target_depth"]) if d == depth]
            row.append(sum(hits) / len(hits) if hits else float("nan"))
        grid.append(row)
    return grid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ctxlab.bench positions", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200, help="passkey samples per (method, length) cell")
    p.add_argument("--loss-samples", type=int, default=200, help="random-depth samples for loss by position")
    p.add_argument("--ckpt", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    p.add_argument("--retrieval-samples", type=int, default=100, help="samples per task, length and reading")
    p.add_argument("--text-samples", type=int, default=32, help="tracking texts per length for loss by position")
    p.add_argument("--seeds", type=int, default=len(retrieval.SEEDS), help="seeds of the retrieval experiment")
    p.add_argument("--workers", type=int, default=2, help="processes for the retrieval experiment")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    check_output(p, args.out)
    for name in ("seeds", "workers", "retrieval_samples", "text_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    with command_errors(p):
        torch.manual_seed(0)
        started = time.perf_counter()
        res = run(samples=args.samples, loss_samples=args.loss_samples, ckpt_dir=args.ckpt, device=args.device)
        print(f"\npasskey accuracy ({args.samples} samples per cell; T_train = {TRAIN_LEN})")
        print(f"{'method':>15} " + " ".join(f"{m}x".rjust(6) for m in MULTIPLES))
        for method, row in res["passkey"].items():
            print(f"{method:>15} " + " ".join(f"{row[str(m)]['accuracy']:6.3f}" for m in MULTIPLES))
        print(f"\nanswer loss (nats per key digit) by position of the key, at {MULTIPLES[-1]}x = "
              f"{MULTIPLES[-1] * TRAIN_LEN} tokens; the question is at the end, so early keys are far away")
        print(f"{'method':>15} " + " ".join(f"{a}-{b}x".rjust(6) for a, b in SEGMENTS))
        for method, r in res["loss"].items():
            print(f"{method:>15} " + " ".join(f"{v:6.3f}" for v in segment_losses(r["key_pos"], r["loss"])))
        acc = {k: res["passkey"][k][str(FACTOR)]["accuracy"] for k in METHODS}
        print(f"passkey_4x none={acc['none']:.3f} pi_zero_shot={acc['pi_zero_shot']:.3f} "
              f"yarn_zero_shot={acc['yarn_zero_shot']:.3f} pi_finetuned={acc['pi_finetuned']:.3f} "
              f"yarn_finetuned={acc['yarn_finetuned']:.3f}")
        t0 = time.perf_counter()
        res["retrieval"] = retrieval.run(tuple(range(args.seeds)), args.retrieval_samples, args.text_samples,
                                         args.ckpt / "retrieval", args.workers, args.device)
        res["retrieval"]["seconds"] = round(time.perf_counter() - t0, 1)
        print(retrieval.report(res["retrieval"]))
        res["seconds"] = round(time.perf_counter() - started, 1)  # the whole command
        res["command"] = "python -m ctxlab.bench positions " + " ".join(sys.argv[1:] if argv is None else argv)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res) + "\n")
            print(f"\nwrote {args.out}")
        print(retrieval.last_line(res["retrieval"], "latest"))
        print(retrieval.last_line(res["retrieval"]))
