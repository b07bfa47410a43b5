"""Korthikanti et al.'s activation formula, s b h (34 + 5 a s / h) bytes per layer, traced term by term.

The formula counts what one GPT-3 layer of Megatron-LM keeps for backward in 16-bit with dropout
(s tokens, micro-batch b, width h, a heads). ``MegatronBlock`` is that layer written out so that each
term is one saved tensor (named below); tracing it reproduces the formula. ctxlab's own model keeps
other tensors (RoPE's rotated q and k beside the k/v projection, no dropout on the probabilities, a
bool causal mask, CPU dropout masks in the activations' dtype), and its bytes are listed beside them.

Traced under ``FakeTensorMode`` (nothing allocated): the bytes alive after the forward of two layers,
less those after one, are one layer's activations, whatever the embedding, the loss and the output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, positive_int
from ..measure import bytes_alive_after, default_dtype
from ..model import GPT

# Per layer, bytes as multiples of s b h, a s^2 b and s^2: (term, Megatron's, ctxlab's), for 16-bit
# values with dropout. Megatron's column is Korthikanti et al. 2022, section 4.1; ctxlab's is its model
# with naive attention, dropout and full multi-head attention at micro-batch 1 (the memory model's terms)
TERMS = [
    ("LayerNorm inputs (two)", (4, 0, 0), (4, 0, 0)),
    ("QKV projection input", (2, 0, 0), (2, 0, 0)),
    ("q and k for QK^T (ctxlab: rotated by RoPE)", (4, 0, 0), (4, 0, 0)),
    ("v (ctxlab: the k/v projection, k rows too)", (2, 0, 0), (4, 0, 0)),
    ("softmax output", (0, 2, 0), (0, 2, 0)),
    ("dropout mask on the probabilities", (0, 1, 0), (0, 0, 0)),
    ("dropped-out probabilities, for @ v", (0, 2, 0), (0, 0, 0)),
    ("causal mask, one byte a pair", (0, 0, 0), (0, 0, 1)),
    ("output projection input", (2, 0, 0), (2, 0, 0)),
    ("attention output dropout mask (ctxlab: 16-bit on CPU)", (1, 0, 0), (2, 0, 0)),
    ("MLP input", (2, 0, 0), (2, 0, 0)),
    ("GELU input", (8, 0, 0), (8, 0, 0)),
    ("GELU output, the down projection's input", (8, 0, 0), (8, 0, 0)),
    ("MLP dropout mask (ctxlab: 16-bit on CPU)", (1, 0, 0), (2, 0, 0)),
]


def term_bytes(coefficients: tuple[int, int, int], seq_len: int, batch: int, width: int, heads: int) -> int:
    """Bytes of one term: its multiples of s b h, a s^2 b and s^2."""
    per_h, per_as, per_ss = coefficients
    s, b = seq_len, batch
    return s * b * width * per_h + heads * s * s * b * per_as + s * s * per_ss


def korthikanti_bytes(seq_len: int, batch: int, width: int, heads: int) -> int:
    """s b h (34 + 5 a s / h): the sum of Megatron's column of ``TERMS``."""
    return sum(term_bytes(megatron, seq_len, batch, width, heads) for _, megatron, _ in TERMS)


def ctxlab_terms_bytes(seq_len: int, width: int, heads: int) -> int:
    """The sum of ctxlab's column of ``TERMS``: s h 38 + 2 a s^2 + s^2 at micro-batch 1."""
    return sum(term_bytes(ours, seq_len, 1, width, heads) for _, _, ours in TERMS)


def _dropout(x: Tensor, p: float) -> Tensor:
    """Dropout that keeps a one-byte mask, as Megatron's fused kernels do."""
    return x * (torch.rand(x.shape, device=x.device) >= p) * (1 / (1 - p))


class MegatronBlock(nn.Module):
    """One GPT-3 layer as the formula counts it: pre-LayerNorm, fused QKV with biases, dropout on the
    attention probabilities and after each sub-layer, a 4h GELU MLP."""

    def __init__(self, width: int, heads: int, p: float = 0.1):
        super().__init__()
        self.heads, self.p = heads, p
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor, future: Tensor) -> Tensor:
        b, s, h = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # views of one buffer: q, k and v are its three terms
        scores = (q @ k.transpose(-2, -1)).mul_(1 / (h // self.heads) ** 0.5).masked_fill_(future, float("-inf"))
        probs = _dropout(torch.softmax(scores, dim=-1), self.p)
        y = (probs @ v).transpose(1, 2).reshape(b, s, h)
        x = x + _dropout(self.out(y), self.p)
        return x + _dropout(self.down(F.gelu(self.up(self.norm2(x)))), self.p)


def megatron_layer_bytes(seq_len: int, batch: int, width: int, heads: int,
                         dtype: torch.dtype = torch.bfloat16) -> int:
    """Traced activation bytes of one ``MegatronBlock`` layer (two layers' less one layer's)."""
    for name, value in (("seq_len", seq_len), ("batch", batch), ("width", width), ("heads", heads)):
        positive_int(name, value)
    from torch._subclasses.fake_tensor import FakeTensorMode

    def stack(n_layers: int) -> int:
        with default_dtype(dtype), FakeTensorMode():
            blocks = [MegatronBlock(width, heads) for _ in range(n_layers)]
            x = torch.randn(batch, seq_len, width, dtype=dtype, requires_grad=True)
            future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)

            def forward() -> Tensor:
                h = x
                for block in blocks:
                    h = block(h, future)
                return h
            return bytes_alive_after(forward)
    return stack(2) - stack(1)


def ctxlab_layer_bytes(cfg: ModelConfig, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """Traced activation bytes of one layer of ctxlab's model (a two-layer model's less a one-layer one's)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def model_bytes(n_layers: int) -> int:
        with default_dtype(dtype), FakeTensorMode():
            model = GPT(cfg.replace(n_layers=n_layers, max_seq_len=max(cfg.max_seq_len, seq_len)))
            tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len))
            return bytes_alive_after(lambda: model(tokens, tokens)[1])
    return model_bytes(2) - model_bytes(1)
