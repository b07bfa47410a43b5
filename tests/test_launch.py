"""The launcher: results by rank, every fault ends the job fast with the rank named, no orphans left."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from ctxlab.parallel import RankFailure, RankTimeout, launch
from ctxlab.parallel.launch import choose_backend


def sum_of_ranks(rank, world_size, scale):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "world": world_size, "sum": t.item() * scale, "env_rank": os.environ["RANK"]}


def raise_on_rank_one(rank, world_size, stamp):
    if rank == 1:
        pathlib.Path(stamp).write_text(repr(time.time()))
        raise ValueError("boom from the worker")
    dist.barrier()  # rank 0 waits for a peer that never comes: the launcher must stop it
    return rank


def hang_on_rank_one(rank, world_size, stamp):
    dist.barrier()  # both ranks joined: rank 0 returning cannot cut rank 1's connection mid-handshake
    if rank == 1:
        time.sleep(3600)
    return rank


def exit_on_rank_one(rank, world_size, stamp):
    if rank == 1:
        pathlib.Path(stamp).write_text(repr(time.time()))
        os._exit(3)
    dist.barrier()
    return rank


def spawned_children():
    """Live spawn children of this process (the multiprocessing resource tracker is not a rank)."""
    me, found = str(os.getpid()), []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == me and b"spawn_main" in cmd and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_results_come_back_by_rank_with_the_env_set():
    out = launch(sum_of_ranks, 3, 2.0, timeout=60)
    assert [r["rank"] for r in out] == [0, 1, 2] and [r["env_rank"] for r in out] == ["0", "1", "2"]
    assert all(r["sum"] == 6.0 and r["world"] == 3 for r in out)
    assert choose_backend(2) in ("gloo", "nccl")


@pytest.mark.parametrize("worker, cause", [(raise_on_rank_one, "raised an exception"),
                                           (exit_on_rank_one, "exited with code 3 without returning a result"),
                                           (hang_on_rank_one, "did not finish within timeout")])
def test_a_failing_rank_ends_the_job_fast_and_leaves_no_orphans(worker, cause, tmp_path):
    stamp = tmp_path / "fault_time"
    timeout = 6 if worker is hang_on_rank_one else 120
    start = time.time()
    with pytest.raises(RankFailure) as info:
        launch(worker, 2, str(stamp), timeout=timeout)
    fault_time = float(stamp.read_text()) if stamp.exists() else start + timeout
    assert time.time() - fault_time < 10, "the job must end within 10 s of the fault"
    assert info.value.rank == 1 and cause in str(info.value)
    if worker is raise_on_rank_one:
        assert "boom from the worker" in str(info.value) and "Traceback" in str(info.value)
    if worker is hang_on_rank_one:
        assert isinstance(info.value, RankTimeout) and isinstance(info.value, TimeoutError)
    assert spawned_children() == []


def test_a_port_in_use_is_reported_before_any_rank_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RankFailure, match="port in use"):
            launch(sum_of_ranks, 2, 1.0, port=s.getsockname()[1])
    assert spawned_children() == []


def notebook_style_worker(rank, world_size):
    return rank


notebook_style_worker.__module__ = "__main__"


@pytest.mark.parametrize("call, match", [
    (lambda: launch(lambda r, w: r, 2), "module level"),
    (lambda: launch(notebook_style_worker, 2), "notebook"),
    (lambda: launch("sum_of_ranks", 2), "callable"),
    (lambda: launch(sum_of_ranks, 0, 1.0), "world_size"),
    (lambda: launch(sum_of_ranks, 1000, 1.0), "world_size"),
    (lambda: launch(sum_of_ranks, 2.0, 1.0), "world_size"),
    (lambda: launch(sum_of_ranks, 2, 1.0, backend="mpi"), "backend"),
    (lambda: launch(sum_of_ranks, 2, 1.0, timeout=0), "timeout"),
    (lambda: launch(sum_of_ranks, 2, lambda: 1), "picklable"),
    (lambda: launch(sum_of_ranks, 2, 1.0, port=-1), "port"),
])
def test_bad_inputs_raise_before_any_process_starts(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
    assert spawned_children() == []


def test_the_same_worker_runs_under_torchrun():
    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ctxlab.parallel.launch"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    # rank 0 prints for both ranks, once and in order
    assert out.stdout.strip().splitlines() == [f"rank {r} of 2: all_reduce sum of ranks = 1" for r in (0, 1)]


def test_a_rank_that_exits_right_after_returning_is_not_a_failure(monkeypatch):
    """The parent may see a rank's exit before its result: after the grace period the result counts."""
    import importlib
    import pickle
    from types import SimpleNamespace

    import torch.multiprocessing as mp

    launch_module = importlib.import_module("ctxlab.parallel.launch")  # the package re-exports the function

    monkeypatch.setattr(launch_module, "GRACE_S", 0.0)
    queue = mp.get_context("spawn").SimpleQueue()
    queue.put(pickle.dumps(("ok", 1, "done")))
    context = SimpleNamespace(processes=[SimpleNamespace(exitcode=None), SimpleNamespace(exitcode=0)])
    results: dict = {}
    assert launch_module._root_cause(context, queue, results, {}) is None
    assert results == {1: "done"}
    queue.put(pickle.dumps(("error", 0, "Traceback: ValueError: bad")))
    failure = launch_module._root_cause(context, queue, results, {})
    assert isinstance(failure, RankFailure) and failure.rank == 0 and "ValueError: bad" in str(failure)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_torchrun_a_failing_rank_names_itself_and_rank_zero_gathers(monkeypatch, capsys):
    """``run_from_env`` marks a rank's error with its rank; ``gather_from_env`` hands rank 0 every result."""
    from ctxlab.parallel import gather_from_env, run_from_env

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert gather_from_env(lambda rank, world_size, x: (rank, x), "a") == [(0, "a")]

    def fails(rank, world_size):
        raise ValueError("bad shard")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ValueError, match="bad shard"):
        run_from_env(fails)
    err = capsys.readouterr().err
    assert "[rank 0] Traceback" in err and "[rank 0] ValueError: bad shard" in err
