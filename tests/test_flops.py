import pytest
import torch

from ctxlab import GPT, reference_config
from ctxlab.flops import (attention_flops_per_token, count_training_flops, matmul_params,
                          model_flops_utilisation, training_flops_per_token)


@pytest.mark.parametrize("changes", [
    dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=128),
    dict(vocab_size=100, d_model=64, n_layers=3, n_heads=4, n_kv_heads=1, max_seq_len=128),
    dict(vocab_size=50, d_model=48, n_layers=1, n_heads=6, n_kv_heads=2, max_seq_len=128, tie_weights=False),
])
@pytest.mark.parametrize("seq_len", [16, 64])
def test_formula_matches_flop_counter(changes, seq_len):
    cfg = reference_config(**changes, attention="naive")
    model = GPT(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, seq_len))
    counted = count_training_flops(model, tokens, tokens)
    predicted = training_flops_per_token(cfg, seq_len) * tokens.numel()
    assert abs(counted - predicted) / counted < 0.02
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    assert matmul_params(cfg) == linear + (cfg.d_model * cfg.vocab_size if cfg.tie_weights else 0)


def test_causal_skip_halves_attention_and_bad_inputs():
    cfg = reference_config()
    assert attention_flops_per_token(cfg, 1024, causal_skip=True) * 2 == attention_flops_per_token(cfg, 1024)
    with pytest.raises(ValueError, match="seq_len"):
        attention_flops_per_token(cfg, 0)
    with pytest.raises(ValueError, match="peak"):
        model_flops_utilisation(1.0, 1.0, 0.0)
    assert model_flops_utilisation(1000.0, 1e9, 1e13) == pytest.approx(0.1)


def test_arithmetic_intensity_limits_and_roofline():
    from ctxlab.flops import attention_intensity, mlp_intensity, roofline_rate
    # fused attention: T / bytes exactly; naive levels off below head_dim / bytes
    assert attention_intensity(4096, 64, 2) == pytest.approx(4096 / 2)
    assert attention_intensity(1 << 16, 64, 2, fused=False) < 64 / 2
    assert attention_intensity(1 << 16, 64, 2, fused=False) > 0.99 * 64 / 2
    assert attention_intensity(256, 64, 2, fused=False) < attention_intensity(256, 64, 2)
    # the MLP: about 2 n / bytes for few tokens, 2 d f / (d + f) / bytes for many
    assert mlp_intensity(1, 1024, 4, 2) == pytest.approx(1.0, rel=0.01)
    assert mlp_intensity(10**8, 1024, 4, 2) == pytest.approx(2 * 1024 * 4096 / (1024 + 4096) / 2, rel=1e-3)
    assert roofline_rate(10.0, 1e15, 1e12) == 1e13 and roofline_rate(1e4, 1e15, 1e12) == 1e15
    with pytest.raises(ValueError, match="seq_len"):
        attention_intensity(0, 64)
    with pytest.raises(ValueError, match="d_model"):
        mlp_intensity(8, 2.5)
    with pytest.raises(ValueError, match="bytes_per_second"):
        roofline_rate(1.0, 1e12, 0)


def test_recompute_flops_are_one_more_forward_of_the_recomputed_blocks():
    from ctxlab.flops import recompute_flops_per_token

    cfg = reference_config(attention="naive", d_model=64, n_layers=4, n_heads=2, max_seq_len=256)
    assert recompute_flops_per_token(cfg, 256) == 0  # no checkpointing, nothing repeated
    tokens = torch.randint(0, cfg.vocab_size, (1, 256))
    plain = count_training_flops(GPT(cfg), tokens, tokens) / 256
    for every in (1, 2):
        ckpt = cfg.replace(checkpoint_every=every)
        extra = count_training_flops(GPT(ckpt), tokens, tokens) / 256 - plain
        assert recompute_flops_per_token(ckpt, 256) == pytest.approx(extra, rel=1e-6)  # exact count
    assert recompute_flops_per_token(cfg.replace(checkpoint_every=2), 256) * 2 == \
        recompute_flops_per_token(cfg.replace(checkpoint_every=1), 256)
