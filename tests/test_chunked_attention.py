import pytest
import torch

from ctxlab.attention import (attention_with_lse, chunked_attention, chunked_attention_with_lse, chunked_backward,
                              chunked_forward, merge_partials, sdpa_attention)
from ctxlab.measure import measure_peak


def qkv(b=2, h=4, h_kv=2, tq=37, tk=37, d=8):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, h_kv, tk, d, generator=g)
    v = torch.randn(b, h_kv, tk, d, generator=g)
    return [t.requires_grad_(True) for t in (q, k, v)]


def grads_of(fn, q, k, v):
    out = fn(q, k, v)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("h_kv", [4, 2, 1])
@pytest.mark.parametrize("tq,tk,chunks", [(37, 37, (8, 8)), (37, 37, (5, 16)), (7, 37, (4, 6)), (1, 37, (3, 64)),
                                          (37, 37, (64, 64))])
def test_equals_sdpa_outputs_and_gradients(causal, h_kv, tq, tk, chunks):
    q, k, v = qkv(h_kv=h_kv, tq=tq, tk=tk)
    ref, ref_grads = grads_of(lambda *a: sdpa_attention(*a, causal=causal), q, k, v)
    out, out_grads = grads_of(lambda *a: chunked_attention(*a, causal=causal, q_chunk=chunks[0],
                                                           k_chunk=chunks[1]), q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(out_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h_kv", [4, 1])
def test_key_ranges_computed_apart_with_the_final_lse_give_the_whole_attention_and_its_gradients(h_kv):
    """What a ring rank does: forward over two key ranges merged by their lse, then each range's backward
    from the *final* lse and rowsum(dO * O), added into one set of gradients: equal to the whole, exactly."""
    q, k, v = qkv(h_kv=h_kv, tq=24, tk=40)
    out, (dq, dk, dv) = grads_of(lambda *a: sdpa_attention(*a, causal=False), q, k, v)
    halves = [slice(0, 16), slice(16, 40)]
    parts = [chunked_forward(q.detach(), k.detach()[:, :, s], v.detach()[:, :, s], False, q_chunk=8, k_chunk=8)
             for s in halves]
    merged, lse = merge_partials(*parts[0], *parts[1])
    assert (merged - out).abs().max() <= 1e-5
    d_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    delta = (d_out * merged).sum(-1)
    into = (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
    for s in halves:  # views of the shared gradients: each range adds its own columns
        chunked_backward(q.detach(), k.detach()[:, :, s], v.detach()[:, :, s], d_out, lse, delta, False,
                         q_chunk=8, k_chunk=16, into=(into[0], into[1][:, :, s], into[2][:, :, s]))
    for mine, ref in zip(into, (dq, dk, dv)):
        assert (mine - ref).abs().max() <= 1e-5


def test_document_mask_and_lse():
    q, k, v = qkv(h_kv=2, tq=20, tk=20)
    doc = torch.tensor([0] * 7 + [1] * 9 + [2] * 4)
    mask = (doc[:, None] == doc[None, :])[None, None]
    ref, ref_lse = attention_with_lse(q, k, v, causal=True, mask=mask)
    out, lse = chunked_attention_with_lse(q, k, v, causal=True, mask=mask, q_chunk=6, k_chunk=5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    ref_g = torch.autograd.grad((ref * 2).sum() + ref_lse.sum(), (q, k, v))
    out_g = torch.autograd.grad((out * 2).sum() + lse.sum(), (q, k, v))
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rows_with_no_visible_key_are_zero_and_merge_exactly():
    q, k, v = qkv(h_kv=4, tq=12, tk=12)
    left = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    left[..., :5] = True
    with torch.no_grad():
        o1, l1 = chunked_attention_with_lse(q, k, v, causal=True, mask=left, q_chunk=4, k_chunk=4)
        o2, l2 = chunked_attention_with_lse(q, k, v, causal=True, mask=~left, q_chunk=4, k_chunk=4)
        full, lse = chunked_attention_with_lse(q, k, v, causal=True)
        merged, merged_lse = merge_partials(o1, l1, o2, l2)
    assert torch.all(o2[:, :, :5] == 0) and torch.all(torch.isinf(l2[:, :, :5]))
    torch.testing.assert_close(merged, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_lse, lse, atol=1e-5, rtol=1e-5)


def test_memory_is_linear_in_t():
    def peak(t, fn):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, t, 16, generator=g).requires_grad_(True) for _ in range(3))
        return measure_peak(lambda: fn(q, k, v).sum().backward(), "cpu")
    chunked = [peak(t, lambda *a: chunked_attention(*a, q_chunk=64, k_chunk=64)) for t in (256, 512, 1024)]
    assert chunked[2] / chunked[1] < 2.3 and chunked[1] / chunked[0] < 2.3
    naive = peak(1024, lambda *a: attention_with_lse(*a)[0])
    assert chunked[2] < 0.1 * naive


@pytest.mark.parametrize("kw,match", [({"q_chunk": 0}, "q_chunk"), ({"k_chunk": -4}, "k_chunk"),
                                      ({"q_chunk": 2.5}, "q_chunk")])
def test_bad_chunk_sizes(kw, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        chunked_attention(q, k, v, **kw)


def test_bad_shapes_and_masks():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="same shape"):
        chunked_attention(q, k, v[:, :, :-1])
    with pytest.raises(TypeError, match="bool"):
        chunked_attention(q, k, v, mask=torch.ones(1, 1, 37, 37))
