"""Attention backends with one signature, and the log-sum-exp merge of partial results.

Every backend takes q of shape (B, H, Tq, D) and k, v of shape (B, Hkv, Tk, D) with H a multiple
of Hkv (grouped-query attention), and returns (B, H, Tq, D). With ``causal=True`` and Tq < Tk the
queries are the last Tq positions (the decode case): query i sees keys j <= i + Tk - Tq.
An optional float ``bias`` broadcastable to (B, H, Tq, Tk) is added to the scores (ALiBi, chapter 6).
"""
from __future__ import annotations

import math
from functools import partial
from types import MappingProxyType
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import positive_int


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


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa", causal: bool = True,
              mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Dispatch to a backend by name: the sweeps' entry (a model calls its ``attention_function``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
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


# ---------------------------------------------------------------------------------------------
# Chunked (flash-style) attention: queries and keys in blocks, an online softmax, O(T) memory.
# ---------------------------------------------------------------------------------------------

def _block_scores(q_blk: Tensor, k_blk: Tensor, scale: float, i0: int, j0: int, offset: int,
                  causal: bool, mask: Tensor | None) -> Tensor:
    """Scores of one (query block, key block) pair, (B, Hkv, G, tq, tk), with -inf where masked."""
    s = (q_blk @ k_blk.unsqueeze(2).transpose(-2, -1)) * scale
    tq, tk = s.shape[-2], s.shape[-1]
    if causal and j0 + tk - 1 > i0 + offset:  # some key in this block lies in some query's future
        i = torch.arange(i0, i0 + tq, device=s.device)[:, None]
        j = torch.arange(j0, j0 + tk, device=s.device)[None, :]
        s = s.masked_fill(j > i + offset, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask[..., i0:i0 + tq, j0:j0 + tk], float("-inf"))
    return s


def _key_blocks(i0: int, tq: int, t_k: int, k_chunk: int, offset: int, causal: bool, skip: bool = True) -> range:
    """Key block starts that a query block visits: with a causal mask, blocks wholly in the future are skipped
    (as FlashAttention-2 does) unless ``skip`` is False, which computes them and masks every score."""
    last = min(t_k, i0 + tq + offset) if causal and skip else t_k
    return range(0, max(last, 0), k_chunk)


