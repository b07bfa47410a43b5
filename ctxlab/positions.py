"""Rotary position embeddings (RoPE) and how to stretch them past the trained length; ALiBi.

RoPE rotates each pair of channels by an angle position * frequency, so relative position shows
up in q.k as a phase difference. A model trained on L positions has only seen the slow channels
turn through a fraction of a circle; past L those channels reach angles it never saw. Each scaling
below is a pure function of (head_dim, base, scale s, original_len L) that returns new inverse
frequencies and an attention factor (multiplied into cos and sin, hence into q and k). Each one
that has a rope type in Hugging Face transformers (named in parentheses) equals that type's function in
``modeling_rope_utils``, which is what real checkpoints were trained with (tested to 1e-6):

- ``pi`` (transformers: ``linear``): position interpolation (Chen et al. 2023), every frequency / s.
- ``ntk``: NTK-aware scaling: base b' = b * s^(d / (d - 2)); the slowest channel is divided by s.
- ``dynamic_ntk`` (``dynamic``): NTK-aware, its base chosen from the length T being read:
  b' = b (s T / L - (s - 1))^(d / (d - 2)) past L; with s = 1 that is NTK at s = T / L.
- ``yarn`` (``yarn``): YaRN (Peng et al. 2023) as its authors' code computes it: channel pairs that
  turn more than beta_fast = 32 times over L are kept, those turning fewer than beta_slow = 1 times
  are interpolated by s, and the share kept falls linearly over the pair *index* in between (the
  cut-offs rounded outward); attention factor 0.1 ln s + 1.
- ``yarn_paper``: the ramp as the paper's gamma(r) writes it, linear in r = turns over L.
- ``llama3`` (``llama3``): Llama 3.1's scaling: wavelengths longer than L / low_freq_factor are
  interpolated by s, shorter than L / high_freq_factor kept, and blended linearly in L / wavelength.

A new base (ABF, Xiong et al. 2023; Llama 3's 500000) is ``ModelConfig.rope_base``, not a scaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .config import ROPE_SCALINGS, STATIC_SCALINGS, positive_int


@dataclass(frozen=True)
class Positions:
    """Where the tokens sit, in the form an attention layer takes it: RoPE's cos and sin tables (rotate q
    and k) or ALiBi's bias (added to the scores), and the mask of packed documents. One object travels
    through every layer instead of a growing list of arguments."""

    cos: Tensor | None = None
    sin: Tensor | None = None
    bias: Tensor | None = None
    mask: Tensor | None = None


YARN_ALPHA, YARN_BETA = 1.0, 32.0  # the paper's bounds for LLaMA, in turns over the trained length


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


def yarn_paper_ramp(head_dim: int, base: float, original_len: int, alpha: float = YARN_ALPHA,
              beta: float = YARN_BETA) -> Tensor:
    """gamma(r) per channel: 0 (interpolate) where r < alpha, 1 (keep) where r > beta, linear between.

    r = original_len / wavelength counts how many full turns a channel makes over the trained length.
    """
    if not (isinstance(alpha, (int, float)) and isinstance(beta, (int, float)) and 0 <= alpha < beta):
        raise ValueError(f"YaRN bounds must satisfy 0 <= alpha < beta, got alpha={alpha!r}, beta={beta!r}")
    r = original_len / (2 * math.pi / rope_inv_freq(head_dim, base))
    return ((r - alpha) / (beta - alpha)).clamp(0.0, 1.0)


def blend(theta: Tensor, keep: Tensor, scale: float) -> Tensor:
    """Each pair's frequency kept (share ``keep``) or interpolated by s: (1 - k) theta / s + k theta."""
    return (1 - keep) * theta / scale + keep * theta


def yarn_attention_factor(scale: float) -> float:
    """sqrt(1/t) = 0.1 ln s + 1: sharpens attention, which interpolation had made flatter."""
    return 0.1 * math.log(scale) + 1.0


def rope_yarn_paper(head_dim: int, base: float, scale: float, original_len: int, alpha: float = YARN_ALPHA,
                    beta: float = YARN_BETA) -> tuple[Tensor, float]:
    """YaRN as the paper writes it: theta' = (1 - gamma(r)) theta / s + gamma(r) theta, factor 0.1 ln s + 1."""
    _check_scale(scale, original_len)
    theta = rope_inv_freq(head_dim, base)
    gamma = yarn_paper_ramp(head_dim, base, original_len, alpha, beta)
    return blend(theta, gamma, scale), yarn_attention_factor(scale)


