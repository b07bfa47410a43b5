"""A task where context does not matter: sequences from a fixed random first-order Markov chain.

Each token has ``branching`` equally likely successors, so the best possible loss is ln(branching)
at every length. Chapter 3 trains on it to show what clipping does to an update, a question in
which context length plays no part.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .seeding import torch_generator


def markov_batches(seq_len: int, vocab: int = 64, branching: int = 4, batch: int = 1, pool: int = 256,
                   seed: int = 0) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``get_batch(i) -> (tokens, targets)``: a fixed pool of ``pool`` sequences drawn from ``seed``,
    cycled by index, so batch i depends only on (seed, i) and costs nothing to make."""
    if not (seq_len >= 2 and 1 <= branching <= vocab and 1 <= batch <= pool):
        raise ValueError(f"need seq_len >= 2, 1 <= branching <= vocab, 1 <= batch <= pool; got "
                         f"seq_len={seq_len}, branching={branching}, vocab={vocab}, batch={batch}, pool={pool}")
    gen = torch_generator(seed)
    successors = torch.stack([torch.randperm(vocab, generator=gen)[:branching] for _ in range(vocab)])
    data = torch.empty(pool, seq_len + 1, dtype=torch.long)
    data[:, 0] = torch.randint(0, vocab, (pool,), generator=gen)
    choice = torch.randint(0, branching, (pool, seq_len), generator=gen)
    for t in range(seq_len):
        data[:, t + 1] = successors[data[:, t], choice[:, t]]

    def get_batch(i: int) -> tuple[Tensor, Tensor]:
        start = (i * batch) % (pool - batch + 1)
        x = data[start:start + batch]
        return x[:, :-1], x[:, 1:]

    return get_batch
