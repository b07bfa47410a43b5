"""The instruments: peak memory (the CUDA allocator's counter on GPUs, a tracker of live tensor storage
on CPU), timers with the one device ``synchronize``, and the out-of-memory handling of a sweep point.

The CPU tracker sees every tensor that an ATen operator returns (activations, saved tensors,
gradients, optimiser states created inside ``fn``) and when its storage is freed. Scratch buffers
inside a fused kernel are invisible to it, as they are to a reader of ``torch.cuda.memory_allocated``
between kernels; process RSS sits a roughly constant amount above (allocator caches, libraries).
"""
from __future__ import annotations

import gc
import os
import statistics
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorageTracker(TorchDispatchMode):
    """Counts bytes of tensor storage created while active and still alive; remembers the peak."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        super().__init__()
        if budget_bytes is not None and (not isinstance(budget_bytes, int) or budget_bytes <= 0):
            raise ValueError(f"budget_bytes must be None or a positive int, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)
        if self.budget_bytes is not None and self.live > self.budget_bytes:
            # the CPU twin of a GPU running out of memory: sweeps record the point and go on
            raise MemoryError(f"tracked memory {self.live:,} bytes exceeds the budget of {self.budget_bytes:,} bytes")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output that shares storage with an input is a view or an in-place result, not an allocation
        # (counting it would charge a view of a parameter, e.g. a weight's transpose, as new memory)
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (t.device.type == "meta" or id(t.untyped_storage()) not in inputs):
                self._track(t)
        return out


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside get ``dtype`` parameters. Fake tensors cannot be converted after they are
    made (``.to`` swaps storages), so a model traced in bf16 is built in bf16."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def bytes_alive_after(fn: Callable[[], Any]) -> int:
    """Bytes of the storages ``fn()`` made that are still alive when it returns, its result kept: after
    a forward pass, the activations autograd saved for backward (and the output)."""
    tracker = LiveStorageTracker()
    with tracker:
        result = fn()
        alive = tracker.live
    del result
    return alive


def measure_peak(fn: Callable[[], Any], device: torch.device | str | None = None,
                 existing: Iterable[torch.Tensor] = (), budget_bytes: int | None = None) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it started.

    ``device`` defaults to CUDA when available. On CUDA this is ``max_memory_allocated`` minus the
    starting allocation; on CPU it is the peak of :class:`LiveStorageTracker`, which counts a storage
    the first time an operator returns it as new memory. Views and in-place results of tensors made
    before ``fn`` are not allocations and are not counted; ``existing`` (e.g. parameters and optimiser
    states) marks storages that must never be counted, whatever operator hands them back.
    With ``budget_bytes`` on CPU, going over the budget raises ``MemoryError``, as a GPU would.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device.type!r}")
    tracker = LiveStorageTracker(budget_bytes)
    tracker._seen.update(id(t.untyped_storage()) for t in existing)
    with tracker:
        fn()
    return tracker.peak


def is_out_of_memory(err: BaseException) -> bool:
    """True for the errors a device raises when an allocation does not fit."""
    return isinstance(err, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else RuntimeError) \
        or "out of memory" in str(err).lower()


def free_device_memory() -> None:
    """Drop cached blocks after an out-of-memory point so the next point starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_point(measure: Callable[[], dict], **labels: Any) -> dict:
    """Run one sweep point; an out-of-memory error becomes ``{"oom": True}`` and the sweep continues."""
    try:
        row = {**labels, **measure(), "oom": False}
    except (RuntimeError, MemoryError) as err:
        if not (isinstance(err, MemoryError) or is_out_of_memory(err)):
            raise
        row = {**labels, "oom": True}
    free_device_memory()
    return row


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work, so that a clock read after it has seen the work end."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def times_ms(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu",
             clock: str = "wall") -> list[float]:
    """Times of ``repeats`` calls of ``fn`` in milliseconds, after ``warmup`` untimed calls.

    ``clock="process"`` counts this process's CPU time instead of wall time: on a CPU shared with other
    work it moves far less, which makes comparisons of two CPU computations reliable.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        synchronize(device)
        times.append((now() - t0) * 1e3)
    return times


def median_ms(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``fn`` in milliseconds: the figure a table reports."""
    return statistics.median(times_ms(fn, repeats, warmup, device))


def _cpu_seconds_busy() -> float | None:
    """CPU seconds the whole machine has been busy, stolen by the hypervisor included (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds_ours() -> float:
    """CPU seconds of this process and of its children that have ended (launched ranks, once joined)."""
    import resource  # POSIX only; where /proc/stat exists, so does this

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def with_other_load(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """``fn()``, and how many cores other processes (and the hypervisor) took on average while it ran:
    what lengthens a timed run beyond any model of it. None where /proc/stat is not there."""
    busy, ours, start = _cpu_seconds_busy(), _cpu_seconds_ours(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    busy_after = _cpu_seconds_busy()
    if busy is None or busy_after is None or wall <= 0:
        return result, None
    others = (busy_after - busy) - (_cpu_seconds_ours() - ours)
    return result, max(0.0, others / wall)


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> dict:
    """Measured dense matmul rate (TFLOP/s): the denominator of model FLOPs utilisation."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, repeats=10, warmup=3, device=device)
    return {"n": n, "dtype": str(dtype), "ms": ms, "tflops": 2 * n**3 / (ms / 1e3) / 1e12}


def read_bandwidth(device: torch.device | str = "cpu", n_bytes: int = 256 * 2**20, repeats: int = 7,
                   dtype: torch.dtype = torch.float32) -> dict:
    """Bytes per second a matrix-vector product reads from memory: a decode step's own access pattern
    (every weight read once, two FLOPs each). The matrix is far larger than any cache, so this is the
    memory's bandwidth as that kernel sees it; median and quartiles over ``repeats`` timings."""
    device = torch.device(device)
    cols = 4096
    rows = max(1, n_bytes // (cols * torch.finfo(dtype).bits // 8))
    matrix = torch.randn(rows, cols, device=device, dtype=dtype)
    vector = torch.randn(cols, 1, device=device, dtype=dtype)
    times = times_ms(lambda: matrix @ vector, repeats=repeats, warmup=2, device=device)
    rates = sorted(matrix.nbytes / (t / 1e3) for t in times)
    q = statistics.quantiles(rates, n=4) if len(rates) > 1 else rates * 3
    return {"bytes_per_s": statistics.median(rates), "q1": q[0], "q3": q[2], "matrix_bytes": matrix.nbytes}
