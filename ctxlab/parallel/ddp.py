"""Data parallelism from scratch: every rank holds the whole model and a slice of the global batch.

After each backward the gradients are averaged across ranks with all-reduce, so every replica takes
the same optimiser step as one process would on the whole batch. Gradients are grouped in buckets
(last layers first, the order backward produces them) and each bucket's all-reduce starts from a
backward hook as soon as its last gradient is ready: communication overlaps the rest of the backward.

Data parallelism multiplies throughput, not context: each rank still holds a full sequence's
activations (erratum E9). ``torchrun --nproc-per-node 2 -m ctxlab.bench.ddp`` runs a short check.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ModelConfig, check_token_batch, positive_int
from ..model import GPT
from .launch import rank_device
from .ring_comms import RingComm


def flat_all_reduce(tensors: list[Tensor], group: dist.ProcessGroup | None = None, divide_by: int = 1,
                    async_op: bool = False) -> tuple[Tensor, object]:
    """One all-reduce (a sum) for many tensors: flattened into one buffer, divided by ``divide_by`` first.
    Returns the buffer and the work handle (None unless ``async_op``); ``unflatten_into`` writes it back."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if divide_by != 1:
        flat.div_(divide_by)
    return flat, dist.all_reduce(flat, group=group, async_op=async_op)


def ring_all_reduce(x: Tensor, group: dist.ProcessGroup | None = None) -> int:
    """Sum ``x`` over the ranks in place, as a ring all-reduce does it, and return the bytes this rank sent.

    The buffer is cut into W chunks. In W-1 reduce-scatter steps each rank passes one chunk to the next
    rank and adds the one it receives, so that rank r ends with the whole sum of chunk r+1; in W-1
    all-gather steps the finished chunks go round. Each rank sends 2(W-1)/W of the buffer, whatever W:
    the bandwidth-optimal count that ``dist.all_reduce`` also reaches on large buffers (Patarasuk and
    Yuan 2009). Written by hand only so the bytes can be counted; the model uses ``dist.all_reduce``.
    """
    comm = RingComm(group)
    world, rank = comm.world_size, comm.rank
    if world == 1:
        return 0
    size = -(-x.numel() // world)  # chunk length; the buffer is padded to W equal chunks
    flat = torch.zeros(world * size, dtype=x.dtype, device=x.device)
    flat[:x.numel()] = x.reshape(-1)
    chunks = flat.view(world, size)
    for step in range(world - 1):  # reduce-scatter
        received = comm.start([chunks[(rank - step) % world]])
        comm.wait()
        chunks[(rank - step - 1) % world] += received[0]
    for step in range(world - 1):  # all-gather: pass the finished chunks on
        received = comm.start([chunks[(rank + 1 - step) % world]])
        comm.wait()
        chunks[(rank - step) % world] = received[0]
    x.copy_(flat[:x.numel()].view_as(x))
    return comm.bytes_sent


def all_reduce_bytes(numel: int, element_size: int, world_size: int) -> int:
    """Bytes each rank sends in ``ring_all_reduce``: 2(W-1) chunks of ceil(n/W) elements."""
    return 2 * (world_size - 1) * -(-numel // world_size) * element_size if world_size > 1 else 0


def unflatten_into(flat: Tensor, tensors: list[Tensor]) -> None:
    """Copy the reduced buffer of ``flat_all_reduce`` back into the tensors it was made from."""
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


class DataParallel(nn.Module):
    """Wraps a module; call ``finish_gradient_sync()`` after ``backward()`` and before ``optimizer.step()``.

    ``overlap=False`` is the control: the hooks only count, and every bucket's all-reduce starts in
    ``finish_gradient_sync``, after the backward pass, so none of it can hide behind the backward."""

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 1.0, group: dist.ProcessGroup | None = None,
                 overlap: bool = True):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised process group (use ctxlab.parallel.launch)")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be a bool, got {overlap!r}")
        self.module, self.group, self.world_size = module, group, dist.get_world_size(group)
        self.overlap = overlap
        for t in list(module.parameters()) + list(module.buffers()):  # every replica starts from the first's weights
            dist.broadcast(t.data, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        params = [p for p in module.parameters() if p.requires_grad][::-1]
        self.buckets: list[list[nn.Parameter]] = [[]]
        size, cap = 0, bucket_cap_mb * 2**20
        for p in params:
            if self.buckets[-1] and size + p.numel() * p.element_size() > cap:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self._bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._ready = [0] * len(self.buckets)
        self._in_flight: list[tuple[int, Tensor, object]] = []
        self.launch_times: list[float] = []  # perf_counter() of each bucket's all-reduce start in the current step
        for p in params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, p: Tensor) -> None:
        b = self._bucket_of[p]
        self._ready[b] += 1
        if self._ready[b] == len(self.buckets[b]) and self.overlap:  # the bucket is ready: start its all-reduce
            self._start(b)

    def _start(self, b: int) -> None:
        flat, handle = flat_all_reduce([q.grad for q in self.buckets[b]], self.group, self.world_size, async_op=True)
        self._in_flight.append((b, flat, handle))
        self.launch_times.append(time.perf_counter())

    def finish_gradient_sync(self) -> None:
        """Wait for every bucket's all-reduce and write the averaged gradients back."""
        if not self.overlap and all(ready == len(bucket) for ready, bucket in zip(self._ready, self.buckets)):
            for b in range(len(self.buckets)):
                self._start(b)
        if len(self._in_flight) != len(self.buckets):
            raise RuntimeError(f"only {len(self._in_flight)} of {len(self.buckets)} gradient buckets were reduced: "
                               "call backward() once before finish_gradient_sync()")
        for b, flat, handle in self._in_flight:
            handle.wait()
            unflatten_into(flat, [q.grad for q in self.buckets[b]])
        self._in_flight, self._ready = [], [0] * len(self.buckets)
        self.launch_times = []  # it describes one step: read it before this call