def _group_mask(mask: Tensor | None, h_kv: int, n_heads: int) -> Tensor | None:
    """Reshape a (B|1, H|1, Tq, Tk) mask to the grouped layout (B|1, Hkv|1, G|1, Tq, Tk)."""
    if mask is None:
        return None
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)
    mask = mask.expand(mask.shape[0], n_heads, *mask.shape[2:])
    return mask.reshape(mask.shape[0], h_kv, n_heads // h_kv, *mask.shape[2:])


def chunked_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None,
                    q_chunk: int = 256, k_chunk: int = 256, skip: bool = True) -> tuple[Tensor, Tensor]:
    """The online-softmax loop: (out (B, H, Tq, D), lse (B, H, Tq)), one (q_chunk x k_chunk) block of
    scores per head at a time. No checks (callers check): ring attention runs it on every block."""
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    qg = q.reshape(b, h_kv, h // h_kv, t_q, d)
    gmask = _group_mask(mask, h_kv, h)
    scale, offset = 1.0 / math.sqrt(d), t_k - t_q
    out = torch.zeros_like(qg)
    lse = torch.full(qg.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
    for i0 in range(0, t_q, q_chunk):
        q_blk = qg[..., i0:i0 + q_chunk, :]
        tq = q_blk.shape[-2]
        row_max = torch.full(q_blk.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros_like(q_blk)
        for j0 in _key_blocks(i0, tq, t_k, k_chunk, offset, causal, skip):
            s = _block_scores(q_blk, k[:, :, j0:j0 + k_chunk], scale, i0, j0, offset, causal, gmask)
            new_max = torch.maximum(row_max, s.amax(-1))
            safe_max = new_max.masked_fill(torch.isinf(new_max), 0.0)  # rows with nothing visible yet
            p = torch.exp(s - safe_max.unsqueeze(-1))
            correction = torch.exp(row_max - safe_max)  # rescale what was summed under the old max
            row_sum = row_sum * correction + p.sum(-1)
            acc = acc * correction.unsqueeze(-1) + p @ v[:, :, j0:j0 + k_chunk].unsqueeze(2)
            row_max = new_max
        seen = row_sum > 0
        out[..., i0:i0 + tq, :] = acc / torch.where(seen, row_sum, torch.ones_like(row_sum)).unsqueeze(-1)
        lse[..., i0:i0 + tq] = torch.where(seen, row_max + torch.log(row_sum), lse[..., i0:i0 + tq])
    return out.reshape(b, h, t_q, d), lse.reshape(b, h, t_q)


def chunked_backward(q: Tensor, k: Tensor, v: Tensor, d_out: Tensor, lse: Tensor, delta: Tensor, causal: bool,
                     mask: Tensor | None = None, q_chunk: int = 256, k_chunk: int = 256, skip: bool = True,
                     into: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients block by block from a saved log-sum-exp: P = exp(S - lse), dS = P * (dP - delta), where
    delta = rowsum(dO * O) (less the lse's own gradient). ``lse`` and ``delta`` may be those of a longer
    key range than ``k`` (ring attention passes the final ones). Adds into ``into`` = (dq, dk, dv) when
    given (views of bigger buffers are fine), else into zeros; returns them."""
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    qg = q.reshape(b, h_kv, h // h_kv, t_q, d)
    gmask = _group_mask(mask, h_kv, h)
    scale, offset = 1.0 / math.sqrt(d), t_k - t_q
    d_out = d_out.reshape(qg.shape)
    rows = qg.shape[:-1]
    delta, lse = delta.reshape(rows), lse.reshape(rows)
    safe_lse = lse.masked_fill(torch.isinf(lse), 0.0)
    dq, dk, dv = into if into is not None else (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
    dqg = dq.unflatten(1, (h_kv, h // h_kv))  # a view: adding into it adds into dq
    for i0 in range(0, t_q, q_chunk):
        sl = slice(i0, i0 + q_chunk)
        q_blk, do_blk = qg[..., sl, :], d_out[..., sl, :]
        tq = q_blk.shape[-2]
        for j0 in _key_blocks(i0, tq, t_k, k_chunk, offset, causal, skip):
            kl = slice(j0, j0 + k_chunk)
            k_blk, v_blk = k[:, :, kl].unsqueeze(2), v[:, :, kl].unsqueeze(2)
            s = _block_scores(q_blk, k[:, :, kl], scale, i0, j0, offset, causal, gmask)
            p = torch.exp(s - safe_lse[..., sl].unsqueeze(-1))
            dv[:, :, kl] += (p.transpose(-2, -1) @ do_blk).sum(2)
            ds = p * (do_blk @ v_blk.transpose(-2, -1) - delta[..., sl].unsqueeze(-1))
            dqg[..., sl, :] += (ds @ k_blk) * scale
            dk[:, :, kl] += (ds.transpose(-2, -1) @ q_blk).sum(2) * scale
    return dq, dk, dv


class ChunkedAttentionFunction(torch.autograd.Function):
    """Exact attention in blocks. Forward keeps a running max and sum per row (the online softmax);
    backward recomputes each block's probabilities from the saved log-sum-exp, so neither pass
    ever holds more than one (q_chunk x k_chunk) block of scores per head."""

    @staticmethod
    def forward(ctx, q, k, v, causal, mask, q_chunk, k_chunk, skip):
        out, lse = chunked_forward(q, k, v, causal, mask, q_chunk, k_chunk, skip)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.q_chunk, ctx.k_chunk, ctx.skip = causal, q_chunk, k_chunk, skip
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        d_out = grad_out if grad_out is not None else torch.zeros_like(out)
        d_lse = grad_lse if grad_lse is not None else torch.zeros_like(lse)
        # d(softmax) needs rowsum(dO * O); a row's lse gradient adds d_lse * p to its scores' gradient
        delta = (d_out * out).sum(-1) - d_lse
        dq, dk, dv = chunked_backward(q, k, v, d_out, lse, delta, ctx.causal, mask, ctx.q_chunk, ctx.k_chunk,
                                      ctx.skip)
        return dq, dk, dv, None, None, None, None, None


def chunked_attention_with_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                               q_chunk: int = 256, k_chunk: int = 256,
                               skip_future: bool = True) -> tuple[Tensor, Tensor]:
    """Chunked attention returning (out, lse); lse (B, H, Tq) lets ``merge_partials`` combine key ranges.
    ``skip_future=False`` computes the key blocks a causal mask hides entirely (same result, more work)."""
    check_qkv(q, k, v, mask)
    positive_int("q_chunk", q_chunk), positive_int("k_chunk", k_chunk)
    if mask is not None:
        mask = mask.expand(*mask.shape[:2], q.shape[2], k.shape[2])
    if not isinstance(skip_future, bool):
        raise TypeError(f"skip_future must be a bool, got {skip_future!r}")
    return ChunkedAttentionFunction.apply(q, k, v, causal, mask, q_chunk, k_chunk, skip_future)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                      q_chunk: int = 256, k_chunk: int = 256, bias: Tensor | None = None,
                      skip_future: bool = True) -> Tensor:
    """Flash-style attention in pure PyTorch: equal to ``naive_attention``, memory O(T) forward and backward."""
    if bias is not None:
        raise ValueError("the chunked kernel takes no additive bias (ALiBi): use attention='naive' or 'sdpa'")
    return chunked_attention_with_lse(q, k, v, causal, mask, q_chunk, k_chunk, skip_future)[0]


# Read-only: a backend is chosen when a model is built (``attention_function``), never swapped in here.
BACKENDS: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {"naive": naive_attention, "sdpa": sdpa_attention, "chunked": chunked_attention})


def attention_function(backend: str, chunk: int = 256) -> Callable[..., Tensor]:
    """The attention a model's layers call, chosen once when the model is built: f(q, k, v, causal, mask, bias).
    ``chunk`` is the chunked kernel's block size, which trades one block of scores for loop steps."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if backend == "chunked":
        return partial(chunked_attention, q_chunk=chunk, k_chunk=chunk)
    return BACKENDS[backend]
