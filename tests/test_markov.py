import pytest
import torch

from ctxlab.tasks import markov_batches


def test_markov_batches_are_reproducible_and_follow_the_chain():
    a, b = markov_batches(32, vocab=16, branching=2, batch=4, pool=8), markov_batches(32, vocab=16, branching=2,
                                                                                   batch=4, pool=8)
    x, y = a(3)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(b(3)[0], x)
    pairs = torch.stack([x.flatten(), y.flatten()], 1).unique(dim=0)
    assert all((pairs[:, 0] == tok).sum() <= 2 for tok in range(16))
    with pytest.raises(ValueError, match="branching"):
        markov_batches(32, vocab=4, branching=5)


def test_markov_batches_depend_only_on_seed_and_index():
    a, b, c = markov_batches(16, seed=1), markov_batches(16, seed=1), markov_batches(16, seed=2)
    assert torch.equal(a(5)[0], b(5)[0]) and not torch.equal(a(5)[0], c(5)[0])