def mean_over_ranks(value: Tensor, group: dist.ProcessGroup | None = None) -> float:
    """The mean of a scalar over every rank (each rank's loss of its slice gives the global batch's)."""
    total = value.detach().clone()
    dist.all_reduce(total, group=group)
    return total.item() / dist.get_world_size(group)


def split_batch(tokens: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous slice of the global batch (dimension 0)."""
    if tokens.shape[0] % world_size:
        raise ValueError(f"batch size {tokens.shape[0]} must be divisible by world_size={world_size}")
    n = tokens.shape[0] // world_size
    return tokens[rank * n: (rank + 1) * n]


def _check_run(cfg: ModelConfig, tokens: Tensor, targets: Tensor, steps: int, world_size: int) -> None:
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    check_token_batch(tokens, targets)
    if tokens.shape[0] % world_size:
        raise ValueError(f"the global batch ({tokens.shape[0]}) must be divisible by world_size={world_size}")
    positive_int("steps", steps)


def ddp_train_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor,
                     steps: int = 5, lr: float = 1e-3, seed: int = 0, impl: str = "ours",
                     bucket_cap_mb: float = 0.25) -> dict:
    """One rank of data-parallel training with ``impl`` = "ours" (DataParallel) or "torch" (torch DDP).

    Returns the global loss of every step, the first step's averaged gradients, the step times and,
    for "ours", how many buckets were all-reduced before backward ended (overlap).
    """
    _check_run(cfg, tokens, targets, steps, world_size)
    device = rank_device()
    torch.manual_seed(seed + rank)  # different per rank on purpose: the broadcast must make replicas equal
    if impl == "ours":
        model = DataParallel(GPT(cfg).to(device), bucket_cap_mb=bucket_cap_mb)
    elif impl == "torch":
        torch.manual_seed(seed)
        model = nn.parallel.DistributedDataParallel(GPT(cfg).to(device), bucket_cap_mb=bucket_cap_mb)
    else:
        raise ValueError(f"impl must be 'ours' or 'torch', got {impl!r}")
    params = model.module
    opt = torch.optim.AdamW(params.parameters(), lr=lr)
    x, y = split_batch(tokens, rank, world_size).to(device), split_batch(targets, rank, world_size).to(device)
    losses, grads, times, overlapped = [], {}, [], 0
    for step in range(steps):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        backward_end = time.perf_counter()
        if impl == "ours":
            overlapped = sum(t < backward_end for t in model.launch_times)
            model.finish_gradient_sync()
        if step == 0:
            grads = {n: p.grad.detach().cpu().clone() for n, p in params.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(mean_over_ranks(loss))
    n_buckets = len(model.buckets) if impl == "ours" else None
    return {"losses": losses, "grads": grads, "step_s": times, "buckets": n_buckets, "overlapped": overlapped}


def ddp_compare_worker(rank: int, world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor,
                       steps: int = 5, bucket_cap_mb: float = 0.25) -> dict[str, dict]:
    """Ours and torch's DistributedDataParallel on the same data, in one process group."""
    return {impl: ddp_train_worker(rank, world_size, cfg, tokens, targets, steps, impl=impl,
                                   bucket_cap_mb=bucket_cap_mb)
            for impl in ("ours", "torch")}


def _check_worker_args(world_size: int, cfg: ModelConfig, tokens: Tensor, targets: Tensor, steps: int = 5,
                       *_: object) -> None:
    _check_run(cfg, tokens, targets, steps, world_size)


ddp_train_worker.check_args = ddp_compare_worker.check_args = _check_worker_args

