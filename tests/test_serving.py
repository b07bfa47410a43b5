"""Serving: quantised, windowed and shared caches, chunked prefill and the decode roofline's model."""
import pytest
import torch

from ctxlab import GPT
from ctxlab.bench.decode import decode_roofline, fit_line
from ctxlab.flops import count_flops
from ctxlab.kvcache import ContiguousKVCache, PagedKVCache, kv_cache_bytes_per_token
from ctxlab.kvcache_quant import QuantizedKVCache, dequantize, quantize
from ctxlab.kvcache_window import SinkWindowCache
from ctxlab.serving import crossover_context, decode_bytes, decode_flops, prefill, weight_bytes_read


@pytest.fixture
def model(small_config):
    torch.manual_seed(0)
    return GPT(small_config(n_kv_heads=2)).eval()


def tokens(batch=2, n=40, seed=1):
    return torch.randint(64, (batch, n), generator=torch.Generator().manual_seed(seed))


def one_by_one(model, x, cache):
    with torch.no_grad():
        return torch.cat([model(x[:, i:i + 1], cache=cache)[0] for i in range(x.shape[1])], dim=1)


# --- quantisation ---------------------------------------------------------------------------------------

def test_int8_round_trip_is_within_half_a_step():
    x = torch.randn(3, 5, 17, 32) * torch.logspace(-2, 1, 32)  # channels of very different sizes
    for dim in (-1, 2):
        q, scale = quantize(x, dim, "int8")
        assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
        assert ((dequantize(q, scale) - x).abs() <= scale / 2 + 1e-7).all()


def test_fp8_round_trip_keeps_three_mantissa_bits():
    x = torch.randn(4, 64, 32)
    q, scale = quantize(x, -1, "fp8")
    assert q.dtype == torch.float8_e4m3fn
    err = (dequantize(q, scale) - x).abs()
    assert (err <= x.abs() * 2 ** -4 + scale * 2 ** -10).all()  # half a unit in the last of 3 bits; subnormals


def test_keys_per_channel_lose_less_where_channels_differ_in_size():
    """KIVI's reason: an outlier channel sets a per-token scale for every channel of that token."""
    k = torch.randn(1, 1, 64, 32)
    k[..., 3] *= 50
    per_token = (dequantize(*quantize(k, -1)) - k).abs().mean()
    per_channel = (dequantize(*quantize(k, 2)) - k).abs().mean()
    assert per_channel < per_token / 5


@pytest.mark.parametrize("mode,tol", [("int8", 0.05), ("kivi", 0.05), ("fp8", 0.3)])
@pytest.mark.parametrize("chunk", [None, 7, 1])
def test_quantised_cache_logits_stay_close_to_full_precision(model, mode, tol, chunk):
    x = tokens()
    with torch.no_grad():
        full = model(x)[0]
    cache = QuantizedKVCache(model.cfg, 2, 64, mode, group=8)
    got = prefill(model, x, cache, chunk, all_logits=True)
    assert 0 < (got - full).abs().max() < tol * full.abs().max()
    assert cache.seq_len == 40


def test_kivi_quantises_whole_groups_per_channel_and_keeps_the_rest_exact(model):
    cache = QuantizedKVCache(model.cfg, 2, 64, "kivi", group=8)
    k, v = torch.randn(2, 2, 13, 8), torch.randn(2, 2, 13, 8)
    got_k, _ = cache.write(0, 0, k[:, :, :5], v[:, :, :5])
    assert torch.equal(got_k, k[:, :, :5])  # the group still filling is kept as it came
    got_k, _ = cache.write(0, 5, k[:, :, 5:], v[:, :, 5:])
    q, scale = quantize(k[:, :, :8], 2)
    torch.testing.assert_close(got_k[:, :, :8], dequantize(q, scale), atol=0, rtol=0)
    assert torch.equal(got_k[:, :, 8:], k[:, :, 8:13]) and cache.quantized[0] == 8


