"""What breaks when a long-context model trains at a high learning rate, and what each fix does.

Wortsman et al. (2023) reproduce in small models an instability of large ones (Dehghani et al. 2023):
at high learning rates the pre-softmax attention logits grow without bound, the attention collapses
onto single tokens (its entropy falls to zero), and the loss can diverge. Three fixes, measured on the
same runs of the book's model on the passkey language (a task where reading far back pays):

- QK-layernorm (``ModelConfig(qk_norm=True)``) bounds the logits by construction;
- sequence-length warmup (Li et al. 2022) starts at short sequences and doubles T over the first
  steps, the same tokens per step;
- gradient clipping bounds each update, but not the growth that a long series of updates makes.

``python -m ctxlab.bench stability --out book/data/stability.json`` runs every policy over several
seeds (chapter 3 reads the file); last line ``max_logit_no_qknorm=... max_logit_qknorm=...
spikes_no_warmup=... spikes_warmup=...``.
"""
from __future__ import annotations

import argparse
import math
import statistics
from contextlib import contextmanager
from typing import Iterator

import torch

from ..atomic import write_json
from ..command import check_output, command_errors
from ..config import positive_int, reference_config
from ..model import GPT
from ..tasks.passkey import VOCAB_SIZE, language_batch
from . import format_table

POLICIES: dict[str, dict] = {
    "plain": {},
    "QK-norm": dict(qk_norm=True),
    "length warmup": dict(length_warmup=True),
    "clip 1.0": dict(clip=1.0),
}


@contextmanager
def attention_probe(model: GPT, record: dict) -> Iterator[None]:
    """While active, every attention call adds its largest |pre-softmax logit| and its lowest head
    entropy (nats, averaged over the queries) to ``record["max_logit"]`` / ``record["entropy"]``."""
    originals = [block.attn.attend for block in model.blocks]

    def probed(inner):
        def attend(q, k, v, *args, **kwargs):
            with torch.no_grad():
                scores = (q.float() @ k.float().repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-2, -1))
                scores = scores / math.sqrt(q.shape[-1])
                future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
                record["max_logit"].append(float(scores.masked_fill(future, 0).abs().amax()))
                p = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
                entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)  # (batch, heads)
                record["entropy"].append(float(entropy.min()))
            return inner(q, k, v, *args, **kwargs)
        return attend
    for block, inner in zip(model.blocks, originals):
        block.attn.attend = probed(inner)
    try:
        yield
    finally:
        for block, inner in zip(model.blocks, originals):
            block.attn.attend = inner


def warmup_length(step: int, seq_len: int, warmup_steps: int, start: int = 32) -> int:
    """Sequence-length warmup: T doubles from ``start`` to ``seq_len`` over ``warmup_steps`` steps."""
    if step >= warmup_steps or start >= seq_len:
        return seq_len
    doublings = int(math.log2(seq_len / start) * step / warmup_steps)
    return min(seq_len, start * 2**doublings)


def spike_steps(losses: list[float], rise: float = 0.3) -> list[int]:
    """The steps whose loss exceeds the previous step's by more than ``rise`` nats, or is not finite."""
    return [i for i, (a, b) in enumerate(zip(losses, losses[1:]), 1) if not math.isfinite(b) or b - a > rise]


def spikes(losses: list[float], rise: float = 0.3) -> int:
    """How many loss spikes (``spike_steps``) a run had."""
    return len(spike_steps(losses, rise))


def stability_run(lr: float, seed: int, seq_len: int = 256, steps: int = 120, tokens_per_step: int = 2048,
                  qk_norm: bool = False, length_warmup: bool = False, clip: float | None = None,
                  d_model: int = 64, device: str = "cpu") -> dict:
    """One AdamW run (no learning-rate warmup, betas 0.9/0.95) of a 2-layer model on the passkey language:
    per step the loss, the gradient norm before clipping, the largest logit and the lowest entropy."""
    for name, value in (("seq_len", seq_len), ("steps", steps), ("tokens_per_step", tokens_per_step)):
        positive_int(name, value)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    torch.manual_seed(seed)
    cfg = reference_config(vocab_size=VOCAB_SIZE, d_model=d_model, n_layers=2, n_heads=4, max_seq_len=seq_len,
                           qk_norm=qk_norm)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    history: dict[str, list] = {"loss": [], "grad_norm": [], "max_logit": [], "entropy": [], "T": []}
    for step in range(steps):
        t = warmup_length(step, seq_len, steps // 3) if length_warmup else seq_len
        tokens, targets = (x.to(device) for x in language_batch(max(1, tokens_per_step // t), t,
                                                                 seed * 1_000_003 + step))
        record: dict[str, list] = {"max_logit": [], "entropy": []}
        with attention_probe(model, record):
            loss = model(tokens, targets)[1]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip is not None else math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for key, value in (("loss", loss.item()), ("grad_norm", float(norm)), ("max_logit", max(record["max_logit"])),
                           ("entropy", min(record["entropy"])), ("T", t)):
            history[key].append(value)
    return history


def summary(history: dict) -> dict:
    """The figures chapter 3 asserts on, from one run's history."""
    early = len(history["loss"]) // 3
    return {"final_max_logit": history["max_logit"][-1], "first_max_logit": history["max_logit"][0],
            "min_entropy": min(history["entropy"]), "spikes": spikes(history["loss"]),
            "final_loss": history["loss"][-1], "early_peak_grad_norm": max(history["grad_norm"][:early])}


def stability_sweep(seeds: tuple[int, ...] = (0, 1, 2), lr: float = 0.03, **kw) -> dict:
    """Every policy of ``POLICIES`` for every seed: {policy: [{"seed", "history", "summary"}, ...]}."""
    return {name: [{"seed": s, "history": (h := stability_run(lr, s, **changes, **kw)), "summary": summary(h)}
                   for s in seeds] for name, changes in POLICIES.items()}


def last_line(results: dict) -> str:
    """The figures the command prints last: medians over seeds."""
    def med(policy: str, key: str) -> float:
        return statistics.median(r["summary"][key] for r in results[policy])
    return (f"max_logit_no_qknorm={med('plain', 'final_max_logit'):.1f} "
            f"max_logit_qknorm={med('QK-norm', 'final_max_logit'):.1f} "
            f"spikes_no_warmup={med('plain', 'spikes'):g} spikes_warmup={med('length warmup', 'spikes'):g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench stability", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--out", default=None, help="write every run's history as JSON here")
    args = parser.parse_args(argv)
    check_output(parser, args.out)
    with command_errors(parser):
        positive_int("seeds", args.seeds)
        settings = dict(lr=args.lr, steps=args.steps, seq_len=args.seq_len)
        results = stability_sweep(tuple(range(args.seeds)), **settings)
        rows = [{"policy": name, "seed": r["seed"], **r["summary"]} for name, runs in results.items() for r in runs]
        print(f"AdamW lr {args.lr}, T={args.seq_len}, {args.steps} steps, 2 layers, width 64, passkey language")
        print(format_table(rows, ["policy", "seed", "first_max_logit", "final_max_logit", "min_entropy", "spikes",
                                  "early_peak_grad_norm", "final_loss"]))
        if args.out:
            command = " ".join(["python -m ctxlab.bench stability", *(argv if argv is not None else [])])
            write_json(args.out, {"command": command, "settings": settings, "runs": results})
        print(last_line(results))
