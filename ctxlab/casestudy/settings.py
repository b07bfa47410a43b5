"""What decides the case study's numbers: its settings, their checks, and the configs and data they imply."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ATTENTION_BACKENDS, STATIC_SCALINGS, ModelConfig, positive_int, require, with_positions
from ..tasks import DialogueSpec, distance_bins, min_length
from ..tasks import dialogue_batches as dialogue_task_batches


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers; stored beside them so a run can be checked and repeated."""

    train_len: int = 128
    factor: int = 4
    base_steps: int = 1500
    finetune_steps: int = 200
    batch: int = 32
    finetune_batch: int = 8
    lr: float = 1e-3
    finetune_lr: float = 3e-4
    clip: float = 1.0
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    order_digits: int = 2          # a 2-digit order number: the 2-layer model learns the copy in minutes
    scaling: str = "yarn"
    attention: str = "sdpa"        # fine-tuning at 4x: flash attention, O(T) memory
    recompute_every: int = 1       # and every block recomputed in backward (activation checkpointing)
    save_every: int = 100          # training checkpoint interval (steps), for resuming
    eval_samples: int = 96         # per distance bin
    latency_lens: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    decode_tokens: int = 16
    seed: int = 0


QUICK = Settings(train_len=48, base_steps=40, finetune_steps=6, batch=8, finetune_batch=4, d_model=32, n_layers=1,
                 save_every=10, eval_samples=8, latency_lens=(48, 192), decode_tokens=4)


def check_settings(s: Settings) -> None:
    """Reject bad settings before any work, naming the field and what it accepts."""
    def need(ok: bool, name: str, allowed: str) -> None:
        require(ok, name, allowed, getattr(s, name))

    for name in ("train_len", "factor", "base_steps", "finetune_steps", "batch", "finetune_batch", "d_model",
                 "n_layers", "n_heads", "save_every", "eval_samples", "decode_tokens"):
        positive_int(name, getattr(s, name))
    need(s.train_len >= 2 * min_length(0) and s.train_len % 2 == 0, "train_len",
         f"an even int >= {2 * min_length(0)} (room for facts and filler)")
    need(s.factor >= 2, "factor", "an int >= 2 (the extension multiplies the context)")
    need(s.lr > 0 and s.finetune_lr > 0 and s.clip > 0, "lr", "positive, with finetune_lr and clip positive")
    need(s.scaling in STATIC_SCALINGS, "scaling", f"one of {STATIC_SCALINGS}")
    need(s.attention in ATTENTION_BACKENDS, "attention", f"one of {ATTENTION_BACKENDS}")
    need(isinstance(s.recompute_every, int) and s.recompute_every >= 0, "recompute_every", "an int >= 0")
    need(len(s.latency_lens) >= 2 and all(isinstance(n, int) and n >= 8 for n in s.latency_lens)
         and list(s.latency_lens) == sorted(set(s.latency_lens)), "latency_lens",
         "at least two increasing ints >= 8")
    DialogueSpec(order_digits=s.order_digits)  # raises on a bad order_digits


def check_device(name: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', and only if that device is present."""
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here; use 'cpu'")
    return name


def spec_of(s: Settings) -> DialogueSpec:
    return DialogueSpec(order_digits=s.order_digits)


def base_config(s: Settings) -> ModelConfig:
    return ModelConfig(vocab_size=spec_of(s).vocab_size, d_model=s.d_model, n_layers=s.n_layers,
                       n_heads=s.n_heads, max_seq_len=s.train_len)


def extended_config(s: Settings, seq_len: int, scaling: str | None = None) -> ModelConfig:
    """The base config read at ``seq_len`` tokens with ``scaling`` (default: the run's) at scale ``factor``."""
    scaling = s.scaling if scaling is None else scaling
    return with_positions(base_config(s), seq_len, scaling, None if scaling == "none" else float(s.factor),
                          original_len=s.train_len)


def dialogue_batches(s: Settings, batch: int, seq_len: int, seed: int):
    """step -> (tokens, targets) of the run's dialogues; each step's batch depends only on (seed, step)."""
    return dialogue_task_batches(batch, seq_len, seed, spec_of(s))
