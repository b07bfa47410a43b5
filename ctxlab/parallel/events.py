"""The per-rank record of a pipeline step: when each forward and backward ran, on one clock for all ranks.

A bubble or a Gantt chart compares times taken by different processes, so they must share a clock.
Processes on one host do: ``time.perf_counter`` reads the system's monotonic clock, so rank 0's
reading, sent to every rank, is an origin they all measure from, exactly. Ranks on several hosts
fall back to their own reading just after a barrier, which leaves them out of line by the barrier's
skew (up to milliseconds). On a GPU every reading waits for the device first, so an op's time is the
kernels' time, not the time to queue them.
"""
from __future__ import annotations

import socket
import time

import torch
import torch.distributed as dist

from ..measure import synchronize

Event = tuple[str, int, float, float]  # kind ("F"/"B"), micro-batch, start, end (seconds from the origin)


def now(device: torch.device | str = "cpu") -> float:
    """perf_counter once the device has finished the work queued so far."""
    synchronize(device)
    return time.perf_counter()


def clock_origin() -> float:
    """A perf_counter reading that every rank of the group measures its events from (see the module doc)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return time.perf_counter()
    hosts: list = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    if len(set(hosts)) > 1:
        dist.barrier()
        return time.perf_counter()
    origin = [time.perf_counter()]
    dist.broadcast_object_list(origin, src=0)
    return origin[0]


class EventRecorder:
    """Start and end of every forward and backward of one step on one rank, from a common ``origin``."""

    def __init__(self, origin: float, device: torch.device | str = "cpu") -> None:
        self.origin, self.device = origin, device
        self.events: list[Event] = []
        if dist.is_initialized():
            dist.barrier()  # every rank starts the step together; the schedule decides who waits after that

    def now(self) -> float:
        return now(self.device)

    def record(self, kind: str, mb: int, start: float) -> None:
        """Log op ``kind`` of micro-batch ``mb`` that began at ``start`` (a ``now()`` reading) and ends now."""
        self.events.append((kind, mb, start - self.origin, self.now() - self.origin))


def peak_held(events: list[Event]) -> int:
    """Most micro-batches whose forward ran and backward has not: activations alive at once on a stage."""
    held = peak = 0
    for kind, *_ in sorted(events, key=lambda e: e[2]):
        held += 1 if kind == "F" else -1
        peak = max(peak, held)
    return peak
