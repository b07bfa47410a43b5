"""Selective recomputation: recompute only the attention core, measured against none and full.

Korthikanti et al. (2022) observe that the attention core (scores, softmax, dropout, the weighted sum
of v) holds the a s^2 terms of the activations but costs few FLOPs per byte, so they recompute it
alone: on GPT-3 70% less activation memory for 2.7% more compute. ``checkpoint_attention`` does that
in ctxlab's model. With naive attention it drops the T x T probabilities; with a fused kernel there is
little left to drop (q, k, v, the output and one log-sum-exp per row are all it keeps), which is why a
flash kernel makes selective recomputation implicit: its backward already recomputes the scores.

For each backend and policy: the activations alive after the forward pass (traced, per model), the
training step's peak, and the FLOPs of forward + backward (counted for naive attention; torch's CPU
flash kernel is not counted, so the fused rows take the formula of ``flops``).
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..flops import count_training_flops, recompute_flops_per_token, training_flops_per_token
from ..measure import bytes_alive_after
from ..memory_model import measure_step_memory
from ..model import GPT

POLICIES: dict[str, dict] = {
    "none": dict(checkpoint_every=0, checkpoint_attention=False),
    "selective": dict(checkpoint_every=0, checkpoint_attention=True),
    "full": dict(checkpoint_every=1, checkpoint_attention=False),
}


def activation_bytes(cfg: ModelConfig, seq_len: int, batch: int = 1) -> int:
    """Bytes alive after the forward pass of ``GPT(cfg)`` on a batch (traced, nothing allocated)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        torch.manual_seed(0)
        model = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len)))
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len))
        return bytes_alive_after(lambda: model(tokens, tokens)[1])


def counted_flops(cfg: ModelConfig, seq_len: int) -> int:
    """FLOPs of one forward + backward of a real (small) model, counted by torch."""
    torch.manual_seed(0)
    model = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len)))
    tokens = torch.randint(0, cfg.vocab_size, (1, seq_len))
    return count_training_flops(model, tokens, tokens)


def recomputation_rows(cfg: ModelConfig, seq_len: int, backends: tuple[str, ...] = ("naive", "sdpa"),
                       count: bool = True) -> list[dict]:
    """One row per (backend, policy): activations after forward, step peak (MiB), FLOPs per token by
    formula and, for naive attention with ``count``, counted; each relative to the policy "none"."""
    rows = []
    for backend in backends:
        base: dict = {}
        for policy, changes in POLICIES.items():
            c = cfg.replace(attention=backend, **changes)
            flops = training_flops_per_token(c, seq_len) + recompute_flops_per_token(c, seq_len)
            row = {"backend": backend, "policy": policy,
                   "activations_mib": activation_bytes(c, seq_len) / 2**20,
                   "step_peak_mib": measure_step_memory(c, seq_len)["step_peak"] / 2**20,
                   "flops_per_token": flops}
            if count and backend == "naive":
                row["counted_flops"] = counted_flops(c, seq_len)
            base = base or row
            row["activations_vs_none"] = row["activations_mib"] / base["activations_mib"]
            row["flops_vs_none"] = row["flops_per_token"] / base["flops_per_token"]
            rows.append(row)
    return rows
