"""Evaluators that run a model on a task: passkey retrieval (chapter 6) and dialogue recall (chapter 8).

They sit above the model and the task generators (``data``, ``dialogue``), which know nothing of models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import IGNORE
from .tasks import passkey_batch
from .model import GPT


@torch.no_grad()
def passkey_accuracy(model: GPT, seq_len: int, n: int = 200, seed: int = 10_000, depth=None, n_depths: int = 5,
                     batch: int = 50) -> dict:
    """All-digits-correct rate over ``n`` samples (greedy; teacher forcing reads all digits in one pass, and a
    key is right exactly when greedy decoding would be), with per-sample correctness, depth, key position and
    answer loss. With ``depth=None`` depths cycle over ``n_depths`` even steps from 0 to 1, so each is equally
    tested; ``depth="random"`` draws them uniformly."""
    if n < 1 or batch < 1 or n_depths < 2:
        raise ValueError(f"n and batch must be >= 1 and n_depths >= 2, got n={n}, batch={batch}, n_depths={n_depths}")
    device = next(model.parameters()).device
    out = {"correct": [], "depth": [], "target_depth": [], "key_pos": [], "loss": []}
    for start in range(0, n, batch):
        m = min(batch, n - start)
        d = [((start + i) % n_depths) / (n_depths - 1) for i in range(m)] if depth is None else \
            (None if depth == "random" else depth)
        b = passkey_batch(m, seq_len, seed + start, depth=d)
        logits, _ = model(b.tokens.to(device))
        answer = logits[:, b.answer_pos.to(device)].float().cpu()
        out["correct"] += (answer.argmax(-1) == b.key).all(-1).tolist()
        out["loss"] += F.cross_entropy(answer.transpose(1, 2), b.key, reduction="none").mean(-1).tolist()
        out["depth"] += b.depth.tolist()
        out["target_depth"] += list(d) if isinstance(d, list) else [d] * m
        out["key_pos"] += b.key_pos.tolist()
    out["accuracy"] = sum(out["correct"]) / n
    return out


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, tokens: Tensor, targets: Tensor) -> Tensor:
    """Per sample: 1.0 when every answer token is the model's argmax (teacher forcing), else 0.0."""
    logits, _ = model(tokens)
    mask = targets != IGNORE
    correct = (logits.argmax(-1) == targets) | ~mask
    return correct.all(dim=1).float()
