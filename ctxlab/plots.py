"""Matplotlib figures shared by the chapters (plots only: the numbers come from the other modules)."""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def loglog_with_slopes(ax, xs: Sequence[float], series: dict[str, Sequence[float]], ylabel: str,
                       slopes: Sequence[int] = (1, 2)) -> None:
    """Plot each series on log-log axes with dashed reference lines of the given slopes."""
    xs = np.asarray(xs, dtype=float)
    for label, ys in series.items():
        ax.loglog(xs, ys, "o-", label=label)
    anchor = max(float(np.nanmax(np.asarray(ys, dtype=float))) for ys in series.values())
    for s in slopes:
        ref = anchor * (xs / xs[-1]) ** s
        ax.loglog(xs, ref, "--", color="gray", alpha=0.6, linewidth=1)
        ax.annotate(f"T^{s}" if s != 1 else "T", (xs[0], ref[0]), color="gray", fontsize=8)
    ax.set_xlabel("context length T (tokens)")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)


def figure_png(fig, dpi: int = 80) -> bytes:
    """Render a figure to PNG bytes (for image widgets that work in the static page) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def attention_point_figure(rows: list[dict], seq_len: int, max_mib: float, max_ms: float):
    """Two bar charts (peak MiB, latency ms) of every backend at one T, on fixed axes so views compare."""
    here = [r for r in rows if r["T"] == seq_len and not r["oom"]]
    names = [r["backend"] for r in here]
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 2.6))
    a.bar(names, [r["peak_mib"] for r in here], color=["C0", "C1", "C2"][: len(here)])
    a.set_ylim(0, max_mib * 1.1)
    a.set_ylabel("peak memory (MiB)")
    b.bar(names, [r["ms"] for r in here], color=["C0", "C1", "C2"][: len(here)])
    b.set_ylim(0, max_ms * 1.1)
    b.set_ylabel("latency (ms)")
    fig.suptitle(f"attention forward + backward at T = {seq_len}")
    fig.tight_layout()
    return fig


def loss_and_grad_norm_curves(axes, runs: Sequence[tuple[str, dict]], best_loss: float | None = None,
                              max_loss: float | None = None) -> None:
    """Training loss and gradient norm (before clipping) per step, one line per (label, history) pair;
    a run that stopped on a non-finite loss simply ends early. ``max_loss`` caps the loss axis."""
    ax1, ax2 = axes
    for label, history in runs:
        ax1.plot(history["losses"], label=label)
        ax2.plot(history["grad_norms"], label=label)
    if best_loss is not None:
        ax1.axhline(best_loss, color="gray", linestyle=":", linewidth=1)
    for ax, ylabel in ((ax1, "training loss" + (" (dotted: best possible)" if best_loss else "")),
                       (ax2, "gradient norm before clipping")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    if max_loss is not None:
        ax1.set_ylim(top=max_loss)
