"""Ring attention (context parallelism): schedule and sharding maths here, the real ring on gloo ranks below."""
import re

import pytest
import torch

from ctxlab.bench.ring import CASES, bench_worker, report
from ctxlab.bench.ring_workers import imbalance, jobs_worker
from ctxlab.parallel.context import context_parallel_step
from ctxlab.parallel.launch import launch
from ctxlab.parallel.ring import comm_bytes_formula, hiding_length, ring_attention, ring_schedule
from ctxlab.parallel.sharding import chunk_ids, shard, shard_positions, unshard
from ctxlab.parallel.ulysses import comm_bytes_formula as ulysses_bytes

TOL = 1e-5


@pytest.mark.parametrize("world_size,zigzag", [(1, False), (3, False), (4, False), (2, True), (4, True)])
def test_shard_unshard_round_trip_and_positions(world_size, zigzag):
    x = torch.arange(2 * 24).reshape(2, 24)
    parts = [shard(x, r, world_size, zigzag) for r in range(world_size)]
    assert torch.equal(unshard(parts, zigzag), x)
    positions = [shard_positions(24, r, world_size, zigzag) for r in range(world_size)]
    for r in range(world_size):  # the positions are the global indices of the tokens the rank holds
        assert torch.equal(parts[r][0], positions[r])
    assert sorted(torch.cat(positions).tolist()) == list(range(24))


def test_zigzag_gives_each_rank_an_early_and_a_late_chunk():
    assert [chunk_ids(r, 4, True) for r in range(4)] == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert shard_positions(8, 1, 2, True).tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("world_size", [2, 3, 4, 8])
def test_schedule_work_balance(world_size):
    def work(zigzag):
        return [sum(t.work for t in row if t is not None) for row in ring_schedule(world_size, 8, True, zigzag)]
    plain = work(False)
    assert max(plain) / (sum(plain) / world_size) == pytest.approx(2 * world_size / (world_size + 1))
    assert len(set(work(True))) == 1  # zig-zag: every rank computes the same number of score entries
    schedule = ring_schedule(world_size, 8, causal=False)
    for rank, row in enumerate(schedule):  # every rank meets every K/V block exactly once
        assert sorted(t.kv_rank for t in row) == list(range(world_size))
        assert row[0].kv_rank == rank


def test_comm_formula():
    assert comm_bytes_formula(1, 100) == {"forward": 0, "backward": 0}
    assert comm_bytes_formula(4, 100) == {"forward": 600, "backward": 600 + 600}


def test_hiding_length_is_where_a_steps_compute_equals_its_transfer():
    flops, bandwidth = 1e12, 1e10
    assert hiding_length(flops, bandwidth, 2, 8, 8, 128) == pytest.approx(2 * flops / (2 * bandwidth))  # e F / 2B
    # GQA sends a quarter of the K/V for the same compute; a half-masked causal block computes half as much
    assert hiding_length(flops, bandwidth, 2, 32, 8, 128, 0.5) == pytest.approx(2 * flops * 8 / (2 * bandwidth * 32 * 0.5))
    length = hiding_length(flops, bandwidth, 2, 8, 8, 128, latency_s=1e-5)
    compute = 4 * length**2 * 128 * 8 / flops
    assert compute == pytest.approx(1e-5 + 2 * length * 128 * 8 * 2 / bandwidth)  # latency moves it up
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        hiding_length(flops, 0, 2, 8, 8, 128)


def test_bad_inputs_without_a_process_group():
    x = torch.zeros(1, 10)
    with pytest.raises(ValueError, match="multiple of world_size = 3"):
        shard(x, 0, 3, zigzag=False)
    with pytest.raises(ValueError, match=r"multiple of 2 \* world_size = 4"):
        shard(torch.zeros(1, 6), 0, 2, zigzag=True)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        shard(x, 0, 0, zigzag=False)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        ring_schedule(0, 8)
    with pytest.raises(ValueError, match="rank must be"):
        shard_positions(8, 2, 2, False)
    with pytest.raises(ValueError, match="same shape"):
        unshard([torch.zeros(1, 4), torch.zeros(1, 6)], zigzag=False)
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ring_attention(q, q, q)
    from ctxlab import GPT, reference_config
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        context_parallel_step(GPT(reference_config(n_layers=1, d_model=32)), torch.zeros(1, 8, dtype=torch.long),
                              torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="world_size"):
        launch(jobs_worker, 0, {})


def _check_exact(rows, runs):
    assert {(r["P"], r["causal"], r["zigzag"], r["T"]) for r in rows} == set(runs)
    assert len(rows) == sum(run[0] for run in runs)  # one row per rank of every ring
    for r in rows:
        for key in ("err_out", "err_dq", "err_dk", "err_dv"):
            assert r[key] <= TOL, (r["P"], r["causal"], r["zigzag"], r["rank"], key, r[key])
        formula = comm_bytes_formula(r["P"], r["kv_block_bytes"])  # the bytes each rank really sent
        assert (r["forward_bytes"], r["backward_bytes"]) == (formula["forward"], formula["backward"])


