"""The book's synthetic tasks, each generated on the fly from an int seed at any length.

- ``passkey``: a word language, and a key hidden in it to retrieve (chapters 1, 6, 9);
- ``multikey``: several keys with values in that language, one asked for; a variable assigned twice
  and its later value asked for; a text tracking one variable (chapter 6);
- ``dialogue``: facts stated early in a conversation and asked for late (the case study);
- ``markov``: a first-order chain, where context does not matter (chapter 3's clipping runs).

All follow one rule (``seeding``): data depend only on the arguments, batch i of ``*_batches`` only
on (seed, i), and a target that must not be scored is ``IGNORE``. The passkey language draws from
numpy's generator, the other two from torch's; each is fixed by the stored results made from it.
"""
from __future__ import annotations

from ..config import IGNORE
from .dialogue import (ASK, BOT, KEYS, USER, DialogueSpec, dialogue_batch, dialogue_batches, distance_bins,
                       make_dialogue, min_length)
from .markov import markov_batches
from .multikey import (TASKS as RETRIEVAL_TASKS, RetrievalBatch, chapter6_batches, render_retrieval, retrieval_batch,
                       tracking_batch)
from .passkey import FACTOR, MARK, TRAIN_LEN, VOCAB_SIZE, PasskeyBatch, language_batch, passkey_batch, passkey_batches

__all__ = ["IGNORE", "ASK", "BOT", "KEYS", "USER", "DialogueSpec", "dialogue_batch", "dialogue_batches", "distance_bins", "make_dialogue", "min_length",
           "markov_batches", "FACTOR", "MARK", "TRAIN_LEN", "VOCAB_SIZE", "PasskeyBatch", "language_batch",
           "passkey_batch", "passkey_batches",
           "RETRIEVAL_TASKS", "RetrievalBatch", "chapter6_batches", "render_retrieval", "retrieval_batch", "tracking_batch"]
