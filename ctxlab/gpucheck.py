"""``python -m ctxlab.gpucheck``: one prepared run of the book's GPU measurements, written as JSON.

Needs only torch and numpy. Each section is independent: one that fails (or runs out of memory)
is recorded with its error and the run goes on. ``--dry-run`` runs the same code paths at tiny
sizes on the CPU, which is how the tests check it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
import traceback
from typing import Callable

import torch

from .bench import median_ms, run_point
from .bench.attention import attention_point

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "device", "torch", "cuda", "date", "dry_run", "sections")


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> dict:
    """Measured dense matmul rate (TFLOP/s): the denominator of model FLOPs utilisation."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, repeats=10, warmup=3, device=device)
    return {"n": n, "dtype": str(dtype), "ms": ms, "tflops": 2 * n**3 / (ms / 1e3) / 1e12}


def attention_sweep(device: str, dtype: torch.dtype, seq_lens: list[int], backends: list[str]) -> list[dict]:
    """Memory and latency of causal attention fwd+bwd per backend; OOM points are recorded."""
    rows = []
    for backend in backends:
        for t in seq_lens:
            rows.append(run_point(lambda: attention_point(backend, t, device=device, dtype=dtype, repeats=3),
                                  backend=backend, T=t))
            if rows[-1]["oom"]:
                break  # larger T cannot fit either
    return rows


def sections(dry_run: bool, device: str) -> dict[str, Callable[[], object]]:
    """name -> measurement; sizes shrink to a few seconds on the CPU in dry-run mode."""
    dtype = torch.float32 if dry_run else torch.bfloat16
    seqs = [128, 256] if dry_run else [2**i for i in range(10, 18)]
    from .attention import BACKENDS
    return {
        "matmul_peak": lambda: matmul_peak(device, dtype, 256 if dry_run else 8192),
        "attention": lambda: attention_sweep(device, dtype, seqs, list(BACKENDS)),
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
    write_json_atomic(out, result)
    return result


def write_json_atomic(path: str, data: dict) -> None:
    """Temporary file + rename, so an interrupted run never leaves half a JSON."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def validate(data: dict) -> None:
    """Raise ValueError when a result file lacks the fields the chapters read."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"gpucheck JSON is missing {missing}")
    for name, sec in data["sections"].items():
        if set(sec) != {"value", "error", "seconds"}:
            raise ValueError(f"section {name!r} must have value, error, seconds; got {sorted(sec)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.gpucheck", description=__doc__)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpucheck.json"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, same code paths")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    result = run(args.out, dry_run=args.dry_run, only=args.only)
    print(f"{'section':<24} {'status':<8} seconds")
    for name, sec in result["sections"].items():
        print(f"{name:<24} {'ok' if sec['error'] is None else 'FAILED':<8} {sec['seconds']:.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
