"""Synthetic multi-turn dialogues for the chatbot case study: facts stated early, asked about late.

A user states three facts (a name, an order number, a preference) at different points of a
conversation padded with filler turns, then asks for one of them. The answer can only be produced
by attending back to where the fact was stated, and the *distance* from that fact to the answer is
set exactly, so accuracy can be read off by distance.

Layout of one sample of exactly ``seq_len`` tokens::

    BOS  ...filler turns and the three fact turns...  USER ASK KEY BOT  answer tokens

A fact turn is ``USER KEY value...``. Targets are IGNORE (-100) everywhere except the answer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..config import IGNORE, positive_int
from .seeding import check_seed, torch_generator

PAD, BOS, USER, BOT, ASK = 0, 1, 2, 3, 4
KEYS = {"name": 5, "order": 6, "like": 7}
DIGITS = list(range(10, 20))                 # order numbers: 4 digits
NAMES = list(range(20, 36))                  # names: 2 tokens from 16
LIKES = list(range(36, 44))                  # preferences: 1 token from 8
FILLER_START = 48
VALUE_LEN = {"name": 2, "order": 4, "like": 1}
QUESTION_LEN = 4                             # USER ASK KEY BOT


@dataclass(frozen=True)
class DialogueSpec:
    """Vocabulary size and the range of filler-turn lengths; vocab_size sets how many filler words exist."""

    vocab_size: int = 128
    min_turn: int = 3
    max_turn: int = 8
    order_digits: int = VALUE_LEN["order"]   # fewer digits: an easier copy, for small models
    name_tokens: int = VALUE_LEN["name"]

    def __post_init__(self) -> None:
        for name, most in (("order_digits", VALUE_LEN["order"]), ("name_tokens", VALUE_LEN["name"])):
            value = getattr(self, name)
            if not (isinstance(value, int) and 1 <= value <= most):
                raise ValueError(f"{name} must be an int in [1, {most}], got {value!r}")
        if self.vocab_size < FILLER_START + 8:
            raise ValueError(f"vocab_size must be >= {FILLER_START + 8}, got {self.vocab_size}")
        if not 1 <= self.min_turn <= self.max_turn:
            raise ValueError(f"need 1 <= min_turn <= max_turn, got {self.min_turn} and {self.max_turn}")

    def value_len(self, kind: str) -> int:
        return {"name": self.name_tokens, "order": self.order_digits, "like": VALUE_LEN["like"]}[kind]


def _value(kind: str, g: torch.Generator, spec: DialogueSpec) -> list[int]:
    pool = {"name": NAMES, "order": DIGITS, "like": LIKES}[kind]
    return [pool[int(i)] for i in torch.randint(len(pool), (spec.value_len(kind),), generator=g)]


def _filler(n: int, spec: DialogueSpec, g: torch.Generator) -> list[int]:
    """n tokens of filler turns (speaker marker + words), cut to exactly n."""
    out: list[int] = []
    while len(out) < n:
        out.append(BOT if torch.rand((), generator=g) < 0.5 else USER)
        length = int(torch.randint(spec.min_turn, spec.max_turn + 1, (), generator=g))
        out += (torch.randint(FILLER_START, spec.vocab_size, (length,), generator=g)).tolist()
    return out[:n]


def min_length(distance: int) -> int:
    """Shortest sequence that can hold the question fact at ``distance`` plus the other two facts."""
    return 1 + 2 + max(VALUE_LEN.values()) + distance + 12


def make_dialogue(seq_len: int, distance: int, asked: str, g: torch.Generator,
                  spec: DialogueSpec = DialogueSpec()) -> tuple[list[int], list[int]]:
    """One dialogue of exactly seq_len tokens; the asked fact's first value token is ``distance``
    positions before the first answer token. Returns (tokens, targets)."""
    if asked not in KEYS:
        raise ValueError(f"asked must be one of {tuple(KEYS)}, got {asked!r}")
    lo = QUESTION_LEN + spec.value_len(asked)
    if distance < lo:
        raise ValueError(f"distance must be >= {lo} for {asked!r}, got {distance}")
    if seq_len < min_length(distance):
        raise ValueError(f"seq_len must be >= {min_length(distance)} for distance {distance}, got {seq_len}")
    values = {k: _value(k, g, spec) for k in KEYS}
    answer = values[asked]
    answer_start = seq_len - len(answer)
    question_start = answer_start - QUESTION_LEN
    fact_value_start = answer_start - distance
    tokens = [PAD] * seq_len
    tokens[0] = BOS
    fact = [USER, KEYS[asked]] + answer
    fact_start = fact_value_start - 2
    # other facts go in free filler space: before the asked fact, or between it and the question
    others = [k for k in KEYS if k != asked]
    layout: list[tuple[int, list[int]]] = [(fact_start, fact)]
    gaps = [(1, fact_start), (fact_start + len(fact), question_start)]
    for k in others:
        turn = [USER, KEYS[k]] + values[k]
        fits = [(a, b) for a, b in gaps if b - a >= len(turn)]
        a, b = fits[int(torch.randint(len(fits), (), generator=g))] if fits else (None, None)
        if a is None:
            continue  # no room at this length: fewer distractors, the asked fact is still there
        pos = a + int(torch.randint(b - a - len(turn) + 1, (), generator=g))
        layout.append((pos, turn))
        gaps.remove((a, b))
        gaps += [(a, pos), (pos + len(turn), b)]
    for a, b in gaps:
        tokens[a:b] = _filler(b - a, spec, g)
    for pos, turn in layout:
        tokens[pos:pos + len(turn)] = turn
    tokens[question_start:answer_start] = [USER, ASK, KEYS[asked], BOT]
    tokens[answer_start:] = answer
    # next-token targets: predict answer token i from the position just before it
    targets = [IGNORE] * seq_len
    for i in range(len(answer)):
        targets[answer_start - 1 + i] = answer[i]
    return tokens, targets


def dialogue_batch(batch_size: int, seq_len: int, seed: int, distance: int | None = None,
                   max_distance: int | None = None, spec: DialogueSpec = DialogueSpec(),
                   min_distance: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, targets, distances): distances drawn uniformly in [min_distance, max_distance] unless fixed
    (never below the shortest distance each asked fact allows). The same seed gives the same data."""
    positive_int("batch_size", batch_size)
    g = torch_generator(seed)
    kinds = list(KEYS)
    hi = max_distance if max_distance is not None else seq_len - min_length(0)
    rows, tgts, dists = [], [], []
    for _ in range(batch_size):
        asked = kinds[int(torch.randint(len(kinds), (), generator=g))]
        lo = max(min_distance, QUESTION_LEN + spec.value_len(asked))
        d = distance if distance is not None else int(torch.randint(lo, max(lo, hi) + 1, (), generator=g))
        tok, tgt = make_dialogue(seq_len, d, asked, g, spec)
        rows.append(tok)
        tgts.append(tgt)
        dists.append(d)
    return torch.tensor(rows), torch.tensor(tgts), torch.tensor(dists)


def dialogue_batches(batch_size: int, seq_len: int, seed: int,
                     spec: DialogueSpec = DialogueSpec()) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``get_batch(i) -> (tokens, targets)`` for ``train.train``; batch i depends only on (seed, i)."""
    check_seed(seed)
    dialogue_batch(1, seq_len, seed, spec=spec)  # fail now on bad arguments, not inside the training loop

    def get_batch(i: int) -> tuple[Tensor, Tensor]:
        tokens, targets, _ = dialogue_batch(batch_size, seq_len, seed * 1_000_003 + i, spec=spec)
        return tokens, targets

    return get_batch


def distance_bins(train_len: int, seq_len: int) -> list[tuple[int, int]]:
    """Bins [0, T/2), [T/2, T), [T, 2T), [2T, 4T), ... cut to the distances a ``seq_len`` dialogue can hold."""
    top = seq_len - min_length(0)
    edges = [0, train_len // 2] + [train_len * 2 ** i for i in range(0, 8)]
    return [(a, min(b, top + 1)) for a, b in zip(edges, edges[1:]) if a <= top]