@pytest.mark.parametrize("mode", ["int8", "kivi", "fp8"])
def test_quantised_cache_bytes_are_exact(small_config, mode):
    cfg = small_config(n_kv_heads=2)
    cache = QuantizedKVCache(cfg, 3, 64, mode, group=16)
    head_dim, per = cfg.head_dim, cfg.n_layers * cfg.n_kv_heads
    k_scales = head_dim / 16 if mode == "kivi" else 1
    assert cache.bytes_per_token() == per * (2 * head_dim + 4 + 4 * k_scales)
    residual = cfg.n_layers * 3 * cfg.n_kv_heads * 16 * head_dim * 4 if mode == "kivi" else 0
    assert cache.nbytes() == 3 * 64 * cache.bytes_per_token() + residual
    assert cache.bytes_per_token() / kv_cache_bytes_per_token(cfg) < 0.4  # against fp32


# --- sliding window with attention sinks ----------------------------------------------------------------

@pytest.mark.parametrize("position_encoding", ["rope", "alibi"])
def test_window_cache_equals_a_full_cache_while_the_dialogue_fits(small_config, position_encoding):
    torch.manual_seed(0)
    model = GPT(small_config(position_encoding=position_encoding)).eval()
    x = tokens(n=36)
    with torch.no_grad():
        full = model(x)[0]
    cache = SinkWindowCache(model.cfg, 2, 4, 32, model.rope)
    torch.testing.assert_close(one_by_one(model, x, cache), full, atol=1e-5, rtol=1e-5)
    assert cache.evicted == 0 and cache.seq_len == 36


def test_window_cache_keeps_the_sinks_and_the_last_tokens_in_constant_memory(model):
    cache = SinkWindowCache(model.cfg, 2, 4, 12, model.rope)
    before = cache.nbytes()
    x = tokens(n=200)  # past the model's 64 positions: slots, not places in the text, are the positions
    one_by_one(model, x, cache)
    assert cache.seq_len == 16 and cache.seen == 200 and cache.evicted == 184 and cache.nbytes() == before
    # what a window of the same tokens attends to: the sinks, then the last 12 at slots 4..15
    fresh = SinkWindowCache(model.cfg, 2, 4, 12, model.rope)
    with torch.no_grad():
        model(x[:, :4], cache=fresh)
        model(x[:, -12:], cache=fresh)
    torch.testing.assert_close(cache.k[0], fresh.k[0], atol=1e-6, rtol=1e-6)  # layer 0: keys of tokens alone


def test_window_step_after_the_window_fills_sees_sinks_and_window(small_config):
    """One layer, so a held key depends on its token only: the last query must see exactly the sinks and
    the last 8 tokens, at slots 0..9."""
    torch.manual_seed(0)
    model = GPT(small_config(n_layers=1)).eval()
    x = tokens(n=30)
    cache = SinkWindowCache(model.cfg, 2, 2, 8, model.rope)
    last = one_by_one(model, x, cache)[:, -1]
    kept = torch.cat([x[:, :2], x[:, -8:]], dim=1)  # the same tokens at the same slots, read at once
    with torch.no_grad():
        torch.testing.assert_close(last, model(kept)[0][:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sinks=8, window=4), "window must be at least"), (dict(sinks=-1, window=4), "sinks"),
    (dict(sinks=2, window=0), "window"), (dict(sinks=4, window=64), "max_seq_len"),
    (dict(sinks=2, window=8, rope=None), "rope")])
def test_window_cache_bad_arguments(model, kwargs, match):
    kwargs = {"rope": model.rope, **kwargs}
    with pytest.raises(ValueError, match=match):
        SinkWindowCache(model.cfg, 1, **kwargs)


def test_window_refuses_a_step_longer_than_itself(model):
    with pytest.raises(ValueError, match="window=8"):
        model(tokens(n=9), cache=SinkWindowCache(model.cfg, 2, 2, 8, model.rope))


# --- chunked prefill and shared prompts -----------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 5, 16, 40])
def test_chunked_prefill_gives_one_shot_logits(model, chunk):
    x = tokens()
    with torch.no_grad():
        full = model(x)[0]
    got = prefill(model, x, ContiguousKVCache(model.cfg, 2, 64), chunk, all_logits=True)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    last = prefill(model, x, ContiguousKVCache(model.cfg, 2, 64), chunk)
    assert last.shape == (2, 1, 64) and torch.equal(last, got[:, -1:])


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_prefill_chunk_must_be_positive(model, chunk):
    with pytest.raises(ValueError, match="chunk"):
        prefill(model, tokens(), ContiguousKVCache(model.cfg, 2, 64), chunk)


