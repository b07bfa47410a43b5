"""Two retrieval tasks with distractors, in the spirit of RULER (Hsieh et al. 2024), for chapter 6.

Both hide *needles* ``KEY VALUE`` (a key token, then a value token) at word boundaries of the
passkey chapter's word language and end with questions ``MARK KEY VALUE``: the value is the answer.

- ``"multikey"`` (RULER's MK-NIAH): ``n_keys`` different keys, each with its value; a question names
  one of them. The others are distractors, so finding "a needle" is not enough: the value must be
  the one that follows the asked key.
- ``"latest"`` (a variable assigned twice, as in RULER's variable tracking): every asked key appears
  twice with two different values, among the other keys, and the answer is the later value. Both
  assignments match the question by content alone; only their order tells them apart, so the task
  needs positions, not just lookup.

Unlike the passkey, whose digits are the only ones of their kind in the text, a value token here
appears in every needle: the answer must be bound to its key. Training asks several keys per
text (``questions``), which gives the sparse signal more answers per step; evaluation asks one,
whose needle (the later assignment, for ``"latest"``) sits at ``depth`` (0 = start of the text,
1 = just before the questions); every other needle is placed at random.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE, at_least
from .passkey import words_text
from .seeding import check_seed

N_VALUES = 40
MARK = N_VALUES  # opens a question
N_KEY_TOKENS = 8
FIRST_KEY = MARK + 1
FIRST_WORD = FIRST_KEY + N_KEY_TOKENS  # the word language uses the rest of the vocabulary
TASKS = ("multikey", "latest")
NEEDLE, QUESTION = 2, 3
TRAIN_LEN_MIN = 64  # the shortest text that holds the training mixture


@dataclass
class RetrievalBatch:
    tokens: Tensor  # (B, T)
    targets: Tensor  # (B, T) next-token targets (IGNORE where not scored)
    value: Tensor  # (B, Q) the answer to each question
    target_pos: Tensor  # (B, Q) position of the needle that holds each answer
    depth: Tensor  # (B,) the first question's target_pos / (last position a needle can take)
    answer_pos: Tensor  # (Q,) positions whose next-token prediction must be the answers

    def as_training_pair(self) -> tuple[Tensor, Tensor]:
        return self.tokens, self.targets


def _sample(rng: np.random.Generator, task: str, n_keys: int, questions: int, last_slot: int,
            target_slot: int | None) -> tuple[dict[int, list[int]], list[int], list[int], list[int]]:
    """Needles by slot; the asked keys, their answers and their answer needles' slots, in question order."""
    keys = (FIRST_KEY + rng.choice(N_KEY_TOKENS, size=n_keys, replace=False)).tolist()
    values = rng.integers(0, N_VALUES, size=n_keys).tolist()
    used: set[int] = set()

    def take(below: int = last_slot + 1) -> int:  # a free slot, uniformly, under ``below``
        slot = int(rng.choice([s for s in range(below) if s not in used]))
        used.add(slot)
        return slot

    by_slot, answer_slots = {}, []
    for i, (key, value) in enumerate(zip(keys, values)):
        if i == 0 and target_slot is not None:
            used.add(target_slot)
            later = target_slot
            slots = [take(target_slot), later] if task == "latest" else [later]
        else:
            slots = sorted([take(), take()]) if task == "latest" and i < questions else [take()]
        if len(slots) == 2:  # first an earlier assignment, with another value
            by_slot[slots[0]] = [key, (value + 1 + int(rng.integers(0, N_VALUES - 1))) % N_VALUES]
        by_slot[slots[-1]] = [key, value]
        answer_slots.append(slots[-1])
    return by_slot, keys[:questions], values[:questions], answer_slots[:questions]


