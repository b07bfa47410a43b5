import pytest
import torch

from ctxlab.attention import (BACKENDS, attention, attention_with_lse, causal_mask, merge_partials,
                              naive_attention, sdpa_attention)


def qkv(b=2, h=4, h_kv=4, tq=16, tk=16, d=8, grad=False):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, h, tq, d, generator=g, dtype=torch.float64).float()
    k = torch.randn(b, h_kv, tk, d, generator=g, dtype=torch.float64).float()
    v = torch.randn(b, h_kv, tk, d, generator=g, dtype=torch.float64).float()
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("h_kv", [4, 2, 1])
@pytest.mark.parametrize("tq", [16, 5, 1])
def test_backends_agree_in_fp32(causal, h_kv, tq):
    q, k, v = qkv(h_kv=h_kv, tq=tq)
    outs = {name: fn(q, k, v, causal=causal) for name, fn in BACKENDS.items()}
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["naive"], atol=1e-5, rtol=1e-5, msg=name)


def test_backends_agree_on_gradients():
    grads = {}
    for name in BACKENDS:
        q, k, v = qkv(h_kv=2, grad=True)
        attention(q, k, v, backend=name).square().sum().backward()
        grads[name] = (q.grad, k.grad, v.grad)
    for name, g in grads.items():
        for a, b in zip(g, grads["naive"]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_rows_ignore_the_future():
    q, k, v = qkv()
    out = naive_attention(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10:] += 5.0
    v2[:, :, 10:] -= 3.0
    out2 = naive_attention(q, k2, v2, causal=True)
    torch.testing.assert_close(out[:, :, :10], out2[:, :, :10])
    assert not torch.allclose(out[:, :, 10:], out2[:, :, 10:])


def test_decode_mask_is_bottom_right_aligned():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_boolean_mask_and_lse_merge_is_exact():
    q, k, v = qkv(tq=12, tk=12)
    full, lse = attention_with_lse(q, k, v, causal=True)
    ref = sdpa_attention(q, k, v, causal=True)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    # split keys into two halves, attend separately with the causal mask, merge
    cm = causal_mask(12, 12)[None, None]
    left = torch.zeros_like(cm); left[..., :5] = True
    o1, l1 = attention_with_lse(q, k, v, causal=False, mask=cm & left)
    o2, l2 = attention_with_lse(q, k, v, causal=False, mask=cm & ~left)
    merged, lse_m = merge_partials(o1, l1, o2, l2)
    torch.testing.assert_close(merged, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_m, lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args,err,match", [
    ((torch.zeros(2, 4, 8), torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)), ValueError, "q must be a 4-d"),
    ((torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 9, 8)), ValueError, "same shape"),
    ((torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError, "multiple"),
    ((torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 4), torch.zeros(1, 4, 8, 4)), ValueError, "head_dim"),
    ((torch.zeros(1, 4, 9, 8), torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)), ValueError, "more positions"),
])
def test_bad_shapes(args, err, match):
    for fn in BACKENDS.values():
        with pytest.raises(err, match=match):
            fn(*args)


def test_non_boolean_mask_and_unknown_backend():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="bool"):
        naive_attention(q, k, v, mask=torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(q, k, v, backend="nope")


def test_the_backend_table_is_what_a_config_may_name_and_read_only():
    from ctxlab.config import ATTENTION_BACKENDS

    assert tuple(BACKENDS) == ATTENTION_BACKENDS
    with pytest.raises(TypeError):
        BACKENDS["ring"] = naive_attention  # a backend is chosen when a model is built, never added here
