import pytest
import torch

from ctxlab.config import IGNORE
from ctxlab.tasks import MARK, VOCAB_SIZE, language_batch, passkey_batch, passkey_batches


@pytest.mark.parametrize("seq_len", [40, 128, 515])
def test_key_is_at_the_stated_depth(seq_len):
    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    b = passkey_batch(5, seq_len, seed=3, depth=depths)
    assert b.tokens.shape == (5, seq_len) and b.tokens.max() < VOCAB_SIZE
    for i in range(5):
        p = int(b.key_pos[i])
        assert b.tokens[i, p] == MARK
        torch.testing.assert_close(b.tokens[i, p + 1:p + 6], b.key[i])
        torch.testing.assert_close(b.tokens[i, -5:], b.key[i])  # asked at the end, after the marker
        assert b.tokens[i, -6] == MARK
        assert abs(float(b.depth[i]) - depths[i]) <= 4 / (seq_len - 12) + 1e-9
        # the key's digits appear nowhere else
        digits = (b.tokens[i] < MARK).nonzero().flatten().tolist()
        assert digits == list(range(p + 1, p + 6)) + list(range(seq_len - 5, seq_len))
        torch.testing.assert_close(b.targets[i, b.answer_pos], b.key[i])
        assert torch.all(b.targets[i, p:p + 5] == IGNORE)
    assert b.depth[0] == 0 and b.depth[-1] == 1


def test_same_seed_same_data_and_different_seed_differs():
    a, b, c = (passkey_batch(4, 64, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.key, b.key)
    assert not torch.equal(a.tokens, c.tokens)
    x1, _ = language_batch(3, 50, seed=1)
    x2, _ = language_batch(3, 50, seed=1)
    assert torch.equal(x1, x2)
    get = passkey_batches(2, 32, seed=5)
    assert torch.equal(get(3)[0], passkey_batch(2, 32, seed=8).tokens)


def test_language_is_made_of_repeated_words():
    tokens, targets = language_batch(2, 64, seed=0, n_words=4, word_len=4)
    assert torch.equal(targets[:, :-1], tokens[:, 1:]) and torch.all(targets[:, -1] == IGNORE)
    words = {tuple(w) for w in tokens[0].view(-1, 4).tolist()}
    assert len(words) <= 4  # 16 words drawn from a dictionary of 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch=0, seq_len=64, seed=0), "batch"),
    (dict(batch=2, seq_len=10, seed=0), "seq_len"),
    (dict(batch=2, seq_len=64, seed=-1), "seed"),
    (dict(batch=2, seq_len=64, seed=0, depth=1.5), "depth"),
    (dict(batch=2, seq_len=64, seed=0, key_len=0), "key_len"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        passkey_batch(**kwargs)
