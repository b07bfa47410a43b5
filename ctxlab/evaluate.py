"""Evaluators that run a model on a task: passkey and multi-key retrieval and loss by position (chapter 6),
dialogue recall (chapter 8).

They sit above the model and the task generators (``data``, ``dialogue``), which know nothing of models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import IGNORE
from .tasks import passkey_batch, retrieval_batch
from .model import GPT


def cycled_depths(start: int, count: int, n_depths: int) -> list[float]:
    """Depths for samples start, start + 1, ...: ``n_depths`` even steps from 0 to 1, in turn, so that
    each depth is equally tested."""
    return [((start + i) % n_depths) / (n_depths - 1) for i in range(count)]


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
        d = cycled_depths(start, m, n_depths) if depth is None else (None if depth == "random" else depth)
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


@torch.no_grad()
def retrieval_accuracy(model: GPT, task: str, seq_len: int, n: int = 100, seed: int = 10_000, n_depths: int = 5,
                       batch: int = 50, n_keys: int = 4) -> dict:
    """Whole-value correct rate on ``tasks.retrieval_batch`` (greedy, by teacher forcing as in
    ``passkey_accuracy``), the target needle's depth cycling over ``n_depths`` even steps from 0 to 1;
    and how often the answer given is at least a token of the text (some needle's value, right or not)."""
    if n < 1 or batch < 1 or n_depths < 2:
        raise ValueError(f"n and batch must be >= 1 and n_depths >= 2, got n={n}, batch={batch}, n_depths={n_depths}")
    device = next(model.parameters()).device
    out = {"correct": [], "in_text": [], "target_depth": []}
    for start in range(0, n, batch):
        d = cycled_depths(start, min(batch, n - start), n_depths)
        b = retrieval_batch(task, len(d), seq_len, seed + start, depth=d, n_keys=n_keys)
        logits, _ = model(b.tokens.to(device))
        answer = logits[:, b.answer_pos.to(device)].argmax(-1).cpu()
        out["correct"] += (answer == b.value).all(-1).tolist()
        text = b.tokens[:, : int(b.answer_pos[0]) - 1]  # the text before the first question
        out["in_text"] += (text[:, None, :] == answer[:, :, None]).any(-1).all(-1).tolist()
        out["target_depth"] += d
    out["accuracy"] = sum(out["correct"]) / n
    out["in_text_rate"] = sum(out["in_text"]) / n  # the answer is a token of the text: a needle's value
    return out


@torch.no_grad()
def token_losses(model: GPT, tokens: Tensor, targets: Tensor) -> Tensor:
    """Next-token loss (nats) of every scored position, (B, T); nan where the target is ``IGNORE``."""
    logits, _ = model(tokens.to(next(model.parameters()).device))
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets.to(logits.device), ignore_index=IGNORE,
                           reduction="none").cpu()
    return torch.where(targets != IGNORE, loss, float("nan"))
