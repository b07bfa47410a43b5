import pytest
import torch

from ctxlab import GPT, ContiguousKVCache, kv_cache_bytes_per_token


def test_shapes_and_loss(small_config):
    model = GPT(small_config())
    tokens = torch.randint(0, 64, (3, 20))
    logits, loss = model(tokens, targets=torch.randint(0, 64, (3, 20)))
    assert logits.shape == (3, 20, 64) and loss.ndim == 0
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5  # near-uniform at init
    assert model(tokens)[1] is None


def test_ignore_index(small_config):
    model = GPT(small_config())
    tokens = torch.randint(0, 64, (2, 10))
    targets = torch.full_like(tokens, -100)
    targets[:, -1] = tokens[:, -1]
    _, loss = model(tokens, targets)
    logits, _ = model(tokens)
    expect = torch.nn.functional.cross_entropy(logits[:, -1], tokens[:, -1])
    torch.testing.assert_close(loss, expect)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_causality(backend, small_config):
    model = GPT(small_config(attention=backend)).eval()
    tokens = torch.randint(0, 64, (1, 24))
    changed = tokens.clone()
    changed[0, 15:] = (changed[0, 15:] + 7) % 64
    a, _ = model(tokens)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_backends_agree_in_the_model(n_kv_heads, small_config):
    cfg = small_config(n_kv_heads=n_kv_heads)
    ref = GPT(cfg.replace(attention="naive"))
    other = GPT(cfg.replace(attention="sdpa"))
    other.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 64, (2, 33))
    torch.testing.assert_close(other(tokens)[0], ref(tokens)[0], atol=1e-5, rtol=1e-5)


def test_weight_tying_is_one_tensor(small_config):
    tied = GPT(small_config())
    untied = GPT(small_config(tie_weights=False))
    assert tied.head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 64 * 32


def test_too_long_sequence_raises(small_config):
    model = GPT(small_config())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.zeros(65, dtype=torch.long))
    with pytest.raises(TypeError, match="ModelConfig"):
        GPT({"d_model": 3})


def test_kv_cache_decode_matches_full_forward(small_config):
    cfg = small_config(n_kv_heads=2)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = ContiguousKVCache(cfg, batch_size=2, max_len=16)
        pre, _ = model(tokens[:, :8], cache=cache)
        steps = [model(tokens[:, i:i + 1], cache=cache)[0] for i in range(8, 12)]
    torch.testing.assert_close(torch.cat([pre] + steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 12
    assert cache.nbytes() == kv_cache_bytes_per_token(cfg) * 16 * 2


def test_generate_with_and_without_cache_agree(small_config):
    cfg = small_config()
    model = GPT(cfg).eval()
    prompt = torch.randint(0, 64, (1, 5))
    a = model.generate(prompt, 6)
    b = model.generate(prompt, 6, cache=ContiguousKVCache(cfg, 1, 11))
    assert torch.equal(a, b) and a.shape == (1, 11)


def test_cache_overflow_raises(small_config):
    cfg = small_config()
    model = GPT(cfg).eval()
    cache = ContiguousKVCache(cfg, 1, 4)
    with pytest.raises(ValueError, match="overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
