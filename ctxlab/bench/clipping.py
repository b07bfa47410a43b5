"""Gradient clipping, measured: what each rule does to a real gradient, and a long-context run with and without.

``python -m ctxlab.bench clipping`` prints (1) the cosine between the reference model's gradient and its
clipped version for norm, value, adaptive clipping and the article's ``max(0, g - theta)``, (2) a
training run at T=1024 with a deliberately high learning rate, without clipping and with the
threshold swept, (3) the gradient norm at a few context lengths, and (4) one seed of each policy of
``bench.stability`` (attention-logit growth; QK-norm, length warmup, clipping). The last line is
``article_formula_cosine=... norm_clip_cosine=... max_logit_no_qknorm=... max_logit_qknorm=...
spikes_no_warmup=... spikes_warmup=...``.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from ..command import command_errors
from ..clipping import RULES, total_norm
from ..config import ModelConfig, reference_config
from ..model import GPT
from ..tasks import markov_batches
from ..train import train
from . import format_table
from .stability import last_line, stability_sweep

# The divergence experiment (chapter 3). AdamW at lr 0.1 was tried first and did not diverge (Adam
# bounds each coordinate's step by about lr), so the run that shows what clipping is for uses SGD.
RUNS = (("adamw", 0.1, None), ("adamw", 0.1, 1.0),
        ("sgd", 1.5, None), ("sgd", 1.5, 0.1), ("sgd", 1.5, 1.0), ("sgd", 1.5, 10.0))


def reference_gradients(seed: int = 0, seq_len: int = 256, batch: int = 1, device: str = "cpu") -> GPT:
    """The reference model at initialisation with the gradient of one batch of random tokens."""
    if seq_len < 2 or batch < 1:
        raise ValueError(f"seq_len must be >= 2 and batch >= 1, got {seq_len} and {batch}")
    torch.manual_seed(seed)
    model = GPT(reference_config(max_seq_len=max(seq_len, 1024))).to(device)
    tokens = torch.randint(0, model.cfg.vocab_size, (batch, seq_len + 1), device=device)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return model


def grad_cosine(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Cosine between two gradients, each a list of tensors seen as one vector (0 when one is all zeros)."""
    a = torch.cat([g.flatten().double() for g in before])
    b = torch.cat([g.flatten().double() for g in after])
    return float(F.cosine_similarity(a, b, dim=0, eps=1e-30))


def clipped_gradients(model: torch.nn.Module, strategy: str, threshold: float) -> list[torch.Tensor]:
    """The model's gradients after one clipping rule, leaving the model's own gradients untouched."""
    if strategy not in RULES:
        raise ValueError(f"strategy must be one of {tuple(RULES)}, got {strategy!r}")
    params = [p for p in model.parameters() if p.grad is not None]
    copies = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.detach().clone()
        copies.append(q)
    RULES[strategy](copies, threshold)
    return [q.grad for q in copies]


def cosine_rows(model: torch.nn.Module, settings: list[tuple[str, float]]) -> list[dict]:
    """One row per (strategy, threshold): cosine with the original gradient, norm after, share of zeros."""
    original = [p.grad for p in model.parameters() if p.grad is not None]
    rows = []
    for strategy, threshold in settings:
        grads = clipped_gradients(model, strategy, threshold)
        zeros = sum(int((g == 0).sum()) for g in grads) / sum(g.numel() for g in grads)
        rows.append({"rule": strategy, "threshold": threshold, "cosine": grad_cosine(original, grads),
                     "norm_before": float(total_norm(original)), "norm_after": float(total_norm(grads)),
                     "zeroed": zeros})
    return rows


def experiment_model(seq_len: int, seed: int = 0, vocab: int = 64) -> GPT:
    """A small GPT (2 layers, width 64) so that a long-context run of 40 steps takes seconds on a CPU."""
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, max_seq_len=seq_len))


