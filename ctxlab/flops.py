"""Counting training FLOPs: 6N per token for the weights plus the attention term that grows with T.

For a decoder with N matmul parameters, one token costs 2N FLOPs forward and 4N backward (gradients
for inputs and for weights). Attention adds, per layer and token, 2*T*d for q.k and 2*T*d for the
weighted sum of values forward, three times that for forward + backward: 12*L*d*T per token, the
term PaLM's MFU formula adds to 6N (Chowdhery et al. 2022). A causal kernel that skips masked
blocks does about half of it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig, positive_int


def block_matmul_params(cfg: ModelConfig) -> int:
    """Matrix-multiply parameters of one block: q and output projections, k/v projections, the MLP
    (two matrices, or three for SwiGLU's gate, up and down)."""
    d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    return d * d + d * 2 * kv + d * d + (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ffn_dim


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matrix multiply per token (embedding lookups do not; the head does)."""
    return cfg.n_layers * block_matmul_params(cfg) + cfg.d_model * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, causal_skip: bool = False) -> float:
    """Training (fwd + bwd) attention FLOPs per token: 12 * L * d * T, halved when masked blocks are skipped."""
    if not seq_len > 0:  # a formula: any positive length, fractional ones included (solving for T)
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    full = 12.0 * cfg.n_layers * cfg.d_model * seq_len
    return full / 2 if causal_skip else full


def training_flops_per_token(cfg: ModelConfig, seq_len: int, causal_skip: bool = False) -> float:
    """6N + 12 L d T: the model FLOPs of one training token (no recomputation counted)."""
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, causal_skip)


def recompute_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """What activation checkpointing adds per token: the forward of every recomputed block again, its
    matmuls (2 FLOPs a parameter) and its attention (4 d T), but not the block's last matmul, the MLP's
    down projection: torch's (non-reentrant) checkpoint stops recomputing once it has rebuilt every tensor
    the backward needs, and that output is none of them. The head and the loss are not recomputed.
    Selective recomputation (``checkpoint_attention``) adds the scores q k^T again, 2 d T, in every layer:
    the weighted sum of v is not re-run, for the same reason as the down projection."""
    _check_positive_ints(seq_len=seq_len)
    layers = sum(cfg.recomputes(i) for i in range(cfg.n_layers))
    down_projection = cfg.ffn_dim * cfg.d_model
    core = cfg.n_layers * 2.0 * cfg.d_model * seq_len if cfg.checkpoint_attention else 0.0
    return layers * (2.0 * (block_matmul_params(cfg) - down_projection) + 4.0 * cfg.d_model * seq_len) + core


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products ``fn()`` runs, counted by torch's FlopCounterMode (elementwise work is
    not counted, nor are kernels it does not know, such as SDPA's CPU flash kernel)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_training_flops(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of one forward + backward counted by torch's FlopCounterMode.

    Use the ``naive`` attention backend: the CPU flash kernel of SDPA is not counted.
    """
    flops = count_flops(lambda: model(tokens, targets)[1].backward())
    model.zero_grad(set_to_none=True)
    return flops


def model_flops_utilisation(tokens_per_second: float, flops_per_token: float, peak_flops_per_second: float) -> float:
    """MFU: achieved model FLOP/s over the hardware's peak (recomputation does not count as useful work)."""
    if peak_flops_per_second <= 0:
        raise ValueError(f"peak_flops_per_second must be positive, got {peak_flops_per_second}")
    return tokens_per_second * flops_per_token / peak_flops_per_second


def _check_positive_ints(**values: int) -> None:
    for name, value in values.items():
        positive_int(name, value)


def attention_intensity(seq_len: int, head_dim: int, bytes_per_element: int = 2, fused: bool = True) -> float:
    """FLOPs per byte of one head's attention forward (no mask skipping), the roofline's x-axis.

    4 T^2 d_h FLOPs (q.k and the weighted sum of v). A fused kernel moves q, k, v and the output,
    4 T d_h elements, so its intensity grows like T. A naive one also writes and reads the T x T
    scores and probabilities, 4 T^2 elements, so its intensity stops at d_h / bytes: memory-bound.
    """
    _check_positive_ints(seq_len=seq_len, head_dim=head_dim, bytes_per_element=bytes_per_element)
    flops = 4 * seq_len**2 * head_dim
    elements = 4 * seq_len * head_dim + (0 if fused else 4 * seq_len**2)
    return flops / (elements * bytes_per_element)


def mlp_intensity(tokens: int, d_model: int, mlp_ratio: int = 4, bytes_per_element: int = 2) -> float:
    """FLOPs per byte of the MLP forward over ``tokens`` rows: 4 n d f FLOPs over both weight matrices
    (2 d f) plus each matmul's input and output (2 n d + 2 n f). Grows like n, then levels off near
    2 d f / (d + f) / bytes once the weights are read once for many tokens."""
    _check_positive_ints(tokens=tokens, d_model=d_model, mlp_ratio=mlp_ratio, bytes_per_element=bytes_per_element)
    ff = mlp_ratio * d_model
    flops = 4 * tokens * d_model * ff
    elements = 2 * d_model * ff + 2 * tokens * d_model + 2 * tokens * ff
    return flops / (elements * bytes_per_element)


def roofline_rate(intensity: float, peak_flops_per_second: float, bytes_per_second: float) -> float:
    """Attainable FLOP/s at an intensity: min(peak, intensity x bandwidth) (Williams et al. 2009)."""
    if intensity <= 0 or peak_flops_per_second <= 0 or bytes_per_second <= 0:
        raise ValueError("intensity, peak_flops_per_second and bytes_per_second must be positive, got "
                         f"{intensity}, {peak_flops_per_second} and {bytes_per_second}")
    return min(peak_flops_per_second, intensity * bytes_per_second)
