"""Sweeps of memory and latency. ``python -m ctxlab.bench <name>`` runs one; see ``__main__``.

Shared pieces live here: tables and relative errors. The timers and ``run_point`` (an out-of-memory
error becomes a recorded "OOM" row, so a sweep goes on) are instruments: ``ctxlab.measure``.
"""
from __future__ import annotations



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
