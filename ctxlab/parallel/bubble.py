"""Pipeline schedules as data, and their bubble: the idle time of the stages, measured or ideal.

``schedule_order`` lists one stage's operations; the same list drives the real run (``pipeline.py``),
the simulation here and the tests.

With p stages of equal time and m micro-batches, one step lasts (m + p - 1) time units of a stage and
each stage is busy m of them, so the idle share is (p - 1) / (m + p - 1) (Huang et al. 2019) for GPipe
and 1F1B alike. ``simulate`` replays a schedule's per-stage order with fixed forward/backward times and
the only dependencies that exist (F needs the previous stage's F, B needs the next stage's B);
``replay`` does the same with the durations a real run recorded, so a measured bubble splits into
what the op times alone imply and what the run lost between ops (transfers, waking up, bookkeeping).
"""
from __future__ import annotations

from typing import Callable

from ..config import positive_int
from .events import Event

SCHEDULES = ("gpipe", "1f1b")


def schedule_order(schedule: str, stage: int, n_stages: int, n_micro: int) -> list[tuple[str, int]]:
    """The ordered ("F"|"B", micro-batch) operations of one stage: the whole schedule in one list."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "gpipe":
        return [("F", i) for i in range(n_micro)] + [("B", i) for i in range(n_micro)]
    warmup = min(n_stages - stage - 1, n_micro)
    order = [("F", i) for i in range(warmup)]
    for i in range(n_micro - warmup):  # steady state: one forward, one backward
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(n_micro - warmup, n_micro)]


def bubble_theory(n_stages: int, n_micro: int) -> float:
    """(p - 1) / (m + p - 1): the idle share of a pipeline with equal stage times and free communication."""
    positive_int("n_stages", n_stages), positive_int("n_micro", n_micro)
    return (n_stages - 1) / (n_micro + n_stages - 1)


def bubble_measured(events_by_stage: list[list[Event]]) -> float:
    """1 - busy / (p x step time): step time from the first start to the last end over all stages."""
    if not events_by_stage or not all(events_by_stage):
        raise ValueError("events_by_stage must hold a non-empty event list for every stage")
    start = min(e[2] for ev in events_by_stage for e in ev)
    end = max(e[3] for ev in events_by_stage for e in ev)
    busy = sum(e[3] - e[2] for ev in events_by_stage for e in ev)
    return 1.0 - busy / (len(events_by_stage) * (end - start))


def step_time(events_by_stage: list[list[Event]]) -> float:
    return max(e[3] for ev in events_by_stage for e in ev) - min(e[2] for ev in events_by_stage for e in ev)


def simulate(schedule: str, n_stages: int, n_micro: int, t_forward: float | list[float] = 1.0,
             t_backward: float | list[float] = 2.0) -> list[list[Event]]:
    """The ideal timeline of a schedule: each op starts when its stage is free and its inputs exist.

    ``t_forward`` / ``t_backward``: one time for every stage, or one per stage (measured stages differ)."""
    t_f = [t_forward] * n_stages if isinstance(t_forward, (int, float)) else list(t_forward)
    t_b = [t_backward] * n_stages if isinstance(t_backward, (int, float)) else list(t_backward)
    if len(t_f) != n_stages or len(t_b) != n_stages or min(t_f + t_b) <= 0:
        raise ValueError(f"t_forward and t_backward must be > 0, one value or one per stage ({n_stages}), "
                         f"got {t_forward} and {t_backward}")
    return _timeline(schedule, n_stages, n_micro, lambda kind, s, i: t_f[s] if kind == "F" else t_b[s])


def replay(schedule: str, events_by_stage: list[list[Event]]) -> list[list[Event]]:
    """The schedule run again with every op's own recorded duration and nothing between ops.

    Each op starts as early as its inputs and its stage allow, so the replay never ends later than the
    run it came from: its bubble is what the op times alone imply, the rest is time lost between ops."""
    n_stages = len(events_by_stage)
    duration = {(kind, s, i): end - start for s, ev in enumerate(events_by_stage) for kind, i, start, end in ev}
    n_micro = sum(1 for kind, *_ in events_by_stage[0] if kind == "F")
    if len(duration) != 2 * n_stages * n_micro:
        raise ValueError(f"events_by_stage must hold one F and one B per micro-batch on each of {n_stages} stages")
    return _timeline(schedule, n_stages, n_micro, lambda kind, s, i: duration[(kind, s, i)])


def _timeline(schedule: str, n_stages: int, n_micro: int,
              duration: Callable[[str, int, int], float]) -> list[list[Event]]:
    orders = [schedule_order(schedule, s, n_stages, n_micro) for s in range(n_stages)]
    done: dict[tuple[str, int, int], float] = {}
    events: list[list[Event]] = [[] for _ in range(n_stages)]
    pos, free = [0] * n_stages, [0.0] * n_stages
    while any(pos[s] < len(orders[s]) for s in range(n_stages)):
        progressed = False
        for s in range(n_stages):
            if pos[s] == len(orders[s]):
                continue
            kind, i = orders[s][pos[s]]
            dep = ("F", s - 1, i) if kind == "F" else ("B", s + 1, i)
            if (kind == "F" and s == 0) or (kind == "B" and s == n_stages - 1):
                dep = None
            if dep is not None and dep not in done:
                continue
            begin = max(free[s], done.get(dep, 0.0) if dep else 0.0)
            free[s] = begin + duration(kind, s, i)
            done[(kind, s, i)] = free[s]
            events[s].append((kind, i, begin, free[s]))
            pos[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {schedule!r} deadlocks with p={n_stages}, m={n_micro}")
    return events
