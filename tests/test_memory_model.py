import pytest
import torch

from ctxlab import GPT
from ctxlab.memory_model import (apply_techniques, count_params, max_context, measure_step_memory,
                                 predict_step_memory)


LLAMA = dict(norm="rmsnorm", mlp="swiglu", d_ff=88, tie_weights=False)


@pytest.mark.parametrize("changes", [{}, dict(tie_weights=False), dict(share_layers=True), dict(n_kv_heads=1),
                                     dict(n_layers=3, mlp_ratio=2), LLAMA, dict(LLAMA, qkv_bias=True, n_kv_heads=2)])
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
                                             (dict(checkpoint_every=1, loss_chunk=128, mlp_chunk=128), 1024),
                                             (dict(LLAMA, n_kv_heads=2), 512), (dict(LLAMA, attention="naive"), 256),
                                             (dict(LLAMA, checkpoint_every=1), 1024), (dict(dropout=0.1), 512)])
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


@pytest.mark.parametrize("techniques", [["chunked"], ["chunked", "checkpoint"], ["naive"]])
def test_bf16_prediction_counts_the_fp32_loss(techniques, small_config):
    """A bf16 model computes its loss in fp32: 12 bytes per logit, as in fp32 (not 3 x 2)."""
    cfg = apply_techniques(small_config(vocab_size=4096, max_seq_len=1024), techniques)
    measured = measure_step_memory(cfg, 512, dtype=torch.bfloat16)["total"]
    predicted = predict_step_memory(cfg, 512, bytes_per_element=2)["total"]
    assert abs(predicted - measured) / measured < 0.03
    assert predict_step_memory(cfg.replace(vocab_size=8192), 512, bytes_per_element=2)["total"] - predicted \
        >= 12 * 512 * 4096


@pytest.mark.parametrize("changes", [dict(norm="rmsnorm"), dict(LLAMA, d_ff=96), dict(LLAMA, d_ff=96, checkpoint_every=1)])
def test_bf16_llama_blocks_are_predicted(changes, small_config):
    """RMSNorm computes in fp32 under a bf16 model; SwiGLU keeps four hidden tensors."""
    cfg = small_config(max_seq_len=1024, d_model=64, loss_chunk=128, **changes)
    measured = measure_step_memory(cfg, 1024, dtype=torch.bfloat16)["step_peak"]
    predicted = predict_step_memory(cfg, 1024, bytes_per_element=2)
    assert abs(predicted["gradients"] + predicted["activations"] - measured) / measured < 0.08


@pytest.mark.slow
@pytest.mark.parametrize("techniques", [["sdpa"], ["sdpa", "checkpoint"], ["sdpa", "checkpoint", "chunked_loss"]])
def test_llama_3_8b_step_traced_at_4096_tokens_agrees_with_the_prediction(techniques):
    """The memory model at real scale: one bf16 training step of Llama-3-8B's config, traced without memory."""
    from ctxlab import ModelConfig

    cfg = apply_techniques(ModelConfig.from_hf("llama-3-8b"), techniques)
    measured = measure_step_memory(cfg, 4096, dtype=torch.bfloat16)
    predicted = predict_step_memory(cfg, 4096, bytes_per_element=2)
    terms = [(predicted["parameters"] + predicted["optimizer"], measured["states"]),
             (predicted["gradients"] + predicted["activations"], measured["step_peak"]),
             (predicted["total"], measured["total"])]
    assert all(abs(p - m) / m < 0.10 for p, m in terms), terms


@pytest.mark.parametrize("changes", [dict(dropout=0.1), dict(dropout=0.1, checkpoint_every=1)])
def test_dropout_masks_are_counted(changes, small_config):
    cfg = small_config(max_seq_len=4096, d_model=64, **changes)
    measured = measure_step_memory(cfg, 1024)["total"]
    assert abs(predict_step_memory(cfg, 1024)["total"] - measured) / measured < 0.03
    without = predict_step_memory(cfg.replace(dropout=0.0), 1024)["total"]
    assert predict_step_memory(cfg, 1024)["total"] > without  # the masks cost memory


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_naive_attention_is_predicted_at_every_batch_and_kv_sharing(n_kv_heads, small_config):
    """torch.matmul keeps k and v as views for MHA (and MQA at batch 1) and copies them under GQA;
    the peak is the top block's softmax backward, when its MLP's weight gradients already exist."""
    cfg = small_config(max_seq_len=4096, attention="naive", n_kv_heads=n_kv_heads)
    for batch in (1, 2, 3):
        measured = measure_step_memory(cfg, 256, batch)["step_peak"]
        predicted = predict_step_memory(cfg, 256, batch)
        step = predicted["gradients"] + predicted["activations"]
        assert abs(step - measured) / measured < 0.01, (batch, step, measured)
