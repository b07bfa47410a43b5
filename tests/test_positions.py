import math

import pytest
import torch

from ctxlab import GPT, ModelConfig
from ctxlab.attention import naive_attention, sdpa_attention
from ctxlab.positions import (ROPE_SCALINGS, RotaryEmbedding, alibi_bias, alibi_slopes, rope_dynamic_ntk,
                              rope_inv_freq, rope_llama3, rope_ntk, rope_pi, rope_yarn, rope_yarn_paper, scaled_rope,
                              yarn_attention_factor, yarn_channel_ramp, yarn_paper_ramp)

D, B, L = 32, 10000.0, 128


def test_inv_freq_worked_values():
    inv = rope_inv_freq(4, 10000.0)  # theta_i = 10000^(-2i/4): 1 and 1/100
    torch.testing.assert_close(inv, torch.tensor([1.0, 0.01], dtype=torch.float64))


def test_pi_divides_every_frequency_by_the_scale():
    inv, factor = rope_pi(D, B, 4.0, L)
    torch.testing.assert_close(inv, rope_inv_freq(D, B) / 4)
    assert factor == 1.0
    # position m under PI equals position m / s without it
    pos = torch.arange(0, 512, 4)
    torch.testing.assert_close(pos.double()[:, None] * inv, (pos // 4).double()[:, None] * rope_inv_freq(D, B))


def test_ntk_worked_values():
    inv, factor = rope_ntk(4, 10000.0, 4.0, L)  # b' = 10000 * 4^(4/2) = 160000
    torch.testing.assert_close(inv, torch.tensor([1.0, 1 / 400.0], dtype=torch.float64))
    assert factor == 1.0
    inv32, _ = rope_ntk(D, B, 8.0, L)
    base = rope_inv_freq(D, B)
    assert inv32[0] == base[0]  # the fastest channel is untouched
    # the slowest channel is divided by s^((d-2)/d * d/(d-2)) = s exactly ... times b'^(-(d-2)/d): check formula
    expect = (B * 8.0 ** (D / (D - 2))) ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    torch.testing.assert_close(inv32, expect)
    assert math.isclose(float(base[-1] / inv32[-1]), 8.0, rel_tol=1e-9)


@pytest.mark.parametrize("orig", [128, 2048])
def test_yarn_ramp_and_frequencies(orig):
    theta = rope_inv_freq(D, B)
    r = orig / (2 * math.pi / theta)  # turns over the trained length
    gamma = yarn_paper_ramp(D, B, orig)
    for i in range(D // 2):
        want = 0.0 if r[i] < 1 else 1.0 if r[i] > 32 else (r[i] - 1) / 31
        assert math.isclose(float(gamma[i]), float(want), abs_tol=1e-12)
    inv, factor = rope_yarn_paper(D, B, 4.0, orig)
    fast, slow = r > 32, r < 1
    assert slow.any() and (~fast & ~slow).any() and fast.any() == (orig == 2048)
    torch.testing.assert_close(inv[fast], theta[fast])  # high frequencies: extrapolate
    torch.testing.assert_close(inv[slow], theta[slow] / 4)  # low frequencies: interpolate
    mid = ~fast & ~slow
    assert torch.all(inv[mid] < theta[mid]) and torch.all(inv[mid] > theta[mid] / 4)
    assert math.isclose(factor, 0.1 * math.log(4.0) + 1)
    assert math.isclose(yarn_attention_factor(1.0), 1.0) and math.isclose(yarn_attention_factor(16.0), 1.2772588722)


@pytest.mark.parametrize("orig", [128, 2048])
def test_the_reference_yarn_blends_by_its_ramp(orig):
    theta, keep = rope_inv_freq(D, B), yarn_channel_ramp(D, B, orig)
    inv, factor = rope_yarn(D, B, 4.0, orig)
    torch.testing.assert_close(inv, (1 - keep) * theta / 4 + keep * theta)
    assert keep[0] == 1 and keep[-1] == 0 and torch.all(keep[:-1] >= keep[1:])  # fast kept, slow interpolated
    assert math.isclose(factor, 0.1 * math.log(4.0) + 1)


def test_the_reference_ramp_is_linear_in_the_pair_index_not_in_turns():
    keep = yarn_channel_ramp(128, 10000.0, 2048)
    step = keep[:-1] - keep[1:]
    inside = (keep > 0) & (keep < 1)
    assert inside.sum() >= 2 and torch.allclose(step[inside[:-1]], step[inside[:-1]][0].expand(int(inside.sum())))
    paper = yarn_paper_ramp(128, 10000.0, 2048)
    assert (keep - paper).abs().max() > 0.3  # the two YaRNs differ by much where the ramp runs


def test_llama3_keeps_fast_pairs_and_interpolates_slow_ones():
    theta = rope_inv_freq(128, 500000.0)
    inv, factor = rope_llama3(128, 500000.0, 8.0, 8192)
    wavelength = 2 * math.pi / theta
    torch.testing.assert_close(inv[wavelength < 8192 / 4], theta[wavelength < 8192 / 4])
    torch.testing.assert_close(inv[wavelength > 8192], theta[wavelength > 8192] / 8)
    assert factor == 1.0
    with pytest.raises(ValueError, match="low_freq_factor"):
        rope_llama3(128, 500000.0, 8.0, 8192, low_freq_factor=4.0, high_freq_factor=1.0)


def test_dynamic_ntk_follows_the_length():
    inv_short, f = rope_dynamic_ntk(D, B, 1.0, L, seq_len=100)
    torch.testing.assert_close(inv_short, rope_inv_freq(D, B))
    inv_long, f = rope_dynamic_ntk(D, B, 1.0, L, seq_len=512)
    torch.testing.assert_close(inv_long, rope_ntk(D, B, 4.0, L)[0])  # factor 1: NTK at s = T / L
    assert f == 1.0
    # transformers' factor s: the base grows as if T were read at s T / L - (s - 1) times L
    torch.testing.assert_close(rope_dynamic_ntk(D, B, 2.0, L, seq_len=512)[0], rope_ntk(D, B, 7.0, L)[0])


def test_scaled_rope_dispatch_and_scale_one_is_identity():
    for name in ("pi", "ntk", "yarn", "yarn_paper", "llama3"):
        inv, f = scaled_rope(name, D, B, 1.0, L)
        torch.testing.assert_close(inv, rope_inv_freq(D, B))
        assert f == 1.0


@pytest.mark.parametrize("call,match", [
    (lambda: rope_pi(D, B, 0.5, L), "scale"),
    (lambda: rope_yarn(D, B, 0.9, L), "scale"),
    (lambda: scaled_rope("rope2", D, B, 2.0, L), "scaling"),
    (lambda: rope_pi(7, B, 2.0, L), "head_dim"),
    (lambda: rope_ntk(30 + 1, B, 2.0, L), "head_dim"),
    (lambda: rope_pi(D, B, 2.0, 0), "original_len"),
    (lambda: rope_yarn_paper(D, B, 2.0, L, alpha=32, beta=1), "alpha"),
    (lambda: rope_yarn_paper(D, B, 2.0, L, alpha=-1, beta=32), "alpha"),
    (lambda: rope_yarn(D, B, 2.0, L, beta_fast=1, beta_slow=32), "beta_slow"),
    (lambda: rope_dynamic_ntk(D, B, 1.0, L), "seq_len"),
    (lambda: alibi_slopes(0), "n_heads"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_positions_beyond_the_scaled_maximum_raise():
    rope = RotaryEmbedding(D, B, scaling="pi", scale=2.0, original_len=L)
    rope(torch.arange(2 * L))
    with pytest.raises(ValueError, match="scaled maximum"):
        rope(torch.arange(2 * L + 1))
    with pytest.raises(ValueError, match="max_seq_len"):
        ModelConfig(rope_scaling="yarn", rope_scale=2.0, rope_original_len=64, max_seq_len=129)


@pytest.mark.parametrize("changes,field", [
    ({"rope_scaling": "pi", "rope_scale": 2.0}, "rope_original_len"),
    ({"rope_scale": 2.0}, "rope_scale"),
    ({"position_encoding": "learned"}, "position_encoding"),
    ({"position_encoding": "alibi", "rope_scaling": "pi", "rope_scale": 2.0, "rope_original_len": 512},
     "position_encoding"),
])
def test_config_checks_positions(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_yarn_attention_factor_scales_the_logits():
    rope = RotaryEmbedding(D, B, scaling="yarn", scale=4.0, original_len=L)
    cos, sin = rope(torch.arange(5))
    assert math.isclose(float((cos ** 2 + sin ** 2)[0, 0]), yarn_attention_factor(4.0) ** 2, rel_tol=1e-6)
    assert set(ROPE_SCALINGS) == {"none", "pi", "ntk", "yarn", "yarn_paper", "dynamic_ntk", "llama3"}


def test_alibi_slopes_and_bias():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    assert alibi_slopes(6).shape == (6,)  # not a power of two: the paper's interleaving rule
    bias = alibi_bias(alibi_slopes(4), torch.arange(3), torch.arange(3))
    assert bias.shape == (1, 4, 3, 3)
    assert float(bias[0, 0, 2, 0]) == -0.5 and float(bias[0, 0, 2, 2]) == 0.0


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_attention_bias_agrees_across_backends(n_kv_heads):
    q = torch.randn(2, 4, 9, 8)
    k, v = torch.randn(2, n_kv_heads, 9, 8), torch.randn(2, n_kv_heads, 9, 8)
    bias = alibi_bias(alibi_slopes(4), torch.arange(9), torch.arange(9))
    a = naive_attention(q, k, v, bias=bias)
    torch.testing.assert_close(sdpa_attention(q, k, v, bias=bias), a, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, naive_attention(q, k, v))
    with pytest.raises(ValueError, match="bias"):
        naive_attention(q, k, v, bias=bias[..., :-1])


@pytest.mark.parametrize("scaling", ["none", "pi", "ntk", "yarn", "yarn_paper", "dynamic_ntk", "llama3"])
def test_models_with_each_position_scheme_run(scaling):
    extra = {} if scaling == "none" else {"rope_scale": 2.0, "rope_original_len": 32}
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=64, rope_scaling=scaling,
                      **extra)
    logits, _ = GPT(cfg)(torch.randint(0, 64, (2, 64)))
    assert logits.shape == (2, 64, 64) and torch.isfinite(logits).all()


def test_alibi_model_is_causal_and_runs_past_its_training_length():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=64, position_encoding="alibi",
                      attention="naive")
    model = GPT(cfg).eval()
    tokens = torch.randint(0, 64, (1, 40))
    changed = tokens.clone()
    changed[0, 30:] = (changed[0, 30:] + 1) % 64
    torch.testing.assert_close(model(tokens)[0][:, :30], model(changed)[0][:, :30])
    other = GPT(cfg.replace(attention="sdpa")).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(tokens)[0], model(tokens)[0], atol=1e-5, rtol=1e-5)
