"""The pipeline's raw communication ops, kept apart so that the schedule in ``pipeline.py`` reads as a schedule.

Pipeline stages talk to their neighbours only: activations go forward (rank r -> r+1) and their
gradients go back (r+1 -> r); ``StageLinks`` moves them for one stage's schedule. Paired ops (send
one way, receive the other) are posted together with ``batch_isend_irecv`` so two neighbours that
both send first cannot deadlock, as in 1F1B's steady state.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


_unfinished_sends: list = []  # (work, tensor): a send may complete after the sender moved on


def _exchange(send: Tensor | None, send_to: int | None, recv_like: tuple | None, recv_from: int | None) -> Tensor | None:
    """Post one send and/or one receive together; wait for the receive only, the send finishes in the background."""
    ops, received = [], None
    if send is not None:
        send = send.contiguous()
        ops.append(dist.P2POp(dist.isend, send, send_to))
    if recv_like is not None:
        shape, dtype, device = recv_like
        received = torch.empty(shape, dtype=dtype, device=device)
        ops.append(dist.P2POp(dist.irecv, received, recv_from))
    if not ops:
        return None
    works = dist.batch_isend_irecv(ops)
    if send is not None and len(works) == len(ops):  # gloo: one work per op, so the send can be left running
        _unfinished_sends.append((works.pop(0), send))
    for work in works:
        work.wait()
    return received


def wait_for_sends() -> None:
    """Block until every send posted so far has completed (end of a step: nothing may stay in flight)."""
    while _unfinished_sends:
        work, _ = _unfinished_sends.pop(0)
        work.wait()


def post_recv(like: tuple, peer: int) -> tuple:
    """Start receiving a tensor of ``like`` = (shape, dtype, device) from ``peer``; returns (work, tensor)."""
    shape, dtype, device = like
    received = torch.empty(shape, dtype=dtype, device=device)
    return dist.irecv(received, peer), received


def post_send(tensor: Tensor, peer: int) -> None:
    """Start sending ``tensor`` to ``peer``; ``wait_for_sends`` finishes it."""
    tensor = tensor.contiguous()
    _unfinished_sends.append((dist.isend(tensor, peer), tensor))


class StageLinks:
    """The activations and gradients one pipeline stage receives and sends while it walks its schedule.

    Op j of ``order`` takes its input from the previous stage (a forward) or the next (a backward),
    except on the first and last stage. Two ways to move them:

    * prefetch (gloo): op j + 1's receive is posted before op j computes. A gloo send waits until
      the receiver has posted its receive, so posting it early lets the transfer run during compute.
    * paired (NCCL, or ``prefetch=False``): a send and the next receive from the same neighbour go
      out together in one ``batch_isend_irecv``. NCCL runs a pair's sends and receives in the order
      posted, so two neighbours that both posted a receive first would wait on each other forever.
    """

    def __init__(self, order: list[tuple[str, int]], rank: int, is_first: bool, is_last: bool, like: tuple,
                 prefetch: bool | None = None):
        self.order, self.rank, self.is_first, self.is_last, self.like = order, rank, is_first, is_last, like
        self.prefetch = dist.get_backend() == "gloo" if prefetch is None else prefetch
        self.posted: dict[int, tuple] = {}  # op index -> (work or None when already received, tensor)

    def source(self, j: int) -> int | None:
        """The rank op j receives from, or None (no such op, or its input is local)."""
        if j >= len(self.order):
            return None
        if self.order[j][0] == "F":
            return None if self.is_first else self.rank - 1
        return None if self.is_last else self.rank + 1

    def take(self, j: int) -> Tensor | None:
        """The input op j needs from a neighbour (None if it needs none); waits for it."""
        src = self.source(j)
        if src is not None and j not in self.posted:
            self.posted[j] = post_recv(self.like, src)
        if self.prefetch and self.source(j + 1) is not None:
            self.posted[j + 1] = post_recv(self.like, self.source(j + 1))
        if src is None:
            return None
        work, tensor = self.posted.pop(j)
        if work is not None:
            work.wait()
        return tensor

    def give(self, j: int, tensor: Tensor, dest: int) -> None:
        """Send op j's output to ``dest``; in paired mode, with op j + 1's receive when it comes from ``dest``."""
        if not self.prefetch and self.source(j + 1) == dest and j + 1 not in self.posted:
            self.posted[j + 1] = (None, _exchange(tensor, dest, self.like, dest))
        else:
            post_send(tensor, dest)


def add_from_peer_(tensor: Tensor, peer: int) -> None:
    """tensor += peer's tensor (same shape), in place on both sides: sums a tied weight's gradient."""
    other = _exchange(tensor, peer, (tensor.shape, tensor.dtype, tensor.device), peer)
    wait_for_sends()
    tensor.add_(other)
