"""The only communication ring attention needs: pass tensors to the next rank, take them from the previous.

Kept apart from ``ring.py`` so that the algorithm there reads as a schedule. ``start`` posts the
sends and receives and returns at once, so the caller can compute on the current block while the
next one travels (on NCCL the copies overlap with the kernels; on gloo they run in its threads).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def require_process_group(group: dist.ProcessGroup | None = None) -> dist.ProcessGroup:
    """The group to use (the default one for None); a clear error when torch.distributed is not set up."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context parallelism needs an initialised torch.distributed process group: run it "
                           "inside a ctxlab.parallel.launch worker or under torchrun after init_process_group")
    return group if group is not None else dist.group.WORLD


class RingComm:
    """Point-to-point exchange around a ring of ranks, counting the bytes this rank sends.

    Two rings may be in flight at once when their ``first_tag`` keeps their messages apart (gloo
    matches by tag; NCCL by posting order, the same on every rank)."""

    def __init__(self, group: dist.ProcessGroup | None = None, first_tag: int = 0):
        self.group = require_process_group(group)
        self.first_tag = first_tag
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self.prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)
        self.bytes_sent = 0
        self._requests: list = []

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
        self._requests = dist.batch_isend_irecv(ops)
        self.bytes_sent += sum(t.numel() * t.element_size() for t in tensors)
        return received

    def wait(self) -> None:
        for request in self._requests:
            request.wait()
        self._requests = []