def retrieval_batch(task: str, batch: int, seq_len: int, seed: int, depth: float | list[float] | None = None,
                    n_keys: int = 4, questions: int = 1, n_words: int = 16,
                    word_len: int = 4) -> RetrievalBatch:
    """``batch`` samples of ``task`` (one of ``TASKS``) at ``seq_len`` tokens; the same seed gives the same data.

    ``n_keys`` different keys, ``questions`` of them asked (each once, in random order); for
    ``"latest"`` each asked key has a second, earlier assignment with another value. Only the
    answers are scored.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    for name, value, lo in (("batch", batch, 1), ("n_keys", n_keys, 1), ("questions", questions, 1),
                            ("n_words", n_words, 1), ("word_len", word_len, 1)):
        at_least(name, value, lo)
    if n_keys > N_KEY_TOKENS or questions > n_keys:
        raise ValueError(f"need 1 <= questions <= n_keys <= {N_KEY_TOKENS}, got questions={questions!r}, "
                         f"n_keys={n_keys!r}")
    n_needles = n_keys + (questions if task == "latest" else 0)
    text_len = seq_len - n_needles * NEEDLE - questions * QUESTION
    at_least("seq_len", seq_len, n_needles * NEEDLE + questions * QUESTION + word_len * (n_needles + 1))
    last_slot = text_len // word_len
    depths = np.full(batch, np.nan) if depth is None else np.broadcast_to(np.asarray(depth, dtype=float), (batch,))
    if depth is not None and (np.any(np.isnan(depths)) or depths.min() < 0 or depths.max() > 1):
        raise ValueError(f"depth must lie in [0, 1] (0 = start, 1 = end), got {depth!r}")
    rng = np.random.default_rng(check_seed(seed))
    rows, values, target_pos = [], [], []
    for i in range(batch):
        target_slot = None if np.isnan(depths[i]) else int(round(depths[i] * last_slot))
        if task == "latest" and target_slot is not None:
            target_slot = max(target_slot, 1)  # the earlier assignment needs a slot before it
        by_slot, asked, answers, answer_slots = _sample(rng, task, n_keys, questions, last_slot, target_slot)
        words = words_text(rng, text_len, n_words, word_len, first=FIRST_WORD)
        row, start_of = [], {}
        for slot in range(last_slot + 1):
            if slot in by_slot:
                start_of[slot] = len(row)
                row += by_slot[slot]
            row += words[slot] if slot < len(words) else []
        row = row[: seq_len - questions * QUESTION]
        for key, answer in zip(asked, answers):
            row += [MARK, key, answer]
        rows.append(row)
        values.append(answers)
        target_pos.append([start_of[s] for s in answer_slots])
    tokens = torch.tensor(rows, dtype=torch.long)
    answer_pos = seq_len - questions * QUESTION + QUESTION * torch.arange(questions) + 1
    targets = torch.full_like(tokens, IGNORE)
    targets[:, answer_pos] = tokens[:, answer_pos + 1]
    target_pos_t = torch.tensor(target_pos, dtype=torch.long)
    depth_real = target_pos_t[:, 0].double() / max(1, last_slot * word_len)
    return RetrievalBatch(tokens, targets, torch.tensor(values, dtype=torch.long), target_pos_t,
                          depth_real.clamp(max=1.0), answer_pos)


def tracking_batch(batch: int, seq_len: int, seed: int, n_sets: int = 3, n_asks: int = 4, n_words: int = 16,
                   word_len: int = 4) -> tuple[Tensor, Tensor]:
    """A text that tracks one variable: ``n_sets`` assignments ``KEY VALUE`` (the first at the start) and
    ``n_asks`` questions ``MARK KEY VALUE`` among them, at random word boundaries; each question's value
    is the latest one assigned before it. (tokens, targets), targets only at the answers.

    This is the chapter's language with long-range dependence: an answer is predictable only by
    reading back to the latest assignment, which at long lengths may lie far back."""
    for name, value, lo in (("batch", batch, 1), ("n_sets", n_sets, 1), ("n_asks", n_asks, 1),
                            ("n_words", n_words, 1), ("word_len", word_len, 1)):
        at_least(name, value, lo)
    events = n_sets + n_asks
    text_len = seq_len - n_sets * NEEDLE - n_asks * QUESTION
    at_least("seq_len", seq_len, n_sets * NEEDLE + n_asks * QUESTION + word_len * (events + 1))
    last_slot = text_len // word_len
    rng = np.random.default_rng(check_seed(seed))
    rows, answers = [], []
    for _ in range(batch):
        key = FIRST_KEY + int(rng.integers(0, N_KEY_TOKENS))
        slots = [0] + sorted(rng.choice(np.arange(1, last_slot + 1), size=events - 1, replace=False).tolist())
        kinds = ["set"] + rng.permutation(["set"] * (n_sets - 1) + ["ask"] * n_asks).tolist()
        words = words_text(rng, text_len, n_words, word_len, first=FIRST_WORD)
        row, at, value, event = [], [], None, dict(zip(slots, kinds))
        for slot in range(last_slot + 1):
            if event.get(slot) == "set":
                value = int(rng.integers(0, N_VALUES))
                row += [key, value]
            elif event.get(slot) == "ask":
                at.append(len(row) + 1)  # the question's KEY: its next token is the answer
                row += [MARK, key, value]
            row += words[slot] if slot < len(words) else []
        rows.append(row[:seq_len])
        answers.append([a for a in at if a < seq_len - 1])
    tokens = torch.tensor(rows, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    for i, at in enumerate(answers):
        targets[i, at] = tokens[i, [a + 1 for a in at]]
    return tokens, targets


def chapter6_batches(batch: int, seq_len: int, seed: int) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``get_batch(i)`` for ``train.train``, from seed ``seed + i``: a quarter of the rows multi-key
    texts with every key asked, a quarter "latest" texts, half variable-tracking texts (3 assignments,
    4 questions)."""
    check_seed(seed)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 4 or batch % 4:
        raise ValueError(f"batch must be a multiple of 4, got {batch!r}")
    at_least("seq_len", seq_len, TRAIN_LEN_MIN)

    def get_batch(i: int) -> tuple[Tensor, Tensor]:
        s = 3 * (seed + i)
        parts = [retrieval_batch("multikey", batch // 4, seq_len, s, questions=4).as_training_pair(),
                 retrieval_batch("latest", batch // 4, seq_len, s + 1, n_keys=1).as_training_pair(),
                 tracking_batch(batch // 2, seq_len, s + 2)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return get_batch


def render_retrieval(tokens: list[int]) -> str:
    """A text as a reader sees it: values as numbers, keys as K0..K7, the question mark as ``?``,
    and each run of word-language tokens as one ``…``."""
    out = []
    for t in tokens:
        if t < N_VALUES:
            out.append(str(t))
        elif t == MARK:
            out.append("?")
        elif t < FIRST_WORD:
            out.append(f"K{t - FIRST_KEY}")
        elif not out or out[-1] != "…":
            out.append("…")
    return " ".join(out)
