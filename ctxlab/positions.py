"""Rotary position embeddings (RoPE) and how to stretch them past the trained length; ALiBi.

RoPE rotates each pair of channels by an angle position * frequency, so relative position shows
up in q.k as a phase difference. A model trained on T_train positions has only seen the slow
channels turn through a fraction of a circle; past T_train those channels reach angles it never
saw. Each scaling below is a pure function of (head_dim, base, scale, original_len) that returns
new inverse frequencies and an attention factor (multiplied into cos and sin, hence into q and k):

- ``pi``: position interpolation (Chen et al. 2023): every frequency divided by the scale s.
- ``ntk``: NTK-aware scaling: base b' = b * s^(d / (d - 2)); fast channels barely move, the
  slowest is divided by s.
- ``yarn``: YaRN (Peng et al. 2023): a ramp over r = L / wavelength keeps channels with
  r > beta as they are, interpolates channels with r < alpha by s, blends in between; and an
  attention temperature sqrt(1/t) = 0.1 ln s + 1.
- ``dynamic_ntk``: NTK-aware with s = max(1, current length / L), chosen at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .config import ROPE_SCALINGS, STATIC_SCALINGS, positive_int  # noqa: F401  (the names a config may choose)



@dataclass(frozen=True)
class Positions:
    """Where the tokens sit, in the form an attention layer takes it: RoPE's cos and sin tables (rotate q
    and k) or ALiBi's bias (added to the scores), and the mask of packed documents. One object travels
    through every layer instead of a growing list of arguments."""

    cos: Tensor | None = None
    sin: Tensor | None = None
    bias: Tensor | None = None
    mask: Tensor | None = None


YARN_ALPHA, YARN_BETA = 1.0, 32.0  # the paper's bounds for LLaMA


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> Tensor:
    """Inverse frequencies base^(-2i/d) for i in [0, d/2): fast rotations first, slow ones last."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
    if not isinstance(base, (int, float)) or base <= 1:
        raise ValueError(f"base must be a number > 1, got {base!r}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def _check_scale(scale: float, original_len: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 1:
        raise ValueError(f"scale must be a number >= 1 (1 = no stretch), got {scale!r}")
    positive_int("original_len", original_len)  # the trained length


def rope_none(head_dim: int, base: float, scale: float = 1.0, original_len: int = 1) -> tuple[Tensor, float]:
    """The trained frequencies, unchanged."""
    _check_scale(scale, original_len)
    return rope_inv_freq(head_dim, base), 1.0


def rope_pi(head_dim: int, base: float, scale: float, original_len: int) -> tuple[Tensor, float]:
    """Position interpolation: position m becomes m / s, i.e. every frequency is divided by s."""
    _check_scale(scale, original_len)
    return rope_inv_freq(head_dim, base) / scale, 1.0


def rope_ntk(head_dim: int, base: float, scale: float, original_len: int) -> tuple[Tensor, float]:
    """NTK-aware: raise the base to b * s^(d/(d-2)), so the slowest channel is divided by exactly s."""
    _check_scale(scale, original_len)
    if head_dim == 2:
        raise ValueError("head_dim must be >= 4 for NTK-aware scaling (the exponent is d / (d - 2))")
    return rope_inv_freq(head_dim, base * scale ** (head_dim / (head_dim - 2))), 1.0


def yarn_ramp(head_dim: int, base: float, original_len: int, alpha: float = YARN_ALPHA,
              beta: float = YARN_BETA) -> Tensor:
    """gamma(r) per channel: 0 (interpolate) where r < alpha, 1 (keep) where r > beta, linear between.

    r = original_len / wavelength counts how many full turns a channel makes over the trained length.
    """
    if not (isinstance(alpha, (int, float)) and isinstance(beta, (int, float)) and 0 <= alpha < beta):
        raise ValueError(f"YaRN bounds must satisfy 0 <= alpha < beta, got alpha={alpha!r}, beta={beta!r}")
    r = original_len / (2 * math.pi / rope_inv_freq(head_dim, base))
    return ((r - alpha) / (beta - alpha)).clamp(0.0, 1.0)


def yarn_attention_factor(scale: float) -> float:
    """sqrt(1/t) = 0.1 ln s + 1: sharpens attention, which interpolation had made flatter."""
    return 0.1 * math.log(scale) + 1.0


def rope_yarn(head_dim: int, base: float, scale: float, original_len: int, alpha: float = YARN_ALPHA,
              beta: float = YARN_BETA) -> tuple[Tensor, float]:
    """YaRN: theta' = (1 - gamma) theta / s + gamma theta, and attention factor 0.1 ln s + 1."""
    _check_scale(scale, original_len)
    theta = rope_inv_freq(head_dim, base)
    gamma = yarn_ramp(head_dim, base, original_len, alpha, beta)
    return (1 - gamma) * theta / scale + gamma * theta, yarn_attention_factor(scale)


def rope_dynamic_ntk(head_dim: int, base: float, scale: float, original_len: int,
                     seq_len: int | None = None) -> tuple[Tensor, float]:
    """NTK-aware with s = max(1, seq_len / original_len): short inputs keep the trained frequencies.

    ``scale`` is not used (the length sets it); it is accepted so every scaling has one signature.
    """
    _check_scale(scale, original_len)
    positive_int("seq_len", seq_len)
    s = max(1.0, seq_len / original_len)
    return rope_ntk(head_dim, base, s, original_len) if s > 1 else rope_none(head_dim, base)


SCALING_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, float]]] = {
    "none": rope_none, "pi": rope_pi, "ntk": rope_ntk, "yarn": rope_yarn, "dynamic_ntk": rope_dynamic_ntk}


