"""torch's fused kernels with their log-sum-exp: what a ring step needs, equal to SDPA on this CPU."""
import pytest
import torch

from ctxlab.attention import merge_partials, sdpa_attention
from ctxlab.attention_lse import fused_backward, fused_forward, fused_supported


@pytest.mark.parametrize("h_kv", [4, 1])
def test_two_key_ranges_through_the_fused_kernel_give_the_whole_attention_and_its_gradients(h_kv):
    gen = torch.Generator().manual_seed(0)
    q, d_out = (torch.randn(1, 4, 24, 8, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, h_kv, 40, 8, generator=gen) for _ in range(2))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    whole = sdpa_attention(*ref, causal=False)
    whole.backward(d_out)
    halves = [slice(0, 16), slice(16, 40)]
    out, lse = merge_partials(*fused_forward(q, k[:, :, halves[0]], v[:, :, halves[0]], False),
                              *fused_forward(q, k[:, :, halves[1]], v[:, :, halves[1]], False))
    assert (out - whole).abs().max() <= 1e-5
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for s in halves:  # each range's gradient from the whole row's output and log-sum-exp
        a, b, c = fused_backward(q, k[:, :, s], v[:, :, s], d_out, out, lse, False)
        dq += a
        dk[:, :, s] += b
        dv[:, :, s] += c
    for mine, t in zip((dq, dk, dv), ref):
        assert (mine - t.grad).abs().max() <= 1e-5


def test_causal_block_equals_sdpa():
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out, lse = fused_forward(q, k, v, True)
    assert (out - sdpa_attention(q, k, v, causal=True)).abs().max() <= 1e-5 and lse.shape == (1, 2, 16)


def test_dtypes_without_a_fused_kernel_are_refused():
    q = torch.zeros(1, 2, 4, 8, dtype=torch.float16)
    assert not fused_supported(q) and fused_supported(q.float())
    with pytest.raises(ValueError, match="float16/bfloat16 on CUDA"):
        fused_forward(q, q, q, True)
