"""Attention backends with one signature, and the log-sum-exp merge of partial results.

Every backend takes q of shape (B, H, Tq, D) and k, v of shape (B, Hkv, Tk, D) with H a multiple
of Hkv (grouped-query attention), and returns (B, H, Tq, D). With ``causal=True`` and Tq < Tk the
queries are the last Tq positions (the decode case): query i sees keys j <= i + Tk - Tq.
An optional float ``bias`` broadcastable to (B, H, Tq, Tk) is added to the scores (ALiBi, chapter 6).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> None:
    """Raise a clear error for shapes or masks that no backend can take."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor (batch, heads, time, head_dim), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must agree in batch and head_dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k/v heads ({k.shape[1]})")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"q has more positions ({q.shape[2]}) than k ({k.shape[2]})")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.dim() != 4:
            raise ValueError(f"mask must be 4-d, broadcastable to (B, H, Tq, Tk), got {tuple(mask.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or not bias.is_floating_point():
            raise TypeError(f"bias must be a float tensor, got {getattr(bias, 'dtype', type(bias).__name__)}")
        if bias.dim() != 4 or bias.shape[1] not in (1, q.shape[1]) or bias.shape[-2:] != (q.shape[2], k.shape[2]):
            raise ValueError(f"bias must be 4-d (B or 1, H or 1, Tq, Tk) = (.., {q.shape[1]}, {q.shape[2]}, "
                             f"{k.shape[2]}), got {tuple(bias.shape)}")


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> Tensor:
    """(Tq, Tk) bool mask, True where query i may see key j (bottom-right aligned)."""
    offset = t_k - t_q
    i = torch.arange(t_q, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i + offset


def _combined_mask(q: Tensor, k: Tensor, causal: bool, mask: Tensor | None) -> Tensor | None:
    if causal:
        cm = causal_mask(q.shape[2], k.shape[2], q.device)[None, None]
        return cm if mask is None else (mask & cm)
    return mask


def _grouped(x: Tensor, h_kv: int, h: int) -> Tensor:
    """(B, H or 1, Tq, Tk) -> (B, Hkv or 1, H/Hkv or 1, Tq, Tk), matching grouped query heads."""
    if x.shape[1] == 1:
        return x.reshape(x.shape[0], 1, 1, *x.shape[2:])
    return x.reshape(x.shape[0], h_kv, h // h_kv, *x.shape[2:])


def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                    bias: Tensor | None = None) -> Tensor:
    """Textbook attention: materialises the (Tq x Tk) scores and probabilities for every head."""
    check_qkv(q, k, v, mask, bias)
    b, h, t_q, d = q.shape
    h_kv = k.shape[1]
    # Group the query heads that share one k/v head, so k and v are never copied.
    qg = q.reshape(b, h_kv, h // h_kv, t_q, d)
    scores = qg @ k.unsqueeze(2).transpose(-2, -1) * (1.0 / math.sqrt(d))
    if bias is not None:
        scores = scores + _grouped(bias, h_kv, h)
    full = _combined_mask(q, k, causal, mask)
    if full is not None:
        scores = scores.masked_fill(~_grouped(full, h_kv, h), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v.unsqueeze(2)).reshape(b, h, t_q, d)


def repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """Expand (B, Hkv, T, D) to (B, H, T, D) for kernels that want one k/v per query head."""
    h_kv = x.shape[1]
    if h_kv == n_heads:
        return x
    b, _, t, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_heads // h_kv, t, d).reshape(b, n_heads, t, d)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                   bias: Tensor | None = None) -> Tensor:
    """torch's fused kernel (flash or memory-efficient where it can, the math kernel otherwise)."""
    check_qkv(q, k, v, mask, bias)
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    if mask is None and bias is None and (not causal or q.shape[2] == k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    full = _combined_mask(q, k, causal, mask)
    if bias is not None:  # a float mask is added to the scores: -inf where not allowed
        full = bias if full is None else bias.masked_fill(~full, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=full)


BACKENDS: dict[str, Callable[..., Tensor]] = {"naive": naive_attention, "sdpa": sdpa_attention}


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa", causal: bool = True,
              mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Dispatch to a backend by name (``bias`` is passed only when given, so any backend works without it)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if bias is None:
        return BACKENDS[backend](q, k, v, causal=causal, mask=mask)
    return BACKENDS[backend](q, k, v, causal=causal, mask=mask, bias=bias)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                       mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference attention that also returns each row's log-sum-exp of scores, shape (B, H, Tq).

    A row with no visible key gets output 0 and log-sum-exp -inf, so merging it changes nothing.
    """
    check_qkv(q, k, v, mask)
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))
    full = _combined_mask(q, k, causal, mask)
    if full is not None:
        scores = scores.masked_fill(~full, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    return probs @ v, lse


def merge_partials(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Combine attention over two disjoint key sets into attention over their union (exact).

    Each output is a softmax-weighted mean over its own keys; reweighting by exp(lse - lse_total)
    turns the two means into the mean over all keys. This is the step that makes chunked (flash)
    attention and ring attention exact.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w_a = torch.exp(lse_a - safe).unsqueeze(-1)
    w_b = torch.exp(lse_b - safe).unsqueeze(-1)
    return w_a * out_a + w_b * out_b, lse
