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


def frequency_figure(inv_freq_by_name: dict[str, "np.ndarray"], original, title: str = ""):
    """Each scaling's inverse frequencies per channel pair, divided by the original ones (log scale)."""
    original = np.asarray(original, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for i, (name, inv) in enumerate(inv_freq_by_name.items()):
        ax.plot(np.arange(len(original)), np.asarray(inv, dtype=float) / original, "o-", label=name, color=f"C{i}")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("channel pair i (fast -> slow)")
    ax.set_ylabel("theta'_i / theta_i")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_heatmaps(grids: dict[str, "np.ndarray"], lengths: Sequence[int], depths: Sequence[float],
                      ncols: int = 3):
    """One heatmap (rows: depth of the key, columns: context length) of passkey accuracy per method."""
    n = len(grids)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, (name, grid) in zip(axes.flat, grids.items()):
        ax.imshow(np.asarray(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
        for (r, c), v in np.ndenumerate(np.asarray(grid)):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(lengths)), [str(t) for t in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("context length (tokens)")
    fig.supylabel("depth of the key")
    fig.tight_layout()
    return fig