def scaled_rope(scaling: str, head_dim: int, base: float, scale: float, original_len: int,
                **kwargs) -> tuple[Tensor, float]:
    """(inverse frequencies, attention factor) for a scaling by name."""
    if scaling not in SCALING_FUNCTIONS:
        raise ValueError(f"scaling must be one of {ROPE_SCALINGS}, got {scaling!r}")
    return SCALING_FUNCTIONS[scaling](head_dim, base, scale, original_len, **kwargs)


def max_positions(scaling: str, scale: float, original_len: int | None) -> int | None:
    """Longest input a static scaling was set up for (s * original_len); None where no bound applies."""
    if scaling in STATIC_SCALINGS:
        return int(math.floor(scale * original_len))
    return None


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
    """Holds the (scaled) inverse frequencies and hands out cos/sin for any positions."""

    def __init__(self, head_dim: int, base: float = 10000.0, attention_factor: float = 1.0,
                 scaling: str = "none", scale: float = 1.0, original_len: int | None = None):
        super().__init__()
        self.head_dim, self.base, self.scaling, self.scale = head_dim, base, scaling, scale
        self.original_len = original_len if original_len is not None else 1
        inv_freq, factor = scaled_rope(scaling, head_dim, base, scale, self.original_len,
                                       **({"seq_len": self.original_len} if scaling == "dynamic_ntk" else {}))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_factor = attention_factor * factor
        self.max_positions = max_positions(scaling, scale, self.original_len)

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        if self.max_positions is None and self.scaling != "dynamic_ntk":
            return rope_cos_sin(positions, self.inv_freq, self.attention_factor, dtype)
        # reading the largest position syncs with the device, so it is done only when a limit applies
        n = int(positions.max()) + 1 if positions.numel() else 0
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(f"position {n - 1} is beyond the scaled maximum {self.max_positions} "
                             f"(scale {self.scale} x original_len {self.original_len}) for {self.scaling!r}")
        inv_freq = self.inv_freq
        if self.scaling == "dynamic_ntk" and n > self.original_len:
            inv_freq, _ = rope_ntk(self.head_dim, self.base, n / self.original_len, self.original_len)
        return rope_cos_sin(positions, inv_freq, self.attention_factor, dtype)


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): 2^(-8i/n) for i = 1..n, with the paper's rule for n not a power of 2."""
    positive_int("n_heads", n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = [2.0 ** (-8.0 * i / closest) for i in range(1, closest + 1)]
    if closest < n_heads:  # take every other slope of the next power of two
        extra = [2.0 ** (-4.0 * i / closest) for i in range(1, 2 * closest + 1, 2)]
        slopes += extra[: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """Additive attention bias -slope * (i - j), shape (1, H, Tq, Tk): a linear penalty on distance."""
    distance = (q_positions[:, None] - k_positions[None, :]).to(slopes.dtype)
    return (-slopes.to(distance.device)[:, None, None] * distance.clamp(min=0))[None]