def test_ring_attention_in_float64_equals_sdpa_to_float64_rounding():
    """The ring accumulates in the inputs' own precision when it is wider than fp32, with either block kernel."""
    runs = [(2, True, True, 16), (2, True, False, 16), (2, False, False, 16)]
    results = launch(jobs_worker, 2, {"exact": (runs, 1, 4, 2, 16, torch.float64),
                                      "exact_blocking": (runs, 1, 4, 2, 16, torch.float64, "ring", True),
                                      "exact_fused": (runs, 1, 4, 2, 16, torch.float64, "ring", False, "fused")})
    # the blocking control computes the same thing, only later; torch's fused block kernel the same too
    for job in ("exact", "exact_blocking", "exact_fused"):
        rows = [r for res in results for r in res[job]]
        assert len(rows) == 2 * len(runs)
        worst = max(r[key] for r in rows for key in ("err_out", "err_dq", "err_dk", "err_dv"))
        assert worst <= 1e-12, (job, worst)
        assert all(r["exchanges"] == 3 for r in rows)  # a ring of 2: one hop forward, K/V and dK/dV backward


def test_rings_of_two_three_and_four_ranks():
    """One launch of 4 gloo ranks runs the rings of 1, 2, 3 (plain sharding only) and 4 ranks."""
    runs = [(p, causal, zigzag, 8 * p) for p in (2, 4) for causal, zigzag in CASES]
    runs += [(3, causal, False, 24) for causal in (False, True)] + [(1, True, True, 8)]
    train = [(2, False), (2, True), (3, False), (4, True)]
    results = launch(jobs_worker, 4, {"exact": (runs,), "train": (train,), "bad": (), "memory": (64, [1, 2, 4])},
                     timeout=240)
    rows = [r for res in results for r in res["exact"]]
    _check_exact(rows, runs)
    for p in (2, 3, 4):
        assert imbalance(rows, p, causal=True, zigzag=False) == pytest.approx(2 * p / (p + 1))
    assert imbalance(rows, 2, causal=True, zigzag=True) == imbalance(rows, 4, causal=True, zigzag=True) == 1.0

    steps = [row for res in results for row in res["train"]]
    assert len(steps) == sum(p for p, _ in train)
    for row in steps:
        assert row["loss_err"] <= TOL and row["grad_err"] <= TOL, row
        assert row["attention_restored"]  # every layer's attention is put back: the model is left as it was
    for p, zigzag in train:  # every rank of a ring reports the same global loss
        assert len({row["loss"] for row in steps if (row["P"], row["zigzag"]) == (p, zigzag)}) == 1

    for res in results:  # every rank sees the problem and says what it is: no hang
        assert "same world size, q/k/v shapes" in res["bad"]["mismatched_shapes"]
        assert "even local length" in res["bad"]["odd_zigzag"]
        assert "same world size, q/k/v shapes" in res["bad"]["ulysses_mismatched"]
        assert "even" in res["bad"]["ulysses_odd_zigzag"]



def test_the_bench_report_down_to_its_last_line():
    """The bench's workers at small sizes on 4 ranks: every field of the last line, the bytes each design
    sent equal to its formula, and every exchange of the overlap runs timed."""
    results = launch(bench_worker, 4, 32, 64, 64, (8, 16), 1, timeout=240)
    lines = report(results, 4, 32, 64, 64).splitlines()
    names = ("max_err mem_ratio_p4_vs_p1 zigzag_imbalance plain_imbalance ring_peak_vs_chunked ring_time_vs_chunked "
             "ulysses_max_err ulysses_bytes_per_rank ring_bytes_per_rank ring_hidden_comm_share").split()
    match = re.fullmatch(" ".join(f"{n}=(\\S+)" for n in names), lines[-1])
    assert match, lines[-1]
    got = dict(zip(names, map(float, match.groups())))
    assert got["max_err"] <= TOL and got["ulysses_max_err"] <= TOL and got["mem_ratio_p4_vs_p1"] < 1
    assert got["zigzag_imbalance"] == 1.0 and got["plain_imbalance"] == 1.6
    block = 4 * 32 * 64 * 4  # one rank's fp32 K at P = 2: H = 4, T/P = 32, head_dim 64
    assert got["ring_bytes_per_rank"] == sum(comm_bytes_formula(2, block).values())
    assert got["ulysses_bytes_per_rank"] == ulysses_bytes(2, block, block)["total"]
    assert 0 < got["ring_peak_vs_chunked"] and 0 < got["ring_time_vs_chunked"]
    assert all(f"formula {m.group(2)}" in line for line in lines
               for m in [re.search(r"sent (\d+) B \(formula (\d+)\)", line)] if m)
    rows = [r for res in results for r in res["overlap"]]
    for n in (8, 16):  # every call on the ring of 2 made its three exchanges, timed, both ways
        for blocking in (False, True):
            calls = [r for r in rows if r["L"] == n and r["blocking"] == blocking]
            assert sorted(r["exchange"] for r in calls) == sorted([0, 1, 2] * 2 * 3)  # 2 ranks, 3 rounds
            assert all(r["nbytes"] == 2 * 4 * n * 64 * 4 and r["wait_s"] >= 0 for r in calls)


def test_context_parallelism_refuses_recomputation_before_any_communication():
    """Backward rebuilds checkpointed blocks after the ring is put away: refused, with the reason."""
    from ctxlab import GPT, reference_config

    model = GPT(reference_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16,
                                 checkpoint_every=1))
    x = torch.zeros(1, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="checkpoint_every"):
        context_parallel_step(model, x, x)
