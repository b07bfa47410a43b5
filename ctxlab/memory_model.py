"""Where the memory of one training step goes, predicted and measured, and the largest context under a budget.

The prediction counts the tensors PyTorch keeps: parameters, gradients, AdamW's two moments, and
per layer the activations that autograd saves for backward (all of them, or only each block's
input when the block is recomputed), plus the logits and the largest temporaries of backward.
The measurement runs the step under :class:`~ctxlab.measure.LiveStorageTracker`; on CPU it can run
under ``FakeTensorMode``, which allocates nothing and computes nothing but reports the same bytes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .config import ModelConfig, positive_int
from .flops import block_matmul_params
from .kvcache import ContiguousKVCache
from .measure import default_dtype, measure_peak, run_point
from .model import GPT
from .search import largest_fitting, search

# A technique is a set of config changes; "all" combines every memory option of chapter 2.
TECHNIQUES: dict[str, dict] = {
    "naive": dict(attention="naive"),
    "sdpa": dict(attention="sdpa"),
    "chunked": dict(attention="chunked"),
    "checkpoint": dict(checkpoint_every=1),
    "selective": dict(checkpoint_attention=True),
    "chunked_loss": dict(loss_chunk=1024),
    "chunked_mlp": dict(mlp_chunk=1024),
}


def apply_techniques(cfg: ModelConfig, techniques: Sequence[str]) -> ModelConfig:
    """The config with each named technique's changes applied in order."""
    if isinstance(techniques, str):
        techniques = [techniques]
    changes: dict = {}
    for name in techniques:
        if name not in TECHNIQUES:
            raise ValueError(f"techniques must be names from {tuple(TECHNIQUES)}, got {name!r}")
        changes.update(TECHNIQUES[name])
    return cfg.replace(**changes)


def count_params(cfg: ModelConfig) -> int:
    """Distinct parameters of ``GPT(cfg)``, by formula (a tied head and shared blocks count once): each
    block's matrices (``flops.block_matmul_params``), q/k/v biases and two norms, the embedding, the head.
    For the shipped Llama-family configs this is the published count (tested)."""
    d = cfg.d_model
    norm = d if cfg.norm == "rmsnorm" else 2 * d  # RMSNorm has a scale only; LayerNorm a scale and a bias
    bias = d + 2 * cfg.n_kv_heads * cfg.head_dim if cfg.qkv_bias else 0
    qk_norm = 4 * cfg.head_dim if cfg.qk_norm else 0  # a scale and a bias for queries and for keys
    block = block_matmul_params(cfg) + bias + qk_norm + 2 * norm
    blocks = 1 if cfg.share_layers else cfg.n_layers
    return cfg.vocab_size * d * (1 if cfg.tie_weights else 2) + blocks * block + norm


