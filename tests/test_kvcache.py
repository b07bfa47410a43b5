import pytest
import torch

from ctxlab import GPT
from ctxlab.kvcache import BlockAllocator, ContiguousKVCache, PagedKVCache, fragmentation_report


def decode(model, tokens, cache, prefill=9):
    with torch.no_grad():
        out = [model(tokens[:, :prefill], cache=cache)[0]]
        out += [model(tokens[:, i:i + 1], cache=cache)[0] for i in range(prefill, tokens.shape[1])]
    return torch.cat(out, dim=1)


def test_paged_decode_equals_contiguous_and_full(small_config):
    cfg = small_config(n_kv_heads=2)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, 64, (3, 21))
    paged = PagedKVCache(cfg, batch_size=3, num_blocks=18, block_size=4)
    a = decode(model, tokens, paged)
    b = decode(model, tokens, ContiguousKVCache(cfg, 3, 32))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(a, model(tokens)[0], atol=1e-5, rtol=1e-5)
    assert paged.seq_len == 21 and [len(t) for t in paged.block_tables] == [6, 6, 6]  # ceil(21 / 4)
    assert paged.nbytes() == 18 * paged.block_bytes()


def test_generate_with_paged_cache(small_config):
    cfg = small_config(n_kv_heads=2)
    model = GPT(cfg).eval()
    prompt = torch.randint(0, 64, (1, 5))
    assert torch.equal(model.generate(prompt, 7), model.generate(prompt, 7, cache=PagedKVCache(cfg, 1, 4, 4)))


def test_allocator_frees_and_reports_exhaustion():
    alloc = BlockAllocator(3)
    blocks = [alloc.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2] and alloc.in_use == 3
    with pytest.raises(RuntimeError, match="exhausted"):
        alloc.allocate()
    alloc.release(blocks[:2])
    assert alloc.in_use == 1 and alloc.allocate() in blocks[:2]
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0)


def test_freed_sequence_blocks_are_reused_and_exhaustion_in_the_model(small_config):
    cfg = small_config(n_kv_heads=2)
    cache = PagedKVCache(cfg, batch_size=2, num_blocks=5, block_size=4)
    cache.reserve(0, 10)  # 3 blocks
    cache.reserve(1, 8)  # 2 blocks
    with pytest.raises(RuntimeError, match="exhausted"):
        cache.reserve(1, 9)
    cache.free(0)
    cache.reserve(1, 9)
    assert cache.allocator.in_use == 3
    model = GPT(cfg).eval()
    small = PagedKVCache(cfg, batch_size=1, num_blocks=2, block_size=4)
    with pytest.raises(RuntimeError, match="exhausted"), torch.no_grad():
        model(torch.zeros(1, 9, dtype=torch.long), cache=small)


def test_fragmentation_report(small_config):
    cfg = small_config(n_kv_heads=2)
    rep = fragmentation_report(cfg, [5, 16, 17, 64], max_len=64, block_size=16)
    per_token = 2 * 2 * 2 * 8 * 4
    assert rep["used_bytes"] == 102 * per_token
    assert rep["contiguous_bytes"] == 4 * 64 * per_token
    assert rep["paged_bytes"] == (1 + 1 + 2 + 4) * 16 * per_token
    assert rep["paged_waste"] < rep["contiguous_waste"]
    with pytest.raises(ValueError, match="lengths"):
        fragmentation_report(cfg, [65], max_len=64)
    with pytest.raises(ValueError, match="lengths"):
        fragmentation_report(cfg, [], max_len=64)


def test_a_filled_cache_holds_what_the_formula_says():
    from ctxlab import ModelConfig, kv_cache_bytes_per_token
    from ctxlab.memory_model import filled_cache_bytes

    for kv in (4, 2, 1):
        cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=kv, max_seq_len=64)
        assert filled_cache_bytes(cfg, 48) == kv_cache_bytes_per_token(cfg) * 48
