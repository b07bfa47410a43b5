"""What every task generator shares: one seeding rule, one way to make next-token targets.

The rule: a generator takes an int ``seed`` and builds its own random generator from it, so its data
depend only on its arguments (never on torch's or numpy's global state), and ``*_batches(...)``
returns ``get_batch(i)`` whose batch depends only on ``(seed, i)``: a resumed run repeats nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import IGNORE, at_least


def check_seed(seed: object) -> int:
    return at_least("seed", seed, 0)


def torch_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (checked): the dialogue and Markov tasks draw from it."""
    return torch.Generator().manual_seed(check_seed(seed))


def next_token_targets(tokens: Tensor) -> Tensor:
    """targets[:, t] = tokens[:, t + 1]; the last position has nothing to predict (IGNORE)."""
    targets = torch.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:]
    return targets
