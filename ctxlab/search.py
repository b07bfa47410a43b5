"""The largest size that fits: the one search of the memory model, the planner, the ring budget and the GPU check.

Memory grows with the context, so "does T fit?" holds up to some T and fails beyond it. From a first
guess the search grows by a factor until a probe fails (or shrinks until one fits), then bisects
between the last fit and the first failure: a few dozen probes even when each one is a real training
step. A good first guess (a prediction, or the answer for a neighbouring size) and a small factor
keep the number of costly probes low; a limit and a time cap keep the search from running away.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from .config import positive_int


@dataclass
class Search:
    """What a search found: the largest fitting size, why it stopped growing, and every probe made."""

    largest: int = 0
    stopped_by: str = "failure"  # "failure": a probe failed; "limit": the next size was past the limit; "time"
    probes: list[tuple[int, bool, float]] = field(default_factory=list)  # (size, fits, seconds)


def search(fits: Callable[[int], bool], granule: int, start: int | None = None, limit: int = 2**40,
           factor: float = 2.0, step: int | None = None, tolerance: float = 0.0, resolution: int = 0,
           time_cap_s: float | None = None) -> Search:
    """Largest multiple of ``granule`` for which ``fits`` holds (0 when ``granule`` itself does not).

    ``fits`` must hold up to some size and fail beyond it. The first probe is ``start`` (default
    ``granule``); from there the size grows (or shrinks) by ``factor``, or by ``step`` when given (a walk
    from a start known to be close). Growth stops at the first failure, before a probe past ``limit`` (the
    largest fitting size seen is returned, ``stopped_by="limit"``) or after a probe that took more than
    ``time_cap_s`` seconds (``"time"``: sizes beyond it would only take longer; a probe's time is the
    whole call of ``fits``). Bisection then narrows the bracket to ``granule``, or to ``resolution``
    tokens or ``tolerance`` times the size when one of those is coarser.
    """
    positive_int("granule", granule)
    positive_int("limit", limit)
    if limit < granule:
        raise ValueError(f"limit must be >= granule={granule}, got {limit}")
    if not factor > 1:
        raise ValueError(f"factor must be > 1, got {factor!r}")
    if step is not None:
        positive_int("step", step)
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    result = Search()

    def probe(size: int) -> tuple[bool, float]:
        t0 = time.perf_counter()
        ok = bool(fits(size))
        seconds = time.perf_counter() - t0
        result.probes.append((size, ok, seconds))
        return ok, seconds

    def snap(size: float, up: bool) -> int:  # to a multiple of granule; 1e-9 absorbs float rounding
        units = size / granule
        return granule * int(math.ceil(units - 1e-9) if up else math.floor(units + 1e-9))

    size = min(max(granule, snap(start or granule, up=False)), snap(limit, up=False))
    ok, seconds = probe(size)
    if ok:
        lo = size
        while True:
            if time_cap_s is not None and seconds > time_cap_s:
                result.largest, result.stopped_by = lo, "time"
                return result
            nxt = max(lo + granule, snap(lo + step if step else lo * factor, up=True))
            if nxt > limit:  # checked before the next probe, which may be a costly step
                result.largest, result.stopped_by = lo, "limit"
                return result
            ok, seconds = probe(nxt)
            if not ok:
                hi = nxt
                break
            lo = nxt
    else:
        hi = size
        while True:
            if hi <= granule:
                return result  # not even one granule fits
            lo = max(granule, min(hi - granule, snap(hi - step if step else hi / factor, up=False)))
            if probe(lo)[0]:
                break
            hi = lo
    while hi - lo > max(granule, resolution, tolerance * lo):
        mid = (lo + hi) // 2 // granule * granule
        if mid <= lo:
            break
        lo, hi = (mid, hi) if probe(mid)[0] else (lo, mid)
    result.largest = lo
    return result


def largest_fitting(fits: Callable[[int], bool], granule: int, limit: int = 2**40, **options) -> int:
    """``search(...).largest``, for callers that want only the size. Past ``limit`` it is an error: a
    size that still fits there means ``fits`` does not fail beyond some size, as it must."""
    found = search(fits, granule, limit=limit, **options)
    if found.stopped_by == "limit":
        raise ValueError(f"fits({found.largest}) holds and the next size is past limit={limit}: "
                         "it must fail beyond some size")
    return found.largest
