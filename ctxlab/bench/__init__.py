"""Sweeps of memory and latency. ``python -m ctxlab.bench <name>`` runs one; see ``__main__``.

Shared pieces live here: a median timer and ``run_point``, which turns an out-of-memory error into
a recorded "OOM" row so that a sweep goes on.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..memory import run_point  # noqa: F401  (defined with the memory tools; every sweep uses it from here)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def times_ms(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu",
             clock: str = "wall") -> list[float]:
    """Times of ``repeats`` calls of ``fn`` in milliseconds, after ``warmup`` untimed calls.

    ``clock="process"`` counts this process's CPU time instead of wall time: on a CPU shared with other
    work it moves far less, which makes comparisons of two CPU computations reliable.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        synchronize(device)
        times.append((now() - t0) * 1e3)
    return times


def median_ms(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``fn`` in milliseconds: the figure a table reports."""
    return statistics.median(times_ms(fn, repeats, warmup, device))


def _cpu_seconds_busy() -> float | None:
    """CPU seconds the whole machine has been busy, stolen by the hypervisor included (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds_ours() -> float:
    """CPU seconds of this process and of its children that have ended (launched ranks, once joined)."""
    import resource  # POSIX only; where /proc/stat exists, so does this

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def with_other_load(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """``fn()``, and how many cores other processes (and the hypervisor) took on average while it ran:
    what lengthens a timed run beyond any model of it. None where /proc/stat is not there."""
    busy, ours, start = _cpu_seconds_busy(), _cpu_seconds_ours(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    busy_after = _cpu_seconds_busy()
    if busy is None or busy_after is None or wall <= 0:
        return result, None
    others = (busy_after - busy) - (_cpu_seconds_ours() - ours)
    return result, max(0.0, others / wall)


def relative_errors(rows: list[dict], predicted: str, measured: str, key: str = "rel_err") -> float:
    """Set ``row[key] = (predicted - measured) / measured`` on every row; return the largest magnitude."""
    if not rows:
        raise ValueError("rows must hold at least one row")
    for r in rows:
        r[key] = (r[predicted] - r[measured]) / r[measured]
    return max(abs(r[key]) for r in rows)


def report_errors(rows: list[dict], predicted: str, measured: str, columns: list[str]) -> float:
    """Print ``columns``, both figures and their relative error per row; return the largest |error|."""
    worst = relative_errors(rows, predicted, measured)
    print(format_table(rows, columns + [predicted, measured, "rel_err"]))
    print(f"largest |relative error|: {worst:.2%}")
    return worst


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table; OOM rows show 'OOM' in the measured columns."""
    widths = {c: max(len(c), *(len(_cell(r, c)) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) for c in columns)]
    lines += ["  ".join(_cell(r, c).rjust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _cell(row: dict, col: str) -> str:
    if col not in row:
        return "OOM" if row.get("oom") else "-"
    v = row[col]
    return f"{v:.3g}" if isinstance(v, float) else str(v)
