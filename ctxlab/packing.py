"""Padding vs packing variable-length documents into fixed-length training rows.

Padding gives every document its own row, filled up to the longest: the pad slots cost compute and
memory and teach nothing. Packing lays documents end to end; a block-diagonal causal mask and
positions that restart at 0 for each document keep them independent, so a document's outputs are
the same packed or alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import IGNORE, positive_int



@dataclass
class Batch:
    """Rows of tokens with next-token targets, per-token positions and document ids (-1 = padding)."""

    tokens: Tensor
    targets: Tensor
    positions: Tensor
    doc_ids: Tensor

    @property
    def slots(self) -> int:
        return self.tokens.numel()

    @property
    def real_tokens(self) -> int:
        return int((self.doc_ids >= 0).sum())

    @property
    def waste(self) -> float:
        """Share of the batch's slots that hold padding."""
        return 1 - self.real_tokens / self.slots


def _check_docs(docs: list[Tensor]) -> None:
    if not isinstance(docs, (list, tuple)) or not docs:
        raise ValueError("docs must be a non-empty list of 1-d token tensors")
    for i, d in enumerate(docs):
        if not isinstance(d, Tensor) or d.dim() != 1 or d.numel() == 0 or d.dtype != torch.long:
            raise ValueError(f"docs[{i}] must be a non-empty 1-d torch.long tensor, got "
                             f"{getattr(d, 'shape', type(d).__name__)}")


def _place(rows: list[list[tuple[int, Tensor]]], seq_len: int, pad_id: int) -> Batch:
    """Lay out rows of (document index, tokens); ``doc_ids`` holds each document's index in the input list."""
    n = len(rows)
    tokens = torch.full((n, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    positions = torch.zeros((n, seq_len), dtype=torch.long)
    doc_ids = torch.full((n, seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for doc, d in row:
            end = at + d.numel()
            tokens[r, at:end] = d
            targets[r, at:end - 1] = d[1:]  # the last token of a document predicts nothing across the boundary
            positions[r, at:end] = torch.arange(d.numel())
            doc_ids[r, at:end] = doc
            at = end
    return Batch(tokens, targets, positions, doc_ids)


def pad_documents(docs: list[Tensor], pad_id: int = 0) -> Batch:
    """One document per row, padded to the longest document."""
    _check_docs(docs)
    return _place([[(i, d)] for i, d in enumerate(docs)], max(d.numel() for d in docs), pad_id)


def pack_documents(docs: list[Tensor], seq_len: int, pad_id: int = 0) -> Batch:
    """Documents end to end in rows of ``seq_len`` (first fit, in order of decreasing length)."""
    _check_docs(docs)
    positive_int("seq_len", seq_len)
    longest = max(d.numel() for d in docs)
    if longest > seq_len:
        raise ValueError(f"a document of {longest} tokens does not fit seq_len={seq_len}; split it or raise seq_len")
    rows: list[list[tuple[int, Tensor]]] = []
    room: list[int] = []
    for i, d in sorted(enumerate(docs), key=lambda item: -item[1].numel()):
        r = next((i for i, free in enumerate(room) if free >= d.numel()), None)
        if r is None:
            rows.append([]), room.append(seq_len)
            r = len(rows) - 1
        rows[r].append((i, d))
        room[r] -= d.numel()
    return _place(rows, seq_len, pad_id)


def document_mask(doc_ids: Tensor) -> Tensor:
    """(B, 1, T, T) bool mask: token i sees token j iff j <= i and both belong to the same document.

    Padding slots (id -1) see only padding, so no row is empty and no softmax returns NaN.
    """
    if not isinstance(doc_ids, Tensor) or doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must be a (batch, time) tensor, got {getattr(doc_ids, 'shape', doc_ids)}")
    t = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal).unsqueeze(1)


def padding_vs_packing(lengths: list[int], seq_len: int) -> dict:
    """Slots and waste of both layouts for documents of the given lengths (random tokens; only shapes matter)."""
    docs = [torch.zeros(n, dtype=torch.long) for n in lengths]
    padded, packed = pad_documents(docs), pack_documents(docs, seq_len)
    return {"tokens": sum(lengths), "padded_slots": padded.slots, "packed_slots": packed.slots,
            "padded_waste": padded.waste, "packed_waste": packed.waste, "packed_rows": packed.tokens.shape[0]}
