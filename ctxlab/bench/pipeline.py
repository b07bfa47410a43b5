"""GPipe and 1F1B run for real on p ranks: step time, bubble measured from the recorded events vs theory.

``python -m ctxlab.bench pipeline --stages 2 --microbatches 8``. One launch runs every schedule and
micro-batch count; the first step of each is a warm-up and the figures are medians over the others,
timed with Python's garbage collector paused (as ``timeit`` does). The measured bubble exceeds
(p-1)/(m+p-1) by what the theory leaves out, in three parts read off the same steps:
``bubble_stages`` replays the schedule with each stage's median op times (stages of unequal speed),
``bubble_ops`` with every op's own time (ops that vary within a step), and the measured bubble adds
what was lost between ops (transfers, waking up, bookkeeping).
The last line is ``bubble_measured=<1F1B> bubble_theory=<(p-1)/(m+p-1)>``.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from ..command import command_errors
from ..config import ModelConfig, positive_int, reference_config
from ..parallel.bubble import SCHEDULES, bubble_measured, bubble_theory, replay, simulate, step_time
from ..parallel.events import peak_held
from ..parallel.launch import launch
from ..measure import bytes_alive_after
from ..model import GPT
from ..parallel.pipeline import Stage, pipeline_worker, stage_bounds
from . import format_table


def sweep_worker(rank: int, world_size: int, cfg: ModelConfig, micro_batch: int, seq_len: int,
                 micro_counts: list[int], steps: int, measure_memory: bool = False) -> list[dict]:
    """Every (schedule, m) on this stage, in one process group; returns this stage's recorded runs."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for m in micro_counts:
        tokens = torch.randint(0, cfg.vocab_size, (m * micro_batch, seq_len), generator=gen)
        for schedule in SCHEDULES:
            gc.collect()
            gc.disable()  # a collection inside a timed op would be charged to the pipeline
            try:
                out = pipeline_worker(rank, world_size, cfg, tokens, tokens.roll(-1, 1), m, schedule, steps=steps,
                                      measure_memory=measure_memory)
            finally:
                gc.enable()
            rows.append({"schedule": schedule, "m": m, "runs": out["runs"], "peak_bytes": out["peak_bytes"]})
    return rows


def stage_times(events_by_stage: list[list]) -> tuple[list[float], list[float]]:
    """Median forward and backward time of each stage in one step."""
    med = lambda ev, kind: statistics.median(e[3] - e[2] for e in ev if e[0] == kind)  # noqa: E731
    return [med(ev, "F") for ev in events_by_stage], [med(ev, "B") for ev in events_by_stage]


def stage_costs(cfg: ModelConfig, n_stages: int = 2, micro_batch: int = 2, seq_len: int = 128,
                repeats: int = 10, device: str = "cpu") -> list[dict]:
    """Median forward and backward ms of each stage's ops, run in turn in this process: the balance of the
    split itself, apart from the speed of the core each rank lands on and from communication."""
    from ..model import GPT
    from ..parallel.pipeline import Stage, microbatch_loss
    from ..measure import synchronize

    torch.manual_seed(0)
    stages = [Stage(GPT(cfg), s, n_stages).to(device) for s in range(n_stages)]
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    inputs = [tokens]
    with torch.no_grad():
        for stage in stages[:-1]:
            inputs.append(stage(inputs[-1]))
    grad = torch.ones(micro_batch, seq_len, cfg.d_model, device=device)
    times: list[list[tuple[float, float]]] = [[] for _ in stages]
    for rep in range(repeats + 1):  # the first round warms up
        for s, (stage, inp) in enumerate(zip(stages, inputs)):
            inp = inp if stage.is_first else inp.detach().requires_grad_()
            synchronize(device)
            t0 = time.perf_counter()
            y = stage(inp)
            y = microbatch_loss(y, tokens.roll(-1, 1), tokens.numel()) if stage.is_last else y
            synchronize(device)
            t1 = time.perf_counter()
            torch.autograd.backward(y, None if stage.is_last else grad)
            synchronize(device)
            if rep:
                times[s].append((t1 - t0, time.perf_counter() - t1))
    return [{"stage": s, "forward_ms": statistics.median(f for f, _ in t) * 1e3,
             "backward_ms": statistics.median(b for _, b in t) * 1e3} for s, t in enumerate(times)]


