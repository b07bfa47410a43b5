import pytest
import torch

from ctxlab import GPT
from ctxlab.memory_model import (apply_techniques, count_params, max_context, measure_step_memory,
                                 predict_step_memory)


@pytest.mark.parametrize("changes", [{}, dict(tie_weights=False), dict(share_layers=True), dict(n_kv_heads=1),
                                     dict(n_layers=3, mlp_ratio=2)])
def test_parameter_count_formula(changes, small_config):
    cfg = small_config(max_seq_len=4096, **changes)
    with torch.device("meta"):
        assert count_params(cfg) == GPT(cfg).num_params()


def test_traced_measurement_equals_a_real_step(small_config):
    cfg = small_config(max_seq_len=4096)
    assert measure_step_memory(cfg, 128, fake=True) == measure_step_memory(cfg, 128, fake=False)


@pytest.mark.parametrize("changes,seq_len", [(dict(attention="naive"), 256), (dict(attention="sdpa"), 512),
                                             (dict(attention="chunked", attn_chunk=64), 256),
                                             (dict(checkpoint_every=1), 1024),
                                             (dict(checkpoint_every=1, loss_chunk=128, mlp_chunk=128), 1024)])
def test_prediction_within_15_percent_of_measurement(changes, seq_len, small_config):
    cfg = small_config(max_seq_len=4096, **changes)
    measured = measure_step_memory(cfg, seq_len)["total"]
    predicted = predict_step_memory(cfg, seq_len)["total"]
    assert abs(predicted - measured) / measured < 0.15


def test_states_are_16_bytes_per_parameter(small_config):
    cfg = small_config(max_seq_len=4096)
    p = predict_step_memory(cfg, 64)
    assert p["parameters"] + p["gradients"] + p["optimizer"] == 16 * count_params(cfg)


def test_max_context_predicted_and_measured(small_config):
    cfg = small_config(max_seq_len=4096)
    budget = 3 * 2**20
    naive = max_context(cfg, budget, ["naive"])
    best = max_context(cfg, budget, ["sdpa", "checkpoint", "chunked_loss"])
    assert 0 < naive < best and max_context(cfg, 2 * budget, ["naive"]) > naive
    assert predict_step_memory(apply_techniques(cfg, ["naive"]), naive)["total"] <= budget
    assert predict_step_memory(apply_techniques(cfg, ["naive"]), naive + 64)["total"] > budget
    measured = max_context(cfg, budget, ["naive"], method="measure", tolerance=0.05)
    assert abs(measured - naive) <= 0.15 * naive
    assert measure_step_memory(apply_techniques(cfg, ["naive"]), measured)["total"] <= budget


def test_bad_inputs(small_config):
    cfg = small_config(max_seq_len=4096)
    states = 16 * count_params(cfg)
    with pytest.raises(ValueError, match="smaller than the model's own states"):
        max_context(cfg, states - 1)
    assert max_context(cfg, states + 1) == 0  # states fit, not even 64 tokens of activations
    with pytest.raises(ValueError, match="techniques must be names from"):
        max_context(cfg, 2**30, ["flash"])
    with pytest.raises(ValueError, match="method"):
        max_context(cfg, 2**30, method="guess")
    with pytest.raises(ValueError, match="budget_bytes"):
        max_context(cfg, -5)
    with pytest.raises(ValueError, match="seq_len"):
        predict_step_memory(cfg, 0)
    with pytest.raises(TypeError, match="ModelConfig"):
        measure_step_memory({"d_model": 32}, 16)
