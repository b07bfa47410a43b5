"""Ulysses (all-to-all context parallelism) equals full attention and one rank's training step."""
import pytest
import torch

from ctxlab.bench.ring_workers import jobs_worker
from ctxlab.parallel.launch import launch
from ctxlab.parallel.ring import comm_bytes_formula as ring_bytes
from ctxlab.parallel.ulysses import check_heads, comm_bytes_formula, hybrid_comm_bytes

RUNS = [(p, causal, zigzag, 16) for p in (2, 4) for causal in (False, True) for zigzag in (False, True)]


def test_ulysses_on_two_and_four_ranks():
    """One launch of 4 gloo ranks: exactness (fp32 and fp64, GQA 8:4, plain and causal, both layouts),
    the bytes each rank sends, and a GPT training step equal to one rank's."""
    jobs = {"ulysses_exact": (RUNS, 1, 8, 4, 8, torch.float32, "ulysses"),
            "ulysses_exact64": (RUNS[-2:], 1, 8, 4, 8, torch.float64, "ulysses"),
            "ulysses_train": ([(2, False), (2, True), (4, True)], 0, "ulysses")}
    results = launch(jobs_worker, 4, jobs, timeout=300)
    for r in results:
        for row in r["ulysses_exact"]:
            assert max(row[k] for k in ("err_out", "err_dq", "err_dk", "err_dv")) < 1e-5, row
            assert row["bytes_sent"] == comm_bytes_formula(row["P"], row["q_block_bytes"],
                                                           row["kv_block_bytes"])["total"], row
        for row in r["ulysses_exact64"]:
            assert max(row[k] for k in ("err_out", "err_dq", "err_dk", "err_dv")) < 1e-12, row
        for row in r["ulysses_train"]:
            assert row["loss_err"] < 1e-6 and row["grad_err"] < 1e-5 and row["attention_restored"], row


def test_bytes_per_rank_do_not_grow_with_the_ranks():
    """Per rank Ulysses sends (P-1)/P of its shards: at a fixed T the shards shrink like 1/P."""
    t, d = 4096, 64 * 8
    sent = [comm_bytes_formula(p, 4 * t // p * d, 4 * t // p * d // 4)["total"] for p in (2, 4, 8)]
    assert sent == sorted(sent, reverse=True)


@pytest.mark.parametrize("heads,kv_heads,world", [(8, 2, 4), (6, 6, 4), (4, 4, 8)])
def test_more_ranks_than_heads_is_refused(heads, kv_heads, world):
    with pytest.raises(ValueError, match="divide the heads"):
        check_heads(heads, kv_heads, world)


def test_the_hybrid_is_the_ring_at_one_ulysses_rank_and_ulysses_at_one_ring_rank():
    q, kv = 4096, 1024
    ring = ring_bytes(8, kv)
    assert hybrid_comm_bytes(1, 8, q, kv)["total"] == ring["forward"] + ring["backward"]
    assert hybrid_comm_bytes(8, 1, q, kv) == comm_bytes_formula(8, q, kv)
    # 4 x 2: Ulysses' all-to-alls inside groups of 4, then one ring hop of a block the size of the local K
    two_d = hybrid_comm_bytes(4, 2, q, kv)
    assert two_d["total"] == comm_bytes_formula(4, q, kv)["total"] + 2 * kv + 2 * (kv + kv)
    with pytest.raises(ValueError, match="ring_size"):
        hybrid_comm_bytes(2, 0, q, kv)
