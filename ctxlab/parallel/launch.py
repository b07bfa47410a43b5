"""Start N worker processes from a notebook or a script, or run the same worker under ``torchrun``.

``launch(fn, world_size, *args)`` spawns ``world_size`` processes, joins them into one process group
(NCCL when every rank can have a GPU of its own, gloo otherwise) and runs ``fn(rank, world_size, *args)``
in each. Results come back through a queue that the parent drains while it polls the processes, so a
rank that raises, exits, or hangs ends the whole job with a message naming the rank and the cause.

The rendezvous store is hosted by the parent on a port it picked itself: there is no race for a
"free port" between picking it and using it.
"""
from __future__ import annotations

import importlib
import os
import pickle
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import positive_int

BACKENDS = ("gloo", "nccl")
MAX_CPU_WORLD_SIZE = 64  # gloo ranks on one machine; more only oversubscribes the cores
POLL_S = 0.05
GRACE_S = 0.5  # after a first failure, time for the peers' reports to arrive


class RankFailure(RuntimeError):
    """A rank raised, exited without a result, or did not finish; ``rank`` and ``cause`` say which and why."""

    def __init__(self, rank: int, cause: str, detail: str = ""):
        self.rank, self.cause = rank, cause
        super().__init__(f"rank {rank} {cause}" + (f"\n--- rank {rank} traceback ---\n{detail}" if detail else ""))


class RankTimeout(RankFailure, TimeoutError):
    """A rank did not finish within the launch's timeout."""


def choose_backend(world_size: int) -> str:
    """NCCL when each rank can bind a GPU of its own, gloo otherwise (CPU, or fewer GPUs than ranks)."""
    if torch.cuda.is_available() and dist.is_nccl_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device this rank computes on: its own GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_importable(fn: Callable) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    hint = ("fn must be a function defined at module level in an importable module (for example "
            "ctxlab.parallel.ddp.ddp_train_worker), because spawned processes import it by name; ")
    if module in (None, "__main__", "__mp_main__") or "<" in qualname:
        raise TypeError(hint + f"got {qualname or fn!r} from module {module!r} (a notebook, script or local function)")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise TypeError(hint + f"could not import {module}.{qualname}: {err}") from None
    if obj is not fn:
        raise TypeError(hint + f"{module}.{qualname} names a different object")


def _validate(fn: Callable, world_size: int, args: tuple, backend: str | None, timeout: float) -> str:
    _check_importable(fn)
    positive_int("world_size", world_size)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None (choose automatically) or one of {BACKENDS}, got {backend!r}")
    backend = backend or choose_backend(world_size)
    limit = torch.cuda.device_count() if backend == "nccl" else MAX_CPU_WORLD_SIZE
    if world_size > limit:
        what = "GPUs visible" if backend == "nccl" else "gloo ranks allowed on one machine"
        raise ValueError(f"world_size must be <= {limit} ({what}) for backend {backend!r}, got {world_size}")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError("backend 'nccl' needs CUDA GPUs; use backend='gloo' or None on this machine")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    check_args = getattr(fn, "check_args", None)  # a worker's own validation, run here before any process starts
    if check_args is not None:
        check_args(world_size, *args)
    try:
        pickle.dumps(args)
    except Exception as err:  # noqa: BLE001 - any pickling failure means the args cannot reach the ranks
        raise TypeError(f"args must be picklable to reach the spawned ranks: {err}") from None
    return backend


def _run_rank(rank: int, fn: Callable, world_size: int, args: tuple, backend: str, host: str, port: int,
              queue, timeout: float) -> None:
    """Body of every spawned process: join the group, run ``fn``, put ("ok"|"error", rank, payload) on the queue."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      MASTER_ADDR=host, MASTER_PORT=str(port))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        else:  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        store = dist.TCPStore(host, port, world_size + 1, is_master=False, timeout=timedelta(seconds=timeout))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))
        result = fn(rank, world_size, *args)
        message = ("ok", rank, result)
    except BaseException:  # noqa: BLE001 - every failure is sent to the parent with its traceback
        message = ("error", rank, traceback.format_exc())
    try:
        payload = pickle.dumps(message)
    except Exception as err:  # noqa: BLE001
        payload = pickle.dumps(("error", rank, f"result could not be pickled: {err!r}"))
    queue.put(payload)
    if dist.is_initialized():
        dist.destroy_process_group()


def _stop(context) -> None:
    """Terminate every live rank, then kill what is left, and reap them all (no orphans, no zombies)."""
    for p in context.processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in context.processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


PEER_FAILURE_HINTS = ("Connection closed by peer", "Connection reset by peer", "DistBackendError", "Broken pipe",
                      "Socket closed", "NCCL communicator was aborted")


def _drain(queue, results: dict) -> dict[int, str]:
    """Move every finished rank's message off the queue; returns the errors by rank."""
    errors = {}
    while not queue.empty():
        status, rank, payload = pickle.loads(queue.get())
        if status == "error":
            errors[rank] = payload
        else:
            results[rank] = payload
    return errors


