"""Serving cost: the decode roofline (bytes read per generated token) and prefill in chunks.

A decode step computes little (about 2 FLOPs per parameter per sequence) but reads every weight
and, per sequence, every cached key and value once: it is memory-bound, and its time is bytes /
bandwidth (Pope et al. 2022). The weights are read once for the whole batch; the cache is read per
sequence and grows with the context T. So the cache's reads pass the weights' at

    T_x = weight bytes / (B x KV bytes per token),

and past T_x long context, not model size, sets the price of a token. Prefill in chunks of c tokens
fills the same cache with the same numbers while the activations (the T x d_ff hidden layer of the
MLP, the T x vocab logits) shrink to c rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig, positive_int
from .flops import matmul_params
from .kvcache import kv_cache_bytes_per_token
from .memory_model import count_params
from .model import GPT


def weight_bytes_read(cfg: ModelConfig, batch: int = 1, bytes_per_element: int = 4) -> int:
    """Bytes of weights one decode step reads: every matrix once for the whole batch; of the embedding
    only the batch's rows (unless it is tied to the output head, which reads all of it)."""
    positive_int("batch", batch)
    total = count_params(cfg.replace(share_layers=False))  # a shared block is read once per use
    if not cfg.tie_weights:
        total -= cfg.vocab_size * cfg.d_model - batch * cfg.d_model
    return total * bytes_per_element


def decode_bytes(cfg: ModelConfig, context: int, batch: int = 1, bytes_per_element: int = 4) -> dict:
    """Bytes read by one decode step at ``context`` cached tokens: weights, KV cache, and their sum."""
    positive_int("context", context)
    weights = weight_bytes_read(cfg, batch, bytes_per_element)
    kv = batch * context * kv_cache_bytes_per_token(cfg, bytes_per_element)
    return {"weights": weights, "kv": kv, "total": weights + kv}


def decode_flops(cfg: ModelConfig, context: int, batch: int = 1) -> int:
    """FLOPs of one decode step with ``context`` tokens cached (as in ``decode_bytes``): 2 per matrix weight
    per sequence, and per layer 4 d_head H for each position attended (the cached ones and the new token)."""
    positive_int("context", context), positive_int("batch", batch)
    attention = 4 * (context + 1) * cfg.head_dim * cfg.n_heads * cfg.n_layers
    return batch * (2 * matmul_params(cfg) + attention)


def crossover_context(cfg: ModelConfig, batch: int = 1, bytes_per_element: int = 4) -> float:
    """T_x: the context at which a decode step reads as many cache bytes as weight bytes."""
    return weight_bytes_read(cfg, batch, bytes_per_element) / (batch * kv_cache_bytes_per_token(cfg,
                                                                                              bytes_per_element))


def predicted_step_ms(cfg: ModelConfig, context: int, bandwidth_bytes_per_s: float, batch: int = 1,
                      bytes_per_element: int = 4) -> float:
    """Decode step time if it only moved bytes at ``bandwidth_bytes_per_s``: the roofline's floor."""
    if not bandwidth_bytes_per_s > 0:
        raise ValueError(f"bandwidth_bytes_per_s must be > 0, got {bandwidth_bytes_per_s!r}")
    return decode_bytes(cfg, context, batch, bytes_per_element)["total"] / bandwidth_bytes_per_s * 1e3


@torch.no_grad()
def prefill(model: GPT, tokens: Tensor, cache, chunk: int | None = None, all_logits: bool = False) -> Tensor:
    """Read the prompt into ``cache``, ``chunk`` tokens per forward pass (None: all at once); return the
    last position's logits (B, 1, V), or with ``all_logits`` every position's (B, T, V)."""
    if chunk is not None:
        positive_int("chunk", chunk)
    if tokens.dim() != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be (batch, time) with time >= 1, got shape {tuple(tokens.shape)}")
    step = tokens.shape[1] if chunk is None else chunk
    kept = []
    for i in range(0, tokens.shape[1], step):
        logits, _ = model(tokens[:, i:i + step], cache=cache)
        kept.append(logits if all_logits else logits[:, -1:].clone())  # a view would keep the chunk's logits
        del logits
    return torch.cat(kept, dim=1) if all_logits else kept[-1]
