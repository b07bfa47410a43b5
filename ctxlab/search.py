"""The largest size that fits: the search behind every "longest context under a budget" in the book.

Memory grows with the context, so "does T fit?" holds up to some T and fails beyond it. Doubling
finds a size that fails in log2 steps, and bisection between the last fit and that failure finds
the boundary in log2 more: a few dozen probes even when each one is a real training step.
"""
from __future__ import annotations

from typing import Callable


def largest_fitting(fits: Callable[[int], bool], granule: int, limit: int = 2**40) -> int:
    """Largest multiple of ``granule`` for which ``fits`` holds (0 when ``granule`` itself does not).

    ``fits`` must hold up to some size and fail beyond it; if it still holds past ``limit`` the search
    stops with a ValueError instead of doubling forever."""
    if not isinstance(granule, int) or isinstance(granule, bool) or granule <= 0:
        raise ValueError(f"granule must be a positive int, got {granule!r}")
    lo, hi = 0, granule
    while fits(hi):
        if hi > limit:
            raise ValueError(f"fits({hi}) still holds past limit={limit}: it must fail beyond some size")
        lo, hi = hi, 2 * hi
    while hi - lo > granule:
        mid = (lo + hi) // 2 // granule * granule
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
