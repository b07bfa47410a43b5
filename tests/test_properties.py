"""Equivalences that must hold on any valid input, checked on inputs drawn by hypothesis."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxlab import GPT, ContiguousKVCache, reference_config
from ctxlab.attention import chunked_attention, sdpa_attention
from ctxlab.clipping import clip_by_global_norm, clip_by_value
from ctxlab.kvcache import PagedKVCache
from ctxlab.packing import document_mask, pack_documents

FAST = settings(max_examples=20, deadline=None)


@FAST
@given(b=st.integers(1, 2), h_kv=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]), t=st.integers(1, 40),
       d=st.sampled_from([4, 8]), qc=st.integers(1, 17), kc=st.integers(1, 17), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_chunked_equals_sdpa_with_gradients(b, h_kv, group, t, d, qc, kc, causal, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h_kv * group, t, d, generator=g, requires_grad=True)
    k = torch.randn(b, h_kv, t, d, generator=g, requires_grad=True)
    v = torch.randn(b, h_kv, t, d, generator=g, requires_grad=True)
    w = torch.randn(b, h_kv * group, t, d, generator=g)
    out = chunked_attention(q, k, v, causal=causal, q_chunk=qc, k_chunk=kc)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = sdpa_attention(q, k, v, causal=causal)
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


SMALL = reference_config(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64)
MODEL = GPT(SMALL).eval()


@FAST
@given(prompt=st.integers(1, 12), steps=st.integers(0, 8), block=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_paged_cache_equals_contiguous(prompt, steps, block, seed):
    tokens = torch.randint(0, 32, (2, prompt + steps), generator=torch.Generator().manual_seed(seed))
    n_blocks = 2 * (-(-(prompt + steps) // block))

    def decode(cache):
        with torch.no_grad():
            outs = [MODEL(tokens[:, :prompt], cache=cache)[0]]
            outs += [MODEL(tokens[:, i:i + 1], cache=cache)[0] for i in range(prompt, prompt + steps)]
        return torch.cat(outs, dim=1)

    paged = decode(PagedKVCache(SMALL, batch_size=2, num_blocks=n_blocks, block_size=block))
    contiguous = decode(ContiguousKVCache(SMALL, 2, prompt + steps))
    torch.testing.assert_close(paged, contiguous, atol=1e-6, rtol=1e-6)


@FAST
@given(lengths=st.lists(st.integers(1, 16), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_packed_documents_equal_separate_ones(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(1, 32, (n,), generator=g) for n in lengths]
    packed = pack_documents(docs, 16)
    with torch.no_grad():
        logits, _ = MODEL(packed.tokens, positions=packed.positions, mask=document_mask(packed.doc_ids))
        for i, doc in enumerate(docs):
            where = packed.doc_ids == i
            row = int(where.any(1).nonzero()[0])
            torch.testing.assert_close(logits[row][where[row]], MODEL(doc[None])[0][0], atol=1e-5, rtol=1e-5)


@FAST
@given(shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4),
       max_norm=st.floats(1e-3, 10.0), norm_type=st.sampled_from([1.0, 2.0, 3.0, float("inf")]),
       scale=st.floats(1e-3, 100.0), seed=st.integers(0, 2**16))
def test_clipping_equals_torch(shapes, max_norm, norm_type, scale, seed):
    g = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=g) * scale
        b.grad = a.grad.clone()
    n1 = clip_by_global_norm(ours, max_norm, norm_type=norm_type)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    torch.testing.assert_close(n1, n2, atol=1e-6, rtol=1e-6)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6)
    clip_by_value(ours, max_norm)
    torch.nn.utils.clip_grad_value_(theirs, max_norm)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0)