def test_sessions_share_a_prompt_and_copy_only_the_block_they_write(model):
    prompt, replies = tokens(1, 21, 2), tokens(3, 9, 3)
    base = PagedKVCache(model.cfg, 1, 32, block_size=4)
    prefill(model, prompt, base)
    sessions = base.fork(3)
    assert base.allocator.in_use == 6  # ceil(21 / 4), held by four tables
    got = prefill(model, replies, sessions, all_logits=True)
    with torch.no_grad():
        want = model(torch.cat([prompt.expand(3, -1), replies], 1))[0][:, 21:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # each session copied the prompt's half-full last block, then took 2 of its own: 6 + 3 x 3
    assert sessions.copied_blocks == 3 and base.allocator.in_use == 6 + 3 * 3
    with torch.no_grad():  # the prompt's own blocks are untouched: it still continues as before
        again = prefill(model, replies[:1], base, all_logits=True)
    torch.testing.assert_close(again, want[:1], atol=1e-5, rtol=1e-5)


def test_a_full_pool_refuses_and_overwrites_nothing(model):
    cache = PagedKVCache(model.cfg, 2, 3, block_size=4)
    prefill(model, tokens(n=4), cache)
    held = cache.k.clone()
    with pytest.raises(RuntimeError, match="num_blocks"):
        prefill(model, tokens(n=8, seed=4), cache)
    assert torch.equal(cache.k[:, :2], held[:, :2])  # the blocks in use before the refusal are intact
    with pytest.raises(ValueError, match="one sequence"):
        cache.fork(2)


# --- the decode roofline's model ------------------------------------------------------------------------

def test_decode_flops_equal_torchs_count(small_config):
    cfg = small_config(n_kv_heads=2, attention="naive")
    model = GPT(cfg).eval()
    cache = ContiguousKVCache(cfg, 2, 64)
    prefill(model, tokens(), cache)
    with torch.no_grad():
        assert count_flops(lambda: model(tokens(n=1), cache=cache)) == decode_flops(cfg, 40, 2)  # 40 cached


def test_decode_bytes_and_crossover(small_config):
    cfg = small_config(n_kv_heads=2)
    params = sum(p.numel() for p in GPT(cfg).parameters())
    # untied embedding: only the batch's rows are read; the head reads all of its matrix
    assert weight_bytes_read(cfg.replace(tie_weights=False), 3) == 4 * (sum(
        p.numel() for p in GPT(cfg.replace(tie_weights=False)).parameters()) - 64 * 32 + 3 * 32)
    assert weight_bytes_read(cfg, 1) == 4 * params
    b = decode_bytes(cfg, 100, batch=2)
    assert b["kv"] == 2 * 100 * kv_cache_bytes_per_token(cfg) and b["total"] == b["kv"] + b["weights"]
    t_x = crossover_context(cfg, batch=2)
    kv_at = decode_bytes(cfg, 1, batch=2)["kv"] * t_x
    assert abs(kv_at - weight_bytes_read(cfg, 2)) < 1e-6 * kv_at


def test_fit_line_and_a_tiny_roofline(small_config):
    assert fit_line([1, 2, 3], [3, 5, 7]) == pytest.approx((1.0, 2.0))
    r = decode_roofline(small_config(), (8, 32), rounds=2, steps=2)
    assert [row["context"] for row in r["rows"]] == [8, 32] and r["bandwidth"]["bytes_per_s"] > 0
    assert r["crossover_predicted"] == pytest.approx(crossover_context(small_config()))
    with pytest.raises(ValueError, match="two"):
        fit_line([1], [2])


@pytest.mark.parametrize("kwargs,match", [(dict(mode="int4"), "mode must be one of"), (dict(group=0), "group"),
                                          (dict(max_len=0), "max_len")])
def test_quantised_cache_bad_arguments(small_config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizedKVCache(small_config(), 1, **{"max_len": 8, **kwargs})


def test_quantised_cache_refuses_to_overflow(model):
    cache = QuantizedKVCache(model.cfg, 2, 8, "kivi", group=4)
    with pytest.raises(ValueError, match="max_len=8"):
        prefill(model, tokens(n=9), cache)
