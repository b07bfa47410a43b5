"""ZeRO stages 0-3 from scratch equal one process and torch's own, and hold what the formula says."""
import pytest
from torch import nn

from ctxlab import GPT, ModelConfig
from ctxlab.bench.zero import zero_sweep
from ctxlab.memory_model import count_params
from ctxlab.model_states import check_zero, model_state_bytes
from ctxlab.parallel.zero import check_devices, offload_traffic_bytes, shard_size

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)  # on 3 ranks: padded slices
RUNS = (("ours", 0, ()), ("ours", 1, ()), ("ours", 2, ()), ("ours", 3, ()), ("torch", 1, ()), ("torch", 3, ()),
        ("ours", 2, ("optimizer",)), ("ours", 3, ("optimizer", "params")))


def test_every_stage_equals_one_process_and_holds_what_the_formula_says():
    """One launch (the test's costliest part) for every check of the runs themselves."""
    # two backward passes a step: slices of gradients must accumulate like whole ones
    sweep = zero_sweep(3, CFG, steps=5, batch=6, seq_len=16, runs=RUNS, micro_batches=2)
    assert sweep["losses"][-1] < sweep["losses"][0]  # the five steps train
    replicated = next(r for r in sweep["rows"] if (r["impl"], r["stage"]) == ("ours", 0))
    for row in sweep["rows"]:
        # fp32, 5 AdamW steps: the losses agree to 1e-6; the weights as closely as replicated data
        # parallelism's do (summing over 3 ranks and 2 micro-batches in another order than one process,
        # which Adam's division by the root of the second moment magnifies to a few 1e-6)
        assert row["loss_err"] < 1e-6 and row["weight_err"] < max(1e-6, 2 * replicated["weight_err"]), row
    assert replicated["weight_err"] < 1e-5
    rows = {(r["impl"], r["stage"], r["offload"]): r for r in sweep["rows"]}
    psi = count_params(CFG)
    assert rows[("ours", 0, "-")]["states_bytes"] == 16 * psi  # replicated: 16 bytes a parameter, fp32 AdamW
    assert any(p.numel() % 3 for p in GPT(CFG).parameters())  # some slices are padded
    for stage in (1, 2, 3):
        row = rows[("ours", stage, "-")]
        assert abs(row["states_bytes"] / row["formula_bytes"] - 1) < 0.02, row  # padding of odd sizes
    ratios = [rows[("ours", s, "-")]["states_ratio"] for s in range(4)]
    assert ratios == sorted(ratios, reverse=True) and ratios[3] < 0.52
    # torch's: ZeroRedundancyOptimizer shards whole parameters (uneven), FSDP2 every parameter's rows
    assert rows[("torch", 1, "-")]["states_bytes"] < rows[("ours", 0, "-")]["states_bytes"]
    assert abs(rows[("torch", 3, "-")]["states_bytes"] / rows[("ours", 3, "-")]["states_bytes"] - 1) < 0.1
    # offload: per step the gradient slices go to the host and the updated weight slices come back
    model = GPT(CFG)
    slices = sum(4 * shard_size(p.numel(), 3) for p in model.parameters())
    two = rows[("ours", 2, "optimizer")]
    assert two["host_traffic_bytes"] == 5 * (2 + 1) * slices  # a gradient slice per backward pass, one step
    # the optimizer's slices (its own copy of the weights' and the two moments) and the gradient slices
    # sit on the host, as the formula says (to the padding)
    assert two["on_host_bytes"] == 4 * slices
    assert two["on_host_bytes"] == pytest.approx(two["formula_host_bytes"], rel=0.02)
    assert two["states_bytes"] == pytest.approx(two["formula_bytes"], rel=0.02)
    # stage 3: per pass, each block's slices fetched for forward and backward, the rest once, the gradients
    # sent
    blocks = sum(4 * shard_size(p.numel(), 3) for p in model.blocks.parameters())
    three = rows[("ours", 3, "optimizer,params")]
    assert three["host_traffic_bytes"] == 5 * 2 * (2 * blocks + (slices - blocks) + slices)  # per backward pass
    # the library's count, which chapter 4b uses, is this one
    assert offload_traffic_bytes(model, 3, 2, micro_batches=2) * 5 == two["host_traffic_bytes"]
    assert offload_traffic_bytes(model, 3, 3, micro_batches=2) * 5 == three["host_traffic_bytes"]
    assert three["on_host_bytes"] == pytest.approx(three["formula_host_bytes"], rel=0.02)


def test_the_zero_paper_figures():
    """Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam (K = 12)."""
    gb = [model_state_bytes(7_500_000_000, s, 64, "bf16")["device"] / 1e9 for s in range(4)]
    assert [round(g, 1) for g in gb] == [120.0, 31.4, 16.6, 1.9]
    off = model_state_bytes(7_500_000_000, 3, 64, "bf16", ("optimizer", "params"))
    assert off["device"] == 0 and off["host"] == pytest.approx(16 * 7.5e9 / 64)


@pytest.mark.parametrize("stage,offload,match", [
    (4, (), "zero_stage"), (True, (), "zero_stage"), (0, ("optimizer",), "zero_stage >= 1"),
    (2, ("params",), "zero_stage 3"), (3, ("disk",), "offload")])
def test_bad_stages_and_offloads_are_refused(stage, offload, match):
    with pytest.raises(ValueError, match=match):
        check_zero(stage, offload)


def test_mixed_devices_and_bad_runs_are_refused_before_any_process_starts():
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to("meta"))
    with pytest.raises(ValueError, match="one device"):
        check_devices(module)
    with pytest.raises(ValueError, match="divisible by world_size"):
        zero_sweep(3, CFG, steps=1, batch=4, seq_len=16)
    with pytest.raises(ValueError, match="micro_batches"):
        zero_sweep(2, CFG, steps=1, batch=4, seq_len=16, micro_batches=4)
    with pytest.raises(ValueError, match="runs must pair"):
        zero_sweep(2, CFG, steps=1, batch=4, seq_len=16, runs=(("torch", 2, ()),))
    with pytest.raises(ValueError, match="zero_stage"):
        zero_sweep(2, CFG, steps=1, batch=4, seq_len=16, runs=(("ours", 5, ()),))
