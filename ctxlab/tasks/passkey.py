"""Synthetic long-context tasks, generated on the fly from a seed, at any length.

Both tasks share one small vocabulary: key tokens, a marker, and filler tokens. Key token j of a
key is one of ten digits written with slot j's own ten tokens, so finding the key is a lookup by
content anywhere in the context (what positions must allow), not a counting puzzle.

- ``language_batch``: a "language" whose text is a random walk over a per-sequence dictionary of
  short words. The first letter of a word is a guess among the dictionary's words; the rest of a
  word is predictable only by finding an earlier occurrence of it. So the loss at position t falls
  as more of the dictionary has been seen, and loss by position shows how far back a model can read.
- ``passkey_batch``: the same text with a key (a marker then random digits) hidden at a chosen
  depth, and the marker repeated at the end: the model must copy the digits from far back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE, at_least
from .seeding import check_seed, next_token_targets

N_DIGITS = 10
MAX_KEY_LEN = 5
MARK = N_DIGITS * MAX_KEY_LEN  # opens the key and asks for it at the end
FIRST_FILLER = MARK + 1
VOCAB_SIZE = 96
TRAIN_LEN, FACTOR = 128, 4  # chapter 6's passkey experiment: trained at 128 tokens, extended 4x


def words_text(rng: np.random.Generator, n_tokens: int, n_words: int, word_len: int,
               first: int = FIRST_FILLER) -> list[list[int]]:
    """A list of words (each ``word_len`` tokens from ``first`` up to the vocabulary's end) covering at
    least ``n_tokens`` tokens."""
    dictionary = rng.integers(first, VOCAB_SIZE, size=(n_words, word_len))
    picks = rng.integers(0, n_words, size=-(-n_tokens // word_len))
    return [dictionary[i].tolist() for i in picks]


def language_batch(batch: int, seq_len: int, seed: int, n_words: int = 16, word_len: int = 4) -> tuple[Tensor, Tensor]:
    """(tokens, next-token targets), each (batch, seq_len); the same seed gives the same data."""
    for name, value, lo in (("batch", batch, 1), ("seq_len", seq_len, 2), ("n_words", n_words, 1),
                            ("word_len", word_len, 1)):
        at_least(name, value, lo)
    rng = np.random.default_rng(check_seed(seed))
    rows = [sum(words_text(rng, seq_len, n_words, word_len), [])[:seq_len] for _ in range(batch)]
    tokens = torch.tensor(rows, dtype=torch.long)
    return tokens, next_token_targets(tokens)


@dataclass
class PasskeyBatch:
    tokens: Tensor  # (B, T)
    targets: Tensor  # (B, T) next-token targets; IGNORE on the hidden key's own digits
    key: Tensor  # (B, key_len) the digits to retrieve
    key_pos: Tensor  # (B,) index of the marker that opens the hidden key
    depth: Tensor  # (B,) key_pos / (last possible key_pos): 0 = start of the text, 1 = just before the question
    answer_pos: Tensor  # (key_len,) positions whose next-token prediction must be the key digits

    def as_training_pair(self) -> tuple[Tensor, Tensor]:
        return self.tokens, self.targets


def passkey_batch(batch: int, seq_len: int, seed: int, depth: float | list[float] | None = None, key_len: int = 5,
                  n_words: int = 16, word_len: int = 4, loss_on: str = "all") -> PasskeyBatch:
    """Hide ``MARK d1..dk`` in word-language text at ``depth`` (random when None) and end with ``MARK d1..dk``.

    ``depth`` may be one number in [0, 1] or one per sample. The key starts on a word boundary, so
    the realised depth (returned) is within ``word_len`` tokens of the one asked for. ``loss_on="answer"``
    keeps only the answer's targets (a sharp signal for retrieval); ``"all"`` adds the language's.
    """
    if loss_on not in ("all", "answer"):
        raise ValueError(f"loss_on must be 'all' or 'answer', got {loss_on!r}")
    for name, value, lo in (("batch", batch, 1), ("key_len", key_len, 1), ("n_words", n_words, 1),
                            ("word_len", word_len, 1)):
        at_least(name, value, lo)
    if key_len > MAX_KEY_LEN:
        raise ValueError(f"key_len must be in 1..{MAX_KEY_LEN}, got {key_len!r}")
    block = key_len + 1
    at_least("seq_len", seq_len, 2 * block + word_len)
    depths = np.full(batch, np.nan) if depth is None else np.broadcast_to(np.asarray(depth, dtype=float), (batch,))
    if depth is not None and (np.any(np.isnan(depths)) or depths.min() < 0 or depths.max() > 1):
        raise ValueError(f"depth must lie in [0, 1] (0 = start, 1 = end), got {depth!r}")
    rng = np.random.default_rng(check_seed(seed))
    text_len = seq_len - 2 * block  # filler tokens around the hidden key
    last_slot = text_len // word_len  # the key may start after 0..last_slot whole words
    rows, keys, key_pos = [], [], []
    for i in range(batch):
        digits = rng.integers(0, N_DIGITS, size=key_len)
        key = (digits + N_DIGITS * np.arange(key_len)).tolist()
        d = rng.random() if np.isnan(depths[i]) else depths[i]
        slot = int(round(d * last_slot))
        words = sum(words_text(rng, text_len, n_words, word_len), [])
        before, after = words[: slot * word_len], words[slot * word_len:]
        row = before + [MARK] + key + after
        row = row[: seq_len - block] + [MARK] + key
        rows.append(row)
        keys.append(key)
        key_pos.append(len(before))
    tokens = torch.tensor(rows, dtype=torch.long)
    targets = next_token_targets(tokens)
    key_pos_t = torch.tensor(key_pos, dtype=torch.long)
    hidden = key_pos_t[:, None] + torch.arange(key_len)[None, :]  # predicting the hidden digits is a guess
    targets.scatter_(1, hidden, IGNORE)
    answer_pos = torch.arange(seq_len - block, seq_len - 1)
    if loss_on == "answer":
        keep = targets[:, answer_pos]
        targets = torch.full_like(targets, IGNORE)
        targets[:, answer_pos] = keep
    depth_real = key_pos_t.double() / (last_slot * word_len)
    return PasskeyBatch(tokens, targets, torch.tensor(keys, dtype=torch.long), key_pos_t, depth_real, answer_pos)


def passkey_batches(batch: int, seq_len: int, seed: int, **kwargs) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``get_batch(i) -> (tokens, targets)`` for ``train.train``: batch i uses seed ``seed + i`` (reproducible)."""
    check_seed(seed)
    passkey_batch(1, seq_len, seed, **kwargs)  # fail now on bad arguments, not inside the training loop

    def get_batch(i: int) -> tuple[Tensor, Tensor]:
        return passkey_batch(batch, seq_len, seed + i, **kwargs).as_training_pair()

    return get_batch
