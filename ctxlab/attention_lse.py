"""torch's fused attention kernels, called for their log-sum-exp: the block kernel of a fast ring.

``F.scaled_dot_product_attention`` returns only the output, but the flash kernels under it also
compute each row's log-sum-exp, and their backward recomputes the probabilities from it and from
the output it is given. That is all a ring step needs (chapter 5): the forward's (out, lse) merge
exactly, and the backward, given the *final* output and log-sum-exp of the whole row, returns the
exact gradient of one block of keys. torch exposes both as aten operators: on CPU
``_scaled_dot_product_flash_attention_for_cpu`` (float32, float64, bfloat16), on CUDA
``_scaled_dot_product_flash_attention`` (float16 and bfloat16 only). They are private operators, so
this file is the one place that calls them; ``ctxlab.gpucheck`` compares the CUDA path with SDPA.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import repeat_kv

_aten = torch.ops.aten


def fused_supported(q: Tensor) -> bool:
    """Whether torch has a fused kernel with a log-sum-exp for this device and dtype."""
    if q.device.type == "cpu":
        return q.dtype in (torch.float32, torch.float64, torch.bfloat16)
    return q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)


def _check(q: Tensor) -> None:
    if not fused_supported(q):
        raise ValueError(f"the fused kernel takes float32/float64/bfloat16 on CPU and float16/bfloat16 on CUDA, "
                         f"got {q.dtype} on {q.device.type}: use the chunked kernel")


def fused_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """(out, lse) of q (B, H, Tq, D) against k, v (B, Hkv, Tk, D); lse (B, H, Tq), float32 (float64 for it)."""
    _check(q)
    k, v = repeat_kv(k, q.shape[1]).contiguous(), repeat_kv(v, q.shape[1]).contiguous()
    if q.device.type == "cpu":
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q.contiguous(), k, v, 0.0, causal)
    else:
        out, lse = _aten._scaled_dot_product_flash_attention(q.contiguous(), k, v, 0.0, causal)[:2]
    return out, lse


def fused_backward(q: Tensor, k: Tensor, v: Tensor, d_out: Tensor, out: Tensor, lse: Tensor,
                   causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of one block from the output and log-sum-exp of the *whole* row (``out``, ``lse``):
    the kernel recomputes P = exp(S - lse) and uses rowsum(dO * out), so the block's share is exact."""
    _check(q)
    h, h_kv = q.shape[1], k.shape[1]
    kr, vr = repeat_kv(k, h).contiguous(), repeat_kv(v, h).contiguous()
    args = (d_out.contiguous().to(q.dtype), q.contiguous(), kr, vr, out.contiguous().to(q.dtype),
            lse.contiguous().to(torch.promote_types(q.dtype, torch.float32)))  # the kernel's own lse dtype
    if q.device.type == "cpu":
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(*args, 0.0, causal)
    else:
        empty = torch.empty(0, device=q.device, dtype=torch.int64)
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_backward(
            *args, empty, empty, q.shape[2], k.shape[2], 0.0, causal, empty, empty)
    fold = (k.shape[0], h_kv, h // h_kv, k.shape[2], k.shape[3])  # sum the query heads sharing a K/V head
    return dq, dk.reshape(fold).sum(2), dv.reshape(fold).sum(2)