def predict_step_memory(cfg: ModelConfig, seq_len: int, batch: int = 1, bytes_per_element: int = 4) -> dict:
    """Predicted bytes at the peak of one AdamW training step, by part (see the module docstring)."""
    positive_int("seq_len", seq_len), positive_int("batch", batch)
    e, t, n = bytes_per_element, seq_len, seq_len * batch
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    kv, ff, v = cfg.n_kv_heads * hd, cfg.ffn_dim, cfg.vocab_size
    params = count_params(cfg) * e
    # saved by one block for backward: x, norm1(x), the attention output's (B, T, d) copy, x + attn,
    # norm2(x), and the MLP's hidden tensors: before and after GELU, or SwiGLU's gate, silu(gate), up and
    # their product; and what the attention core keeps: rotated q and k, the k/v projection, its output
    hidden = (4 if cfg.mlp == "swiglu" else 2) * ff
    mlp_rows = min(n, cfg.mlp_chunk) if cfg.mlp_chunk else n
    rest = n * 5 * d + (0 if cfg.mlp_chunk else hidden * n) + (n * (d + kv) if cfg.qk_norm else 0)  # QK-norm's inputs
    core = n * (2 * d + 3 * kv)
    g = h // cfg.n_kv_heads
    if cfg.attention == "naive":  # probabilities (B, H, T, T) and the bool mask; no fused output
        attn_saved = h * t * t * batch * e + t * t
        attn_temp = 2 * h * t * t * batch * e  # gradients of probabilities and scores in backward
        # torch.matmul saves the operands it batches (measured): for MHA, and MQA at batch 1 (one
        # k/v head: folded into one matrix product), the rotated k, and v as a view of the k/v
        # projection at batch 1 (the whole buffer stays) or a copy above; otherwise k and v copied
        # to every query head
        viewed = g == 1 or (batch == 1 and cfg.n_kv_heads == 1)
        k_side, v_side = (kv, 2 * kv if batch == 1 else kv) if viewed else (d, d)
        core = n * (d + k_side + v_side)
    else:  # fused or chunked: the output (counted above) and one log-sum-exp per row
        attn_saved, attn_temp = h * n * e, 0
        if cfg.attention == "sdpa" and 1 < cfg.n_kv_heads < h:  # torch's kernel gets k/v copied to every head
            core = n * 4 * d
        if cfg.attention == "chunked":  # a few (chunk x chunk) blocks of scores per head at a time
            attn_temp = 5 * h * min(cfg.attn_chunk, t) ** 2 * batch * e
    # dropout after attention and after the MLP keeps its scaled mask: on CPU in the activations' dtype
    # (measured; CUDA's fused kernel keeps one byte per element, so this is an upper bound there)
    # RMSNorm runs as several ops in fp32 (no fused kernel everywhere): each of the two keeps its normalised
    # input in fp32, and below fp32 its fp32 copy of the input too (measured: 4 and about 8 bytes an element)
    norm_bytes = 2 * n * d * (4 if e >= 4 else 8) if cfg.norm == "rmsnorm" else 0
    others = norm_bytes + (2 * n * d * e if cfg.dropout > 0 else 0)
    full_layer = (rest + core) * e + attn_saved + others
    # selective recomputation keeps only the core's inputs (rotated q and k, the k/v projection) and
    # recomputes the rest of the core in backward, where the moments below rebuild it
    kept_layer = (rest + n * (d + 3 * kv)) * e + others if cfg.checkpoint_attention else full_layer
    saved = [n * d * e if cfg.recomputes(i) else kept_layer
             for i in range(cfg.n_layers)]
    # backward of block i: blocks below still hold what they saved; block i holds its activations (rebuilt
    # if recomputed) plus, first, the MLP's gradient (its hidden already freed by then if chunked) and,
    # later, with the MLP's activations freed, attention's gradient temporaries
    hidden_grad = (hidden // 2) * mlp_rows * e  # the gradient of the hidden layer (both halves for SwiGLU)
    mlp_moment = full_layer + hidden_grad + (hidden * mlp_rows * e if cfg.mlp_chunk else 0) + 2 * n * d * e
    attn_moment = full_layer - (0 if cfg.mlp_chunk else hidden * n * e) + attn_temp + 2 * n * d * e
    if cfg.attention == "naive":  # at the softmax's backward, the peak: the block's MLP is done with
        held = n * (3 * d + k_side) * e + attn_saved + norm_bytes // 2  # x, norm1, q, the k operand
        grads = n * (d + (kv if viewed else d)) * e  # the residual stream's and the v operand's
        weights = (block_matmul_params(cfg) - d * d - 2 * kv * d) * e  # out_proj's and the MLP's, made
        attn_moment = held + attn_temp + grads + weights
    # gradients appear as backward goes down: the head/embedding's first, then one block's at a time
    block_grad = (count_params(cfg) - cfg.vocab_size * d * (1 if cfg.tie_weights else 2) - 2 * d) * e
    block_grad //= 1 if cfg.share_layers else cfg.n_layers
    head_grad = cfg.vocab_size * d * e * (1 if cfg.tie_weights else 2)

    def grads_during(i: int) -> int:
        above = (1 if i < cfg.n_layers - 1 else 0) if cfg.share_layers else cfg.n_layers - 1 - i
        return head_grad + above * block_grad

    block_phase = max(sum(saved[:i]) + grads_during(i) for i in range(cfg.n_layers)) + max(mlp_moment, attn_moment)
    rows = min(n, cfg.loss_chunk) if cfg.loss_chunk else n
    # final norm in/out; then the logits, with the loss in fp32 whatever the model's precision: at the
    # peak 12 bytes per logit (fp32: logits, log-probabilities, their gradient; bf16: the logits and their
    # gradient in bf16, an fp32 copy and the fp32 log-probabilities), measured in both (tests)
    head_phase = sum(saved) + 2 * n * d * e + 12 * rows * v
    step_phase = params  # all gradients, at the optimiser step
    activations = max(max(block_phase, head_phase, step_phase) - params, 0)
    # "activations" is the peak beyond the four state copies (weights, every gradient, two moments): the
    # activations and temporaries alive at the peak, less the gradients backward has not yet made by then,
    # so that the four parts stack to the peak. "saved_activations" (what forward keeps for backward) is
    # part of it, not added to "total": a pipeline stage keeps it for every micro-batch in flight
    return {"parameters": params, "gradients": params, "optimizer": 2 * params, "activations": activations,
            "total": 4 * params + activations, "saved_activations": sum(saved)}


def _training_step(cfg: ModelConfig, seq_len: int, batch: int, device: str,
                   dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(bytes alive before the step: parameters + AdamW states, peak bytes added during the step)."""
    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        model = GPT(cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)

    def step(t: int) -> None:
        tokens = torch.randint(0, cfg.vocab_size, (batch, t), device=device)
        model(tokens, tokens)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(8)  # creates the optimiser states: the measured step is a steady-state one
    existing = list(model.parameters()) + [s for st in opt.state.values() for s in st.values() if torch.is_tensor(s)]
    before = sum(t.nbytes for t in existing)
    return before, measure_peak(lambda: step(seq_len), device, existing=existing)


def measure_step_memory(cfg: ModelConfig, seq_len: int, batch: int = 1, device: str = "cpu",
                        fake: bool = True, dtype: torch.dtype = torch.float32) -> dict:
    """Measured bytes of one AdamW training step: states alive before it and the peak it adds.

    ``fake=True`` (CPU only) traces the step under ``FakeTensorMode``: same bytes, no compute, so an 8B
    model's step is traced on a laptop. ``dtype`` is the weights' and activations' (and AdamW's) type.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    positive_int("seq_len", seq_len)
    if fake and torch.device(device).type == "cpu":
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            before, peak = _training_step(cfg, seq_len, batch, device, dtype)
    else:
        before, peak = _training_step(cfg, seq_len, batch, device, dtype)
    return {"states": before, "step_peak": peak, "total": before + peak}


def max_context(cfg: ModelConfig, budget_bytes: float, techniques: Sequence[str] = (), method: str = "predict",
                batch: int = 1, device: str = "cpu", tolerance: float = 0.01, granularity: int = 64,
                traced_attention: str | None = None) -> int:
    """Largest context T (a multiple of ``granularity``) whose training step fits ``budget_bytes``.

    ``method="predict"`` searches with :func:`predict_step_memory`; ``"measure"`` with
    :func:`measure_step_memory` (traced, so each probe takes seconds), starting from the prediction and
    bisecting until the bracket is within ``tolerance`` (relative) or ``granularity`` tokens.
    Returns 0 when not even ``granularity`` tokens fit. ``traced_attention`` swaps the attention
    backend for the measured probes only: the chunked backend's Python loop over blocks makes tracing
    long contexts slow, and torch's fused kernel saves the same tensors (q, k, v, output, log-sum-exp).
    A probe that runs out of device memory counts as "does not fit".
    """
    if method not in ("predict", "measure"):
        raise ValueError(f"method must be 'predict' or 'measure', got {method!r}")
    if not isinstance(budget_bytes, (int, float)) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive number, got {budget_bytes!r}")
    if not isinstance(granularity, int) or granularity <= 0 or not 0 < tolerance < 1:
        raise ValueError(f"granularity must be a positive int and tolerance in (0, 1), got {granularity!r}, {tolerance!r}")
    cfg = apply_techniques(cfg, techniques)
    states = 4 * count_params(cfg) * 4
    if budget_bytes < states:
        raise ValueError(f"budget_bytes={budget_bytes:,.0f} is smaller than the model's own states "
                         f"({states:,} bytes: parameters, gradients and two AdamW moments in fp32); "
                         "no context length fits")

    def predicted(t: int) -> int:
        return predict_step_memory(cfg, t, batch)["total"]

    traced = cfg if traced_attention is None else cfg.replace(attention=traced_attention)

    def measured(t: int) -> float:
        row = run_point(lambda: measure_step_memory(traced, t, batch, device))
        return float("inf") if row["oom"] else row["total"]

    # predicted memory grows with T, so bisection on it is exact; it also gives the measured search its start,
    # from which steps of 10% find the measured boundary in a few probes
    lo = largest_fitting(lambda t: predicted(t) <= budget_bytes, granularity)
    if method == "predict":
        return lo
    return search(lambda t: measured(t) <= budget_bytes, granularity, start=lo, factor=1.1,
                  tolerance=tolerance).largest


def filled_cache_bytes(cfg: ModelConfig, n_tokens: int, seed: int = 0) -> int:
    """Bytes of the tensors a contiguous cache allocates for ``n_tokens``, once a model of ``cfg`` has
    prefilled exactly that many positions into it: the cache's own count, set beside the formula of
    ``kv_cache_bytes_per_token`` (the prefill checks the model uses that cache and no more positions)."""
    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        model = GPT(cfg).eval()
        tokens = torch.randint(0, cfg.vocab_size, (1, n_tokens))
    cache = ContiguousKVCache(cfg, batch_size=1, max_len=n_tokens)
    with torch.no_grad():
        model(tokens, cache=cache)
    if cache.seq_len != n_tokens:
        raise RuntimeError(f"the cache holds {cache.seq_len} tokens after a prefill of {n_tokens}")
    return cache.nbytes()
