"""A causal transformer in the style of nanoGPT: pre-norm blocks, RoPE, grouped-query attention.

Read top to bottom: ``CausalSelfAttention``, ``MLP``, ``Block``, ``GPT``. The attention backend,
the number of k/v heads, the norm (LayerNorm or RMSNorm), the MLP (GELU or Llama's SwiGLU), weight
tying and the memory options (activation checkpointing, cross-layer sharing, chunked MLP and
chunked loss) come from ``ModelConfig``, read once when the model is built; ``ModelConfig.from_hf``
gives the config of a Llama, Mistral or Qwen2 checkpoint (``hf_weights`` loads its weights).
Every layer gets the tokens' ``Positions`` (RoPE tables or ALiBi bias, and the mask) as one object,
and, when decoding, its own view of the KV cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import attention_function
from .config import IGNORE, ModelConfig, positive_int
from .kvcache import LayerView
from .positions import Positions, RotaryEmbedding, alibi_bias, alibi_slopes, apply_rope


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # chosen once; context parallelism swaps it for ring attention, and puts it back (parallel/context.py)
        self.attend = attention_function(cfg.attention, cfg.attn_chunk)
        self.checkpoint_core = cfg.checkpoint_attention
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.qkv_bias)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)  # k rows, then v
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        # QK-layernorm (Dehghani et al. 2023; Wortsman et al. 2023): bounds the pre-softmax logits,
        # which otherwise can grow without limit at high learning rates
        self.q_norm = nn.LayerNorm(cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = nn.LayerNorm(cfg.head_dim) if cfg.qk_norm else None

    def forward(self, x: Tensor, pos: Positions, cache: LayerView | None = None) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if pos.cos is not None:  # RoPE; with ALiBi the positions enter as ``pos.bias`` instead
            q = apply_rope(q, pos.cos, pos.sin)
            if cache is None or not cache.rotates_keys:  # a sliding window rotates k by its slot
                k = apply_rope(k, pos.cos, pos.sin)
        if cache is not None:  # decode: append this step's k/v and attend over everything cached
            k, v = cache.append(k, v)
        if self.checkpoint_core and torch.is_grad_enabled():
            # selective recomputation (Korthikanti et al. 2022): backward keeps q, k, v, not the scores
            y = checkpoint(self.attend, q, k, v, use_reentrant=False, causal=True, mask=pos.mask, bias=pos.bias)
        else:
            y = self.attend(q, k, v, causal=True, mask=pos.mask, bias=pos.bias)
        return self.dropout(self.out_proj(y.transpose(1, 2).reshape(b, t, -1)))


class MLP(nn.Module):
    """GPT-2's down(gelu(up x)), or with ``mlp="swiglu"`` Llama's down(silu(gate x) * up x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.chunk = cfg.mlp_chunk
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False) if cfg.mlp == "swiglu" else None
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def _mlp(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.up(x)) if self.gate is None else F.silu(self.gate(x)) * self.up(x)
        return self.dropout(self.down(hidden))

    def forward(self, x: Tensor) -> Tensor:
        if self.chunk <= 0 or x.shape[1] <= self.chunk:
            return self._mlp(x)
        # The wide hidden layer of one chunk at a time; in training each chunk is recomputed in backward.
        recompute = torch.is_grad_enabled()
        return torch.cat([checkpoint(self._mlp, part, use_reentrant=False) if recompute else self._mlp(part)
                          for part in x.split(self.chunk, dim=1)], dim=1)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (Llama: scale only, no mean subtracted, no bias)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, pos: Positions, cache: LayerView | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), pos, cache)
        return x + self.mlp(self.norm2(x))