def _root_cause(context, queue, results: dict, errors: dict[int, str]) -> RankFailure | None:
    """A rank looks failed; its peers usually fail next with "connection closed". Wait a moment, then blame
    the rank that died or raised on its own, not the ones that lost their peer. None when the rank that
    looked dead had put its result on the queue just before exiting (no failure after all)."""
    time.sleep(GRACE_S)
    errors.update(_drain(queue, results))
    dead = {r: p.exitcode for r, p in enumerate(context.processes)
            if r not in results and r not in errors and p.exitcode is not None}
    others = sorted(set(errors) | set(dead))
    for rank, code in dead.items():
        return RankFailure(rank, f"exited with code {code} without returning a result (failed ranks: {others})")
    if not errors:
        return None
    own = [r for r, tb in errors.items() if not any(h in tb for h in PEER_FAILURE_HINTS)]
    rank = min(own or errors)
    return RankFailure(rank, f"raised an exception (failed ranks: {others})", errors[rank])


def launch(fn: Callable, world_size: int, *args: Any, backend: str | None = None, timeout: float = 120.0,
           port: int = 0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned ranks and return their results by rank.

    A worker may carry a ``check_args(world_size, *args)`` attribute: it runs before any process starts.
    Raises :class:`RankFailure` (with the rank's traceback) when a rank raises or exits without a result,
    and :class:`RankTimeout` when ranks are still running after ``timeout`` seconds; all ranks are stopped
    first. ``port=0`` picks a free port; a given port that is taken is reported before any rank starts.
    """
    backend = _validate(fn, world_size, args, backend, timeout)
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an int in [0, 65535] (0 = pick a free one), got {port!r}")
    host = "127.0.0.1"
    try:
        store = dist.TCPStore(host, port, world_size + 1, is_master=True, timeout=timedelta(seconds=timeout),
                              wait_for_workers=False)
    except (RuntimeError, OSError) as err:
        raise RankFailure(0, f"could not host the rendezvous store on {host}:{port} (port in use?): {err}") from None
    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_run_rank, args=(fn, world_size, args, backend, host, store.port, queue, timeout),
                                 nprocs=world_size, join=False, start_method="spawn")
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            errors = _drain(queue, results)
            dead = [r for r, p in enumerate(context.processes) if r not in results and p.exitcode is not None]
            failure = _root_cause(context, queue, results, errors) if errors or dead else None
            if failure is not None:
                raise failure
            if time.monotonic() > deadline:
                late = [r for r in range(world_size) if r not in results]
                raise RankTimeout(late[-1], f"did not finish within timeout={timeout} s "
                                            f"(ranks still running: {late})")
            time.sleep(POLL_S)
    finally:
        _stop(context)
        del store
    return [results[r] for r in range(world_size)]


# ---- the same worker under torchrun ------------------------------------------------------------------

def under_torchrun() -> bool:
    """True when the environment was set up by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def run_from_env(fn: Callable, *args: Any, backend: str | None = None) -> Any:
    """Run ``fn(rank, world_size, *args)`` in this process, joining the group described by torchrun's env.

    ``torchrun --nnodes N --nproc-per-node G -m ctxlab.parallel.<module>`` starts every rank; each reads
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and binds GPU LOCAL_RANK under NCCL.
    """
    if not under_torchrun():
        raise RuntimeError("RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT must be set: start this with torchrun")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    backend = backend or choose_backend(local_world)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        return fn(rank, world_size, *args)
    except Exception:  # this rank's error, marked with its rank, before torchrun ends the job
        sys.stderr.write("".join(f"[rank {rank}] {line}" for line in traceback.format_exc().splitlines(True)))
        sys.stderr.flush()
        raise
    finally:
        dist.destroy_process_group()


def gather_from_env(fn: Callable, *args: Any, backend: str | None = None) -> list | None:
    """``run_from_env``, with every rank's result gathered on rank 0: rank 0 gets them in rank order,
    the others None, so that a command prints its report once (from rank 0)."""
    def gathered(rank: int, world_size: int, *fn_args: Any) -> list | None:
        result = fn(rank, world_size, *fn_args)
        everyone = [None] * world_size if rank == 0 else None
        dist.gather_object(result, everyone, dst=0)
        return everyone
    return run_from_env(gathered, *args, backend=backend)


def hello_worker(rank: int, world_size: int) -> str:
    t = torch.tensor([float(rank)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return f"rank {rank} of {world_size}: all_reduce sum of ranks = {int(t.item())}"


if __name__ == "__main__":  # torchrun --nproc-per-node 2 -m ctxlab.parallel.launch: does a group form?
    lines = gather_from_env(hello_worker)
    if lines is not None:  # rank 0 prints for every rank
        print("\n".join(lines), flush=True)