def yarn_channel_ramp(head_dim: int, base: float, original_len: int, beta_fast: float = YARN_BETA,
                      beta_slow: float = YARN_ALPHA, truncate: bool = True) -> Tensor:
    """Share of each channel pair kept as trained (1) rather than interpolated (0), as YaRN's code computes it.

    Pair i turns L * theta_i / (2 pi) times over the trained length L; solving for i where it turns
    beta_fast and beta_slow times gives two cut-offs (rounded outward), and the share falls linearly
    over the pair index between them, not linearly in the number of turns as the paper's gamma(r)."""
    if not (isinstance(beta_slow, (int, float)) and isinstance(beta_fast, (int, float)) and 0 < beta_slow < beta_fast):
        raise ValueError(f"YaRN bounds must satisfy 0 < beta_slow < beta_fast, got beta_slow={beta_slow!r}, "
                         f"beta_fast={beta_fast!r}")

    def pair_turning(turns: float) -> float:
        return head_dim * math.log(original_len / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_turning(beta_fast), pair_turning(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # one pair between the cut-offs: a step, not a division by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    return 1.0 - ramp


def rope_yarn(head_dim: int, base: float, scale: float, original_len: int, beta_fast: float = YARN_BETA,
              beta_slow: float = YARN_ALPHA, truncate: bool = True) -> tuple[Tensor, float]:
    """YaRN as checkpoints use it: theta' = (1 - k) theta / s + k theta with k = ``yarn_channel_ramp``."""
    _check_scale(scale, original_len)
    theta = rope_inv_freq(head_dim, base)
    keep = yarn_channel_ramp(head_dim, base, original_len, beta_fast, beta_slow, truncate)
    return blend(theta, keep, scale), yarn_attention_factor(scale)


def rope_llama3(head_dim: int, base: float, scale: float, original_len: int, low_freq_factor: float = 1.0,
                high_freq_factor: float = 4.0) -> tuple[Tensor, float]:
    """Llama 3.1: long wavelengths (over L / low_freq_factor) interpolated by s, short ones (under
    L / high_freq_factor) kept, and in between a blend linear in L / wavelength. No attention factor."""
    _check_scale(scale, original_len)
    if not (isinstance(low_freq_factor, (int, float)) and isinstance(high_freq_factor, (int, float))
            and 0 < low_freq_factor < high_freq_factor):
        raise ValueError(f"llama3 scaling needs 0 < low_freq_factor < high_freq_factor, got "
                         f"low_freq_factor={low_freq_factor!r}, high_freq_factor={high_freq_factor!r}")
    theta = rope_inv_freq(head_dim, base)
    turns = original_len * theta / (2 * math.pi)  # = L / wavelength
    keep = ((turns - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0.0, 1.0)
    return blend(theta, keep, scale), 1.0


def rope_dynamic_ntk(head_dim: int, base: float, scale: float, original_len: int,
                     seq_len: int | None = None) -> tuple[Tensor, float]:
    """NTK-aware with its base set by the length read (transformers' ``dynamic``): up to L the trained
    frequencies; past it b' = b (s T / L - (s - 1))^(d / (d - 2)), which is NTK at s = T / L when s = 1."""
    _check_scale(scale, original_len)
    positive_int("seq_len", seq_len)
    if head_dim == 2:
        raise ValueError("head_dim must be >= 4 for NTK-aware scaling (the exponent is d / (d - 2))")
    stretch = scale * max(seq_len, original_len) / original_len - (scale - 1)
    return rope_inv_freq(head_dim, base * stretch ** (head_dim / (head_dim - 2))), 1.0


SCALING_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, float]]] = {
    "none": rope_none, "pi": rope_pi, "ntk": rope_ntk, "yarn": rope_yarn, "yarn_paper": rope_yarn_paper,
    "dynamic_ntk": rope_dynamic_ntk, "llama3": rope_llama3}


def scaled_rope(scaling: str, head_dim: int, base: float, scale: float, original_len: int,
                **kwargs) -> tuple[Tensor, float]:
    """(inverse frequencies, attention factor) for a scaling by name."""
    if scaling not in SCALING_FUNCTIONS:
        raise ValueError(f"scaling must be one of {ROPE_SCALINGS}, got {scaling!r}")
    return SCALING_FUNCTIONS[scaling](head_dim, base, scale, original_len, **kwargs)


def max_positions(scaling: str, scale: float, original_len: int | None) -> int | None:
    """Longest input a static scaling was set up for (s * original_len); None where no bound applies
    (dynamic NTK follows the length; llama3 checkpoints read past s * L: Llama 3.1 is 8 x 8192, read to 131072)."""
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
    """Holds the (scaled) inverse frequencies and hands out cos/sin for any positions.

    ``options`` are the scaling's own parameters (YaRN's betas, llama3's frequency factors);
    ``attention_factor``, when given, replaces the scaling's own (YaRN's temperature on PI, say)."""

    def __init__(self, head_dim: int, base: float = 10000.0, attention_factor: float | None = None,
                 scaling: str = "none", scale: float = 1.0, original_len: int | None = None,
                 options: dict | None = None):
        super().__init__()
        self.head_dim, self.base, self.scaling, self.scale = head_dim, base, scaling, scale
        self.original_len = original_len if original_len is not None else 1
        self.options = dict(options or {})
        inv_freq, factor = scaled_rope(scaling, head_dim, base, scale, self.original_len,
                                       **({"seq_len": self.original_len} if scaling == "dynamic_ntk" else {}),
                                       **self.options)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_factor = factor if attention_factor is None else float(attention_factor)
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
        if self.scaling == "dynamic_ntk" and n > self.original_len:  # the base follows the length read
            inv_freq, _ = rope_dynamic_ntk(self.head_dim, self.base, self.scale, self.original_len, n)
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
