"""Matplotlib figures shared by the chapters (plots only: the numbers come from the other modules).

Importing this module sets the book's one figure style (``BOOK_STYLE``): figures as wide as the page's
column (``COLUMN_INCHES`` at 100 dpi is 680 px, the column's width at a 1280 px window), so that they
are shown at their drawn size, with text of at least 9 pt, and log axes that label only the decades.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

COLUMN_INCHES = 6.8
BOOK_STYLE = {
    "figure.figsize": (COLUMN_INCHES, 3.2), "figure.dpi": 100, "savefig.dpi": 100,
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "figure.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
}
mpl.rcParams.update(BOOK_STYLE)


def column_figure(ncols: int = 1, height: float = 3.2, **kw):
    """``plt.subplots`` at the column's width, ``ncols`` panels side by side."""
    return plt.subplots(1, ncols, figsize=(COLUMN_INCHES, height), layout="constrained", **kw)


def context_ticks(ax, values: Sequence[float], axis: str = "x", every: int = 1) -> None:
    """A log axis of context lengths, labelled at the measured T ("512", "2K", "16K"), minor ticks bare."""
    shown = list(values)[::every]
    labels = [f"{int(v) // 1024}K" if v >= 1024 and int(v) % 1024 == 0 else f"{v:g}" for v in shown]
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    target.set_ticks(shown, labels)
    target.set_minor_formatter(NullFormatter())


