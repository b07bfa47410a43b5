"""The only communication ring attention needs: pass tensors to the next rank, take them from the previous.

Kept apart from ``ring.py`` so that the algorithm there reads as a schedule. ``start`` posts the
sends and receives and returns at once, so the caller can compute on the current block while the
next one travels (on NCCL the copies overlap with the kernels; on gloo they run in its threads).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class ExchangeTiming:
    """One exchange, in seconds: the work done between posting it and waiting for it (the time it had to
    hide in), and the time spent waiting. Blocking exchanges wait at once: their wait is the transfer.
    Host clocks: on CUDA a wait orders streams rather than blocking the host, so synchronise to time it."""

    nbytes: int
    overlapped_s: float
    wait_s: float


def require_process_group(group: dist.ProcessGroup | None = None) -> dist.ProcessGroup:
    """The group to use (the default one for None); a clear error when torch.distributed is not set up."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context parallelism needs an initialised torch.distributed process group: run it "
                           "inside a ctxlab.parallel.launch worker or under torchrun after init_process_group")
    return group if group is not None else dist.group.WORLD


class RingComm:
    """Point-to-point exchange around a ring of ranks, counting the bytes this rank sends.

    Two rings may be in flight at once when their ``first_tag`` keeps their messages apart (gloo
    matches by tag; NCCL by posting order, the same on every rank). ``blocking=True`` makes ``start``
    wait for the transfer itself, the control for measuring how much of it the overlap hides."""

    def __init__(self, group: dist.ProcessGroup | None = None, first_tag: int = 0, blocking: bool = False):
        self.group = require_process_group(group)
        self.first_tag = first_tag
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self.prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)
        self.blocking = blocking
        self.bytes_sent = 0
        self.timings: list[ExchangeTiming] = []
        self._requests: list = []
        self._posted: tuple[int, float] | None = None

    def start(self, tensors: list[Tensor]) -> list[Tensor]:
        """Post: send ``tensors`` to the next rank, receive same-shaped ones from the previous rank.

        Returns the receive buffers; they are valid only after ``wait``.
        """
        if self._requests:
            raise RuntimeError("wait() for the previous exchange before starting another")
        if self.world_size == 1:  # a ring of one: the block comes back to its owner unchanged
            return list(tensors)
        tensors = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group, tag) for tag, t in enumerate(tensors, self.first_tag)]
        ops += [dist.P2POp(dist.irecv, r, self.prev, self.group, tag) for tag, r in enumerate(received, self.first_tag)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._requests = dist.batch_isend_irecv(ops)
        self.bytes_sent += nbytes
        self._posted = (nbytes, time.perf_counter())
        if self.blocking:
            self._finish()
        return received

    def wait(self) -> None:
        """Block until the exchange posted last has arrived (at once, if it was blocking)."""
        if self._requests:
            self._finish()

    def _finish(self) -> None:
        nbytes, posted = self._posted
        began = time.perf_counter()
        for request in self._requests:
            request.wait()
        self.timings.append(ExchangeTiming(nbytes, began - posted, time.perf_counter() - began))
        self._requests, self._posted = [], None
