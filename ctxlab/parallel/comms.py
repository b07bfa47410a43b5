"""The raw communication ops of the pipeline and data-parallel code, kept apart so schedules read as schedules.

Pipeline stages talk to their neighbours only: activations go forward (rank r -> r+1) and their
gradients go back (r+1 -> r). Paired ops (send one way, receive the other) are posted together with
``batch_isend_irecv`` so two neighbours that both send first cannot deadlock, as in 1F1B's steady state.

``torchrun --nproc-per-node 2 -m ctxlab.parallel.comms`` is a two-line check that a group forms.
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


def recv_forward(like: tuple, rank: int) -> Tensor:
    """Activation of the previous stage; ``like`` = (shape, dtype, device)."""
    return _exchange(None, None, like, rank - 1)


def send_forward(activation: Tensor, rank: int) -> None:
    _exchange(activation, rank + 1, None, None)


def recv_backward(like: tuple, rank: int) -> Tensor:
    """Gradient of this stage's output, from the next stage."""
    return _exchange(None, None, like, rank + 1)


def send_backward(grad: Tensor, rank: int) -> None:
    _exchange(grad, rank - 1, None, None)


def send_forward_recv_backward(activation: Tensor, like: tuple, rank: int) -> Tensor:
    """1F1B steady state: hand the next stage an activation and take back a gradient in one exchange."""
    return _exchange(activation, rank + 1, like, rank + 1)


def send_backward_recv_forward(grad: Tensor, like: tuple, rank: int) -> Tensor:
    """1F1B steady state: hand the previous stage a gradient and take its next activation in one exchange."""
    return _exchange(grad, rank - 1, like, rank - 1)


def add_from_peer_(tensor: Tensor, peer: int) -> None:
    """tensor += peer's tensor (same shape), in place on both sides: sums a tied weight's gradient."""
    other = _exchange(tensor, peer, (tensor.shape, tensor.dtype, tensor.device), peer)
    wait_for_sends()
    tensor.add_(other)


def _hello(rank: int, world_size: int) -> str:
    t = torch.tensor([float(rank)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    line = f"rank {rank} of {world_size}: all_reduce sum of ranks = {int(t.item())}"
    print(line, flush=True)
    return line


if __name__ == "__main__":
    from .launch import run_from_env

    run_from_env(_hello)