def divergence_run(optimizer: str, lr: float, clip: float | None, seq_len: int = 1024, steps: int = 40,
                   seed: int = 0, device: str = "cpu") -> dict:
    """Train the experiment model on the Markov task; the history as plain data plus a summary."""
    model = experiment_model(seq_len, seed).to(device)
    res = train(model, markov_batches(seq_len, seed=seed), steps, lr=lr, warmup=min(3, steps), optimizer=optimizer, clip=clip,
                device=device, seed=seed)
    losses = res.losses
    return {"optimizer": optimizer, "lr": lr, "clip": "none" if clip is None else clip, "history": res.to_dict(),
            "steps_done": res.steps_done, "diverged": res.diverged, "first_loss": losses[0],
            "final_loss": losses[-1], "max_loss": max(losses) if not res.diverged else math.inf,
            "max_grad_norm": max(res.grad_norms), "clipped_frac": res.clipped_fraction}


def grad_norm_vs_length(seq_lens: list[int], samples: int = 3, seed: int = 0, device: str = "cpu") -> list[dict]:
    """Total gradient norm of the (mean-token) loss at initialisation, averaged over a few batches, per T."""
    rows = []
    for t in seq_lens:
        get_batch = markov_batches(t, seed=seed, pool=samples)
        model = experiment_model(t, seed).to(device)
        norms = []
        for i in range(samples):
            x, y = get_batch(i)
            model.zero_grad(set_to_none=True)
            _, loss = model(x.to(device), y.to(device))
            loss.backward()
            norms.append(float(total_norm([p.grad for p in model.parameters()])))
        rows.append({"T": t, "grad_norm": sum(norms) / samples, "min": min(norms), "max": max(norms)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench clipping", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=1024, help="context length of the training runs")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    parser.add_argument("--batches", type=int, default=3, help="random batches for the cosine figures")
    parser.add_argument("--stability-steps", type=int, default=120,
                        help="steps of each attention-logit run (bench.stability, one seed per policy)")
    args = parser.parse_args(argv)
    with command_errors(parser):
        if args.seq_len < 2 or args.steps < 1 or args.batches < 1 or args.stability_steps < 1:
            parser.error("--seq-len must be >= 2, --steps, --batches and --stability-steps >= 1")
        if args.device == "cpu":
            torch.set_flush_denormal(True)  # denormal values in Adam's state slow CPU arithmetic

        settings = [("norm", 1.0), ("value", 1e-3), ("agc", 0.01), ("article", 1e-3), ("article", 0.1)]
        per_batch = [cosine_rows(reference_gradients(seed=s, device=args.device), settings) for s in range(args.batches)]
        rows = [{**per_batch[0][i], **{k: sum(b[i][k] for b in per_batch) / len(per_batch)
                                       for k in ("cosine", "norm_before", "norm_after", "zeroed")}}
                for i in range(len(settings))]
        print(f"reference model gradients (T=256, random tokens, mean of {args.batches} batches), device={args.device}")
        print(format_table(rows, ["rule", "threshold", "cosine", "norm_before", "norm_after", "zeroed"]))

        runs = [divergence_run(o, lr, c, args.seq_len, args.steps, device=args.device) for o, lr, c in RUNS]
        print(f"\ntraining at T={args.seq_len}, {args.steps} steps, Markov task (best loss ln 4 = {math.log(4):.3f})")
        print(format_table(runs, ["optimizer", "lr", "clip", "steps_done", "diverged", "first_loss", "final_loss",
                                  "max_loss", "max_grad_norm", "clipped_frac"]))

        lens = [t for t in (args.seq_len // 4, args.seq_len, 4 * args.seq_len) if t >= 2]
        print("\ngradient norm at initialisation vs T (experiment model, mean-token loss)")
        print(format_table(grad_norm_vs_length(lens, device=args.device), ["T", "grad_norm", "min", "max"]))

        stability = stability_sweep(seeds=(0,), steps=args.stability_steps)
        print(f"\nattention logits at lr 0.03, T=256, {args.stability_steps} steps (python -m ctxlab.bench stability)")
        print(format_table([{"policy": name, **runs[0]["summary"]} for name, runs in stability.items()],
                           ["policy", "final_max_logit", "min_entropy", "spikes", "early_peak_grad_norm"]))

        article = next(r for r in rows if r["rule"] == "article" and r["threshold"] == 1e-3)
        norm = next(r for r in rows if r["rule"] == "norm")
        print(f"article_formula_cosine={article['cosine']:.4f} norm_clip_cosine={norm['cosine']:.4f} "
              f"{last_line(stability)}")
