"""Data parallel from scratch equals one process on the whole batch, and torch's DDP, on 2 gloo ranks."""
import pytest
import torch

from ctxlab import ModelConfig
from ctxlab.parallel import launch
from ctxlab.bench.ddp import allreduce_worker, summarize_allreduce
from ctxlab.parallel.ddp import all_reduce_bytes, ddp_compare_worker, ddp_train_worker, split_batch
from ctxlab.train import train_single

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)


def batch(n=4, t=16):
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (n, t), generator=gen), torch.randint(0, 64, (n, t), generator=gen)


def test_ddp_equals_single_process_and_torch_ddp():
    x, y = batch()
    ref = train_single(CFG, x, y, steps=5)
    per_rank = launch(ddp_compare_worker, 2, CFG, x, y, 5, 0.01, timeout=180)
    for rank, out in enumerate(per_rank):
        for impl in ("ours", "torch"):
            got = out[impl]
            assert max(abs(a - b) for a, b in zip(got["losses"], ref["losses"])) < 1e-6, (rank, impl)
            assert set(got["grads"]) == set(ref["grads"])
            for name, g in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], g, atol=1e-6, rtol=0, msg=f"{impl} {name}")
    ours = per_rank[0]["ours"]
    assert ours["buckets"] > 1 and ours["overlapped"] >= 1  # some all-reduces started before backward ended
    assert ref["losses"][-1] < ref["losses"][0]  # the 5 steps really train


def test_bad_inputs_before_any_process_starts():
    x, y = batch(3)
    with pytest.raises(ValueError, match="divisible by world_size"):
        split_batch(x, 0, 2)
    with pytest.raises(ValueError, match="divisible by world_size"):  # checked before any rank starts
        launch(ddp_compare_worker, 2, CFG, x, y)
    with pytest.raises(ValueError, match="steps"):
        launch(ddp_train_worker, 1, CFG, x, y, 0)
    with pytest.raises(ValueError, match="steps"):
        train_single(CFG, x, y, steps=0)
    with pytest.raises(TypeError, match="cfg"):
        train_single({"d_model": 32}, x, y)
    with pytest.raises(ValueError, match="tokens and targets"):
        train_single(CFG, x, y[:, :4])


def test_ring_all_reduce_sends_the_formulas_bytes_and_the_hooks_change_no_gradient():
    """On 3 ranks, buffers that do not split evenly: the hand-written ring all-reduce equals dist.all_reduce
    and sends 2(W-1) chunks; the control that reduces after backward averages the same gradients."""
    results = launch(allreduce_worker, 3, CFG, 2, 16, (1, 1001, 4096), 2, 0.01, timeout=180)
    ar = summarize_allreduce(results)
    assert [v["bytes_sent"] for v in ar["sizes"].values()] == [2 * 2 * 4, 2 * 2 * 334 * 4, 2 * 2 * 1366 * 4]
    assert all(v["bytes_sent"] == v["formula"] == all_reduce_bytes(n, 4, 3) for n, v in ar["sizes"].items())
    assert all(v["max_diff"] <= 1e-5 for v in ar["sizes"].values())
    assert all(r["grad_diff"] == 0.0 for r in results) and ar["grad_diff"] == 0.0
    assert ar["buckets"] > 1 and set(ar["steps"]) == {"overlap", "control"}