def summarize(per_rank: list[list[dict]]) -> list[dict]:
    """One row per (schedule, m), medians over the timed steps: step time; the formula (m + p - 1)(t_F + t_B)
    with the slowest stage's op times of the same step, and its relative error; the bubble measured (and
    its quartiles over the steps), replayed with each op's time, with each stage's median times, in theory."""
    rows = []
    for j, first in enumerate(per_rank[0]):
        runs = [r[j]["runs"] for r in per_rank]
        timed = range(1, len(runs[0])) if len(runs[0]) > 1 else range(1)
        steps = [[stage_runs[k] for stage_runs in runs] for k in timed]
        p, m = len(per_rank), first["m"]
        formula, sched = [], []
        for s in steps:
            t_f, t_b = stage_times(s)
            formula.append((m + p - 1) * (max(t_f) + max(t_b)))
            sched.append(bubble_measured(simulate(first["schedule"], p, m, t_f, t_b)))
        bubbles = [bubble_measured(s) for s in steps]
        quartiles = statistics.quantiles(bubbles, n=4) if len(bubbles) > 1 else [bubbles[0]] * 3
        rows.append({"schedule": first["schedule"], "m": m, "p": p,
                     "step_ms": statistics.median(step_time(s) for s in steps) * 1e3,
                     "formula_ms": statistics.median(formula) * 1e3,
                     "formula_err": statistics.median(f / step_time(s) - 1 for f, s in zip(formula, steps)),
                     "bubble": statistics.median(bubbles),
                     "bubble_q1": quartiles[0], "bubble_q3": quartiles[2],
                     "bubble_ops": statistics.median(bubble_measured(replay(first["schedule"], s)) for s in steps),
                     "bubble_stages": statistics.median(sched),
                     "theory": bubble_theory(p, m),
                     "held": [peak_held(stage_runs[-1]) for stage_runs in runs],
                     "peak_mib": [r[j]["peak_bytes"] / 2**20 if r[j]["peak_bytes"] is not None else None
                                  for r in per_rank],
                     "events": steps[-1]})
    return rows


def run(stages: int = 2, micro_counts: tuple[int, ...] = (8,), steps: int = 3, cfg: ModelConfig | None = None,
        micro_batch: int = 2, seq_len: int = 128, measure_memory: bool = False, timeout: float = 600) -> list[dict]:
    """Launch ``stages`` ranks once and run every schedule at every micro-batch count."""
    cfg = cfg or reference_config()
    stage_bounds(cfg.n_layers, stages)
    if not micro_counts or any(not isinstance(m, int) or m < 1 for m in micro_counts):
        raise ValueError(f"micro_counts must be ints >= 1, got {micro_counts!r}")
    positive_int("steps", steps)
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len must be <= cfg.max_seq_len={cfg.max_seq_len}, got {seq_len}")
    per_rank = launch(sweep_worker, stages, cfg, micro_batch, seq_len, list(micro_counts), steps, measure_memory,
                      timeout=timeout)
    return summarize(per_rank)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench pipeline", description=__doc__)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=21, help="steps per schedule; the first is a warm-up")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch")
    args = parser.parse_args(argv)
    with command_errors(parser):
        cfg = reference_config()
        rows = run(args.stages, (args.microbatches,), args.steps, cfg, args.micro_batch, args.seq_len)
        print(f"reference GPT ({cfg.n_layers} layers, d={cfg.d_model}) split in {args.stages} stages "
              f"{stage_bounds(cfg.n_layers, args.stages)}, micro-batch {args.micro_batch} x {args.seq_len} tokens")
        for r in rows:
            r["held"] = "/".join(map(str, r["held"]))
        print(format_table(rows, ["schedule", "p", "m", "step_ms", "formula_ms", "formula_err", "bubble", "bubble_q1",
                                  "bubble_q3", "bubble_ops", "bubble_stages", "theory", "held"]))
        one_f_one_b = next(r for r in rows if r["schedule"] == "1f1b")
        print(f"medians over {args.steps - 1} steps; bubble_q1/q3: quartiles of the measured bubble over those steps")
        print("formula = (m + p - 1)(t_F + t_B), slowest stage; bubble_ops / bubble_stages = the schedule replayed")
        print("with each op's own time / each stage's median op times, nothing between ops; held = peak micro-batches")
        print("of activations per stage; last line: the 1F1B run")
        print(f"bubble_measured={one_f_one_b['bubble']:.4f} bubble_theory={one_f_one_b['theory']:.4f}")


def saved_per_stage(cfg: ModelConfig, stages: int = 2, micro_batch: int = 2, seq_len: int = 128,
                    micro_batches: int = 8) -> dict:
    """What 1F1B's first stage keeps for backward at its peak, beside one process: the micro-batches it
    holds at once (from the schedule the ranks walk), the bytes one micro-batch's forward through that
    stage leaves saved, and the bytes one micro-batch's forward through the whole model leaves saved."""
    torch.manual_seed(0)
    model = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len)))
    tokens = torch.randint(cfg.vocab_size, (micro_batch, seq_len), generator=torch.Generator().manual_seed(1))
    first = Stage(model, 0, stages)
    return {"held": [peak_held(e) for e in simulate("1f1b", stages, micro_batches)],
            "stage_bytes": bytes_alive_after(lambda: first(tokens)),
            "whole_bytes": bytes_alive_after(lambda: model(tokens)[0])}