def decades_only(ax) -> None:
    """Log axes readable at the column's width: over a decade or more only the decades are labelled;
    within less than a decade the ticks get short plain labels ("3", "4", "6") instead of 3x10^0 ..."""
    for axis, scale, (lo, hi) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale != "log":
            continue
        if lo > 0 and hi / lo >= 10:
            axis.set_minor_formatter(NullFormatter())
        else:
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)


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
        ax.annotate(f"$T^{s}$" if s != 1 else "$T$", (xs[0], ref[0]), color="gray", fontsize=9)
    ax.set_xlabel("context length $T$ (tokens)")
    ax.set_ylabel(ylabel)
    ax.legend()
    decades_only(ax)
    context_ticks(ax, xs, every=max(1, len(xs) // 6))


def figure_png(fig, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (for image widgets that work in the static page) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def attention_point_figure(rows: list[dict], seq_len: int, max_mib: float, max_ms: float):
    """Two bar charts (peak MiB, latency ms) of every backend at one T, on fixed axes so views compare."""
    here = [r for r in rows if r["T"] == seq_len and not r["oom"]]
    names = [r["backend"] for r in here]
    fig, (a, b) = column_figure(2, 2.8)
    # fixed axes so that the views compare; each bar carries its value, so a short one still reads
    for ax, key, top, label in ((a, "peak_mib", max_mib, "peak memory (MiB)"), (b, "ms", max_ms, "latency (ms)")):
        bars = ax.bar(names, [r[key] for r in here], color=["C0", "C1", "C2"][: len(here)])
        ax.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if v >= 10 else f"{v:.2g}", fontsize=9)
        ax.set_ylim(0, top * 1.15)
        ax.set_ylabel(label)
    fig.suptitle(f"attention forward + backward at $T$ = {seq_len}")
    return fig


def ring_step_grids(world_size: int, causal: bool = True, zigzag: bool = True) -> list[np.ndarray]:
    """For each ring step, the global score matrix (in chunks of T/2P tokens): the rank that computes each
    block at that step, -2 where an earlier step did, -1 where nothing ever does (masked). Read off
    ``ring.ring_schedule``, the schedule the autograd function runs."""
    from .parallel.ring import ring_schedule
    from .parallel.sharding import shard_positions

    n = 2 * world_size  # two chunks per rank: zig-zag's granularity, and half a block for plain sharding
    grids, done = [], np.zeros((n, n), dtype=bool)
    schedule = ring_schedule(world_size, 2, causal, zigzag)
    for step in range(world_size):
        grid = np.full((n, n), -1)
        grid[done] = -2
        for row in schedule:
            blk = row[step]
            if blk is None:
                continue
            qp = shard_positions(n, blk.rank, world_size, zigzag)[blk.q0:blk.q1].tolist()
            kp = shard_positions(n, blk.kv_rank, world_size, zigzag)[blk.k0:blk.k1].tolist()
            for i in qp:
                for j in kp:
                    if not blk.masked or j <= i:
                        grid[i, j] = blk.rank
        done |= grid >= 0
        grids.append(grid)
    return grids


def ring_step_axes(ax, grid: np.ndarray, step: int, world_size: int) -> None:
    """One step of the ring: blocks coloured by the rank computing them now, grey = computed earlier."""
    from matplotlib.colors import ListedColormap

    colours = ["0.85", "white"] + [plt.cm.tab10(r % 10) for r in range(world_size)]  # done earlier, not now
    ax.imshow(grid + 2, cmap=ListedColormap(colours), vmin=0, vmax=world_size + 1)
    for (i, j), r in np.ndenumerate(grid):
        if r >= 0:
            ax.text(j, i, str(r), ha="center", va="center", fontsize=9, color="white")
    holders = ", ".join(f"{r}:{(r - step) % world_size}" for r in range(world_size))
    ax.set_title(f"step {step}\nrank:K/V held  {holders}", fontsize=9)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.grid(False)
    ax.set_xlabel("key chunk")
    ax.set_ylabel("query chunk")


def ring_schedule_figure(world_size: int, causal: bool = True, zigzag: bool = True):
    """All steps of the ring side by side (see ``ring_step_grids``)."""
    grids = ring_step_grids(world_size, causal, zigzag)
    ncols = min(world_size, 2)
    nrows = -(-world_size // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_INCHES, 3.4 * nrows), squeeze=False, layout="constrained")
    for step, (ax, grid) in enumerate(zip(axes.flat, grids)):
        ring_step_axes(ax, grid, step, world_size)
    for ax in list(axes.flat)[world_size:]:
        ax.axis("off")
    fig.suptitle(f"{'causal' if causal else 'non-causal'} ring, {'zig-zag' if zigzag else 'plain'} sharding, "
                 f"P={world_size}: number = rank computing the block")
    return fig


def frequency_figure(inv_freq_by_name: dict[str, "np.ndarray"], original, title: str = ""):
    """Each scaling's inverse frequencies per channel pair, divided by the original ones (log scale)."""
    original = np.asarray(original, dtype=float)
    fig, ax = column_figure(1, 3.2)
    for i, (name, inv) in enumerate(inv_freq_by_name.items()):
        ax.plot(np.arange(len(original)), np.asarray(inv, dtype=float) / original, "o-", label=name, color=f"C{i}")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("channel pair $i$ (fast $\\to$ slow)")
    ax.set_ylabel("$\\theta'_i / \\theta_i$")
    ax.set_title(title)
    ax.legend()
    return fig


def work_heatmaps(works: dict[str, list[list[int]]]):
    """Per-rank, per-step work (score entries computed) of real runs, one heatmap per layout, shared scale."""
    fig, axes = plt.subplots(len(works), 1, figsize=(COLUMN_INCHES, 2.4 * len(works)), squeeze=False,
                             layout="constrained")
    vmax = max(max(max(row) for row in w) for w in works.values())
    for ax, (title, work) in zip(axes.flat, works.items()):
        grid = np.asarray(work)
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (r, s), value in np.ndenumerate(grid):
            ax.text(s, r, str(value), ha="center", va="center", fontsize=9, color="white" if value < vmax / 2 else "k")
        totals = grid.sum(axis=1)
        ax.set_yticks(range(len(grid)), [f"rank {r} ({t})" for r, t in enumerate(totals)])
        ax.set_xticks(range(grid.shape[1]))
        ax.grid(False)
        ax.set_xlabel("ring step")
        ax.set_title(f"{title}: max/mean = {totals.max() / totals.mean():.2f}")
    return fig


def pipeline_gantt(ax, events_by_stage: list, title: str, scale: float = 1e3, unit: str = "ms") -> None:
    """One row per stage, a bar per forward (blue) and backward (orange) labelled with its micro-batch;
    time runs from the step's first start."""
    colors = {"F": "C0", "B": "C1"}
    first = min(e[2] for events in events_by_stage for e in events)
    for stage, events in enumerate(events_by_stage):
        for kind, mb, start, end in ((k, i, a - first, b - first) for k, i, a, b in events):
            ax.broken_barh([(start * scale, (end - start) * scale)], (stage - 0.4, 0.8), color=colors[kind],
                           edgecolor="white", linewidth=0.5)
            ax.text((start + end) / 2 * scale, stage, str(mb), ha="center", va="center", fontsize=9, color="white")
    ax.set_yticks(range(len(events_by_stage)), [f"stage {s}" for s in range(len(events_by_stage))])
    ax.invert_yaxis()
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title)
    ax.grid(False)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=["forward", "backward"],
              loc="lower right")


def budget_figure(budget_mib: float, rows: list[dict], breakdown: dict, max_t: float):
    """Left: predicted largest T per technique under one budget; right: the parts of the best row's step."""
    fig, (a, b) = column_figure(2, 3.0, gridspec_kw={"width_ratios": [3, 1]})
    names = [r["technique"] for r in rows]
    a.barh(names, [r["T"] for r in rows], color="C0")
    a.set_xlim(0, max_t * 1.1)
    a.invert_yaxis()
    a.set_xlabel("largest trainable context T (predicted)")
    for i, r in enumerate(rows):
        a.annotate(f" {r['T']:,}", (r["T"], i), va="center", fontsize=9)
    bottom = 0.0
    for i, (part, nbytes) in enumerate(breakdown.items()):
        b.bar([0], [nbytes / 2**20], bottom=bottom, color=f"C{i + 1}", label=part)
        bottom += nbytes / 2**20
    b.set_ylim(0, budget_mib * 1.05)
    b.set_xticks([])
    b.set_ylabel("MiB")
    b.legend(loc="upper right", fontsize=9)
    fig.suptitle(f"budget {budget_mib:,.0f} MiB")
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
        decades_only(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
    if max_loss is not None:
        ax1.set_ylim(top=max_loss)
def accuracy_heatmaps(grids: dict[str, "np.ndarray"], lengths: Sequence[int], depths: Sequence[float],
                      ncols: int = 3):
    """One heatmap (rows: depth of the key, columns: context length) of passkey accuracy per method."""
    n = len(grids)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_INCHES, 2.4 * nrows), squeeze=False, layout="constrained")
    for ax, (name, grid) in zip(axes.flat, grids.items()):
        ax.imshow(np.asarray(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
        for (r, c), v in np.ndenumerate(np.asarray(grid)):
            ax.text(c, r, f"{v:.2f}".removeprefix("0"), ha="center", va="center", fontsize=9,
                    color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(lengths)), [str(t) for t in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
        ax.grid(False)
        ax.set_title(name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("context length (tokens)")
    fig.supylabel("depth of the key")
    return fig


def recurrent_figure(res: dict):
    """Chapter 1's E2 figure from ``bench.recurrent`` results: accuracy by distance (mean over seeds) per
    model and length, and the forward time per token as T grows."""
    from .bench.recurrent import mean_accuracy

    fig, (ax1, ax2) = column_figure(2, 3.4)
    styles = {"lstm": ("C0", "LSTM"), "gpt": ("C1", "GPT")}
    for (model, (color, name)) in styles.items():
        for t, marker in zip(res["lengths"], "osd"):
            acc = mean_accuracy(res, model, t)
            mids = [sum(int(x) for x in b.split("-")) / 2 for b in acc]
            ax1.plot(mids, [m for m, _ in acc.values()], marker=marker, color=color, label=f"{name}, T={t}")
        times = res["ms_per_token"][model]
        ax2.plot([int(t) for t in times], list(times.values()), "o-", color=color, label=name)
    ax1.set_xscale("log")
    decades_only(ax1)
    context_ticks(ax2, res["lengths"])
    ax2.set_ylim(bottom=0)
    ax1.set_xlabel("distance from the key to the question (tokens)")
    ax1.set_ylabel("recall accuracy")
    ax1.set_ylim(-0.03, 1.03)
    ax1.legend()
    ax2.set_xlabel("sequence length $T$ (tokens)")
    ax2.set_ylabel("forward ms per token (batch 1)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    return fig