def rotary_embedding(cfg: ModelConfig) -> RotaryEmbedding:
    """RoPE's frequencies as the config scales them (a buffer: computed, never stored in a checkpoint)."""
    return RotaryEmbedding(cfg.head_dim, cfg.rope_base, scaling=cfg.rope_scaling, scale=cfg.rope_scale,
                           original_len=cfg.rope_original_len, options=cfg.rope_options,
                           attention_factor=cfg.rope_attention_factor)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = rotary_embedding(cfg)
        if cfg.position_encoding == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        # Cross-layer sharing keeps one block and runs it n_layers times: fewer parameters, same activations.
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(1 if cfg.share_layers else cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight  # one tensor, two uses: tying, not summing
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Distinct parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, targets: Tensor | None = None, positions: Tensor | None = None,
                mask: Tensor | None = None, cache=None) -> tuple[Tensor, Tensor | None]:
        """Return (logits, loss); loss is None without targets. Targets equal to IGNORE (-100) are ignored.

        ``positions`` is (T,) or (B, T); ``mask`` a bool (B|1, 1, T, T) mask (packed documents). With
        ``loss_chunk`` set and targets given, logits are None: not keeping them is the point.
        """
        if cache is not None:
            cache.make_room(tokens.shape[-1])  # a sliding window evicts before positions are assigned
        t = self._check_length(tokens, cache)
        x = self.embed(tokens)
        pos = self.encode_positions(positions, t, x.dtype, mask, cache)
        for i in range(self.cfg.n_layers):
            block = self.blocks[i % len(self.blocks)]
            if cache is not None:
                x = block(x, pos, cache.view(i))
            elif self.cfg.recomputes(i) and torch.is_grad_enabled():
                x = checkpoint(block, x, pos, use_reentrant=False)  # keep the input; rebuild the rest in backward
            else:
                x = block(x, pos)
        if cache is not None:
            cache.advance(t)
        return self._logits_and_loss(self.norm(x), targets)

    def _check_length(self, tokens: Tensor, cache) -> int:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
        t = tokens.shape[1]
        end = t + (cache.seq_len if cache is not None else 0)
        if end > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds max_seq_len={self.cfg.max_seq_len}; "
                             "raise max_seq_len or configure a RoPE scaling (chapter 6)")
        return t

    def encode_positions(self, positions: Tensor | None, t: int, dtype: torch.dtype, mask: Tensor | None = None,
                         cache=None) -> Positions:
        """The tokens' positions as the layers take them: RoPE's cos/sin, or ALiBi's bias; and the mask.
        Without ``positions`` the tokens follow what the cache holds (0 without a cache)."""
        start = cache.seq_len if cache is not None else 0
        device = self.embed.weight.device
        if positions is None:
            positions = torch.arange(start, start + t, device=device)
        if self.cfg.position_encoding == "alibi":
            keys = torch.arange(start + t, device=device) if cache is not None else positions
            return Positions(bias=alibi_bias(self.alibi_slopes, positions, keys).to(dtype), mask=mask)
        if positions.dim() == 2:  # one row of positions per sequence (packed documents restart at 0)
            cos, sin = (c.view(*positions.shape, -1).unsqueeze(1) for c in self.rope(positions.reshape(-1), dtype))
        else:
            cos, sin = self.rope(positions, dtype)
        return Positions(cos=cos, sin=sin, mask=mask)

    def _logits_and_loss(self, x: Tensor, targets: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        if targets is not None and self.cfg.loss_chunk > 0:
            # the logits are never all alive at once, so they are not returned
            return None, chunked_cross_entropy(x, self.head.weight, targets, self.cfg.loss_chunk)
        logits = self.head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)
        return logits, loss

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, cache=None) -> Tensor:
        """Greedy decoding; with a KV cache each new token costs one position, not a whole prefix."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        out = tokens
        logits, _ = self(tokens, cache=cache)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1:].argmax(-1)
            out = torch.cat([out, nxt], dim=1)
            logits, _ = self(nxt, cache=cache) if cache is not None else self(out)
        return out


def chunked_cross_entropy(hidden: Tensor, head_weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Mean cross-entropy over tokens, computing (chunk x vocab) logits at a time.

    Each chunk's logits are recomputed in backward, so peak memory holds one chunk of logits instead
    of T x vocab; the loss equals ``F.cross_entropy`` on the full logits (targets equal to IGNORE skipped).
    """
    positive_int("chunk", chunk)
    h, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

    def chunk_loss(h_part: Tensor, y_part: Tensor) -> Tensor:
        return F.cross_entropy((h_part @ head_weight.t()).float(), y_part, ignore_index=IGNORE, reduction="sum")

    total = sum(checkpoint(chunk_loss, hp, yp, use_reentrant=False) if torch.is_grad_enabled() else chunk_loss(hp, yp)
                for hp, yp in zip(h.split(chunk), y.split(chunk)))
    return total / (y != IGNORE).sum()
