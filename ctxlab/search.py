"""The largest size that fits: the search of the memory model, the planner and the ring budget.

Memory grows with the context, so "does T fit?" holds up to some T and fails beyond it. Doubling
finds a size that fails in log2 steps, and bisection between the last fit and that failure finds
the boundary in log2 more: a few dozen probes even when each one is a real training step.
"""
from __future__ import annotations

from typing import Callable

from .config import positive_int


def largest_fitting(fits: Callable[[int], bool], granule: int, limit: int = 2**40) -> int:
    """Largest multiple of ``granule`` for which ``fits`` holds (0 when ``granule`` itself does not).

    ``fits`` must hold up to some size and fail beyond it; if it still holds past ``limit`` the search
    stops with a ValueError instead of doubling forever."""
    positive_int("granule", granule)
    lo, hi = 0, granule
    while fits(hi):
        lo, hi = hi, 2 * hi
        if hi > limit:  # checked before the next probe, which may be a costly step
            raise ValueError(f"fits({lo}) holds and {hi} is past limit={limit}: it must fail beyond some size")
    while hi - lo > granule:
        mid = (lo + hi) // 2 // granule * granule
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
