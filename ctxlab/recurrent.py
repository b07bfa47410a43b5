"""A recurrent language model (an LSTM) with the GPT's interface: chapter 1's comparison for erratum E2.

An LSTM reads one token at a time and carries everything it knows in a state of fixed size: a fact
read long ago survives only if every update since has kept it, and step t cannot start before step
t - 1 has ended. The LSTM's gated, additive cell update was designed so that gradients do not vanish
over long spans (Hochreiter and Schmidhuber 1997); what bounds it is that one state and that one
sequential pass. Same call as ``GPT``: ``model(tokens, targets) -> (logits, loss)``, so the training
loop and the passkey evaluator take either.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import IGNORE, positive_int


class LSTMLM(nn.Module):
    """Embedding, ``n_layers`` of LSTM, a linear head. ``hidden`` is the size of the state it carries."""

    def __init__(self, vocab_size: int, d_embed: int, hidden: int, n_layers: int = 1):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_embed", d_embed), ("hidden", hidden),
                            ("n_layers", n_layers)):
            positive_int(name, value)
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.lstm = nn.LSTM(d_embed, hidden, num_layers=n_layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, targets: Tensor | None = None, inputs: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """Return (logits, loss), loss None without targets (targets equal to IGNORE are skipped).
        ``inputs`` replaces the embedded tokens (to measure the gradient with respect to each input)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
        states, _ = self.lstm(self.embed(tokens) if inputs is None else inputs)
        logits = self.head(states)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)
        return logits, loss


def lstm_params(vocab_size: int, d_embed: int, hidden: int, n_layers: int = 1) -> int:
    """Parameters of ``LSTMLM``: embedding, four gates per layer (input and recurrent weights, two biases), head."""
    gates = sum(4 * hidden * ((d_embed if layer == 0 else hidden) + hidden + 2) for layer in range(n_layers))
    return vocab_size * d_embed + gates + hidden * vocab_size + vocab_size


def hidden_for_budget(n_params: int, vocab_size: int, d_embed: int, n_layers: int = 1) -> int:
    """The largest state size whose ``LSTMLM`` has at most ``n_params`` parameters: the same budget as a GPT."""
    positive_int("n_params", n_params)
    if lstm_params(vocab_size, d_embed, 1, n_layers) > n_params:
        raise ValueError(f"n_params={n_params} is below the smallest LSTMLM of this shape "
                         f"({lstm_params(vocab_size, d_embed, 1, n_layers)} parameters)")
    hidden = 1
    while lstm_params(vocab_size, d_embed, hidden + 1, n_layers) <= n_params:
        hidden += 1
    return hidden
