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
            ax.text(j, i, str(r), ha="center", va="center", fontsize=7, color="white")
    holders = ", ".join(f"{r}:{(r - step) % world_size}" for r in range(world_size))
    ax.set_title(f"step {step}\nrank:K/V held  {holders}", fontsize=8)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("key chunk", fontsize=8)
    ax.set_ylabel("query chunk", fontsize=8)


def ring_schedule_figure(world_size: int, causal: bool = True, zigzag: bool = True):
    """All steps of the ring side by side (see ``ring_step_grids``)."""
    grids = ring_step_grids(world_size, causal, zigzag)
    fig, axes = plt.subplots(1, world_size, figsize=(2.6 * world_size, 3.0))
    for step, (ax, grid) in enumerate(zip(np.atleast_1d(axes), grids)):
        ring_step_axes(ax, grid, step, world_size)
    fig.suptitle(f"{'causal' if causal else 'non-causal'} ring, {'zig-zag' if zigzag else 'plain'} sharding, "
                 f"P={world_size}: number = rank computing the block", fontsize=9)
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


def work_heatmaps(works: dict[str, list[list[int]]]):
    """Per-rank, per-step work (score entries computed) of real runs, one heatmap per layout, shared scale."""
    fig, axes = plt.subplots(1, len(works), figsize=(4.2 * len(works), 2.8))
    vmax = max(max(max(row) for row in w) for w in works.values())
    for ax, (title, work) in zip(np.atleast_1d(axes), works.items()):
        grid = np.asarray(work)
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax)
        for (r, s), value in np.ndenumerate(grid):
            ax.text(s, r, str(value), ha="center", va="center", fontsize=7, color="white" if value < vmax / 2 else "k")
        totals = grid.sum(axis=1)
        ax.set_yticks(range(len(grid)), [f"rank {r} ({t})" for r, t in enumerate(totals)], fontsize=7)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xlabel("ring step")
        ax.set_title(f"{title}: max/mean = {totals.max() / totals.mean():.2f}", fontsize=9)
    fig.tight_layout()
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
            ax.text((start + end) / 2 * scale, stage, str(mb), ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(events_by_stage)), [f"stage {s}" for s in range(len(events_by_stage))])
    ax.invert_yaxis()
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=["forward", "backward"],
              loc="lower right", fontsize=7)


def budget_figure(budget_mib: float, rows: list[dict], breakdown: dict, max_t: float):
    """Left: predicted largest T per technique under one budget; right: the parts of the best row's step."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"width_ratios": [3, 1]})
    names = [r["technique"] for r in rows]
    a.barh(names, [r["T"] for r in rows], color="C0")
    a.set_xlim(0, max_t * 1.1)
    a.invert_yaxis()
    a.set_xlabel("largest trainable context T (predicted)")
    for i, r in enumerate(rows):
        a.annotate(f"{r['T']:,}", (r["T"], i), va="center", fontsize=8)
    bottom = 0.0
    for i, (part, nbytes) in enumerate(breakdown.items()):
        b.bar([0], [nbytes / 2**20], bottom=bottom, color=f"C{i + 1}", label=part)
        bottom += nbytes / 2**20
    b.set_ylim(0, budget_mib * 1.05)
    b.set_xticks([])
    b.set_ylabel("MiB")
    b.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"budget {budget_mib:,.0f} MiB")
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


def recurrent_figure(res: dict):
    """Chapter 1's E2 figure from ``bench.recurrent`` results: accuracy by distance (mean over seeds) per
    model and length, and the forward time per token as T grows."""
    from .bench.recurrent import mean_accuracy

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    styles = {"lstm": ("C0", "LSTM"), "gpt": ("C1", "GPT")}
    for (model, (color, name)) in styles.items():
        for t, marker in zip(res["lengths"], "osd"):
            acc = mean_accuracy(res, model, t)
            mids = [sum(int(x) for x in b.split("-")) / 2 for b in acc]
            ax1.plot(mids, [m for m, _ in acc.values()], marker=marker, color=color, label=f"{name}, T={t}")
        times = res["ms_per_token"][model]
        ax2.plot([int(t) for t in times], list(times.values()), "o-", color=color, label=name)
    ax1.set_xscale("log")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(res["lengths"], [str(t) for t in res["lengths"]])
    ax2.minorticks_off()
    ax2.set_ylim(bottom=0)
    ax1.set_xlabel("distance from the key to the question (tokens)")
    ax1.set_ylabel("recall accuracy")
    ax1.set_ylim(-0.03, 1.03)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("sequence length T (tokens)")
    ax2.set_ylabel("forward ms per token (batch 1)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
