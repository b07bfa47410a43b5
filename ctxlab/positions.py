"""Rotary position embeddings (RoPE): each pair of channels is rotated by an angle position * frequency.

Relative position then shows up in q.k as a phase difference, which is why scaling the
frequencies (chapter 6) changes how far a trained model can read.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

ROPE_SCALINGS = ("none",)


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> Tensor:
    """Inverse frequencies base^(-2i/d) for i in [0, d/2): fast rotations first, slow ones last."""
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
    if base <= 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def rope_cos_sin(positions: Tensor, inv_freq: Tensor, attention_factor: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin tables of shape (T, D/2) for the given integer positions."""
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(positions.device)[None, :]
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D): channel i is paired with channel i + D/2 (the GPT-NeoX / LLaMA layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class RotaryEmbedding(nn.Module):
    """Holds the inverse frequencies and hands out cos/sin for any positions."""

    def __init__(self, head_dim: int, base: float = 10000.0, attention_factor: float = 1.0):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base), persistent=False)
        self.attention_factor = attention_factor

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(positions, self.inv_freq, self.attention_factor, dtype)
