"""A recurrent network beside the Transformer (erratum E2): recall by distance, gradients, time per token.

An LSTM and the book's small GPT with the same number of parameters are trained alike (chapter 6's
recipe: the passkey task at 128 tokens, loss on the answer only) and then measured:

- accuracy by the distance between the key and the question, at the trained length, 4x and 16x it;
- the LSTM's gradient norm of the answer's loss with respect to each input, by distance: whether
  gradients from far inputs vanish;
- the forward time per token as the sequence grows, batch 1, one thread: the LSTM's steps run one
  after another whatever the hardware, the GPT's positions all at once.

``python -m ctxlab.bench recurrent --out book/data/recurrent.json`` stores what chapter 1 shows; its
last line is ``lstm_near=... lstm_far=... gpt_near=... gpt_far=... lstm_grad_far_over_near=...``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..command import check_output, command_errors
from ..atomic import write_json
from ..config import ModelConfig, positive_int
from ..tasks import TRAIN_LEN, VOCAB_SIZE, passkey_batch, passkey_batches
from ..model import GPT
from ..recurrent import LSTMLM, hidden_for_budget
from ..train import train

GPT_SHAPE = dict(vocab_size=VOCAB_SIZE, d_model=64, n_layers=2, n_heads=4)  # chapter 6's base model
D_EMBED = 64
DISTANCE_BINS = ((0, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048))
LENGTHS = (TRAIN_LEN, 4 * TRAIN_LEN, 16 * TRAIN_LEN)  # read at 1x, 4x and 16x the trained length


def make_models(seed: int, seq_len: int) -> dict[str, torch.nn.Module]:
    """The GPT and an LSTM with at most as many parameters, both initialised from ``seed``."""
    torch.manual_seed(seed)
    gpt = GPT(ModelConfig(**GPT_SHAPE, max_seq_len=seq_len))
    torch.manual_seed(seed)
    lstm = LSTMLM(VOCAB_SIZE, D_EMBED, hidden_for_budget(gpt.num_params(), VOCAB_SIZE, D_EMBED))
    return {"gpt": gpt, "lstm": lstm}


@torch.no_grad()
def accuracy_by_distance(model: torch.nn.Module, seq_len: int, key_len: int, n: int, seed: int) -> dict:
    """All-digits accuracy of ``n`` passkey samples at ``seq_len``, per bin of the key's distance from the
    question (tokens between the hidden key and the final marker); depths spread evenly over [0, 1]."""
    depths = [i / max(1, n - 1) for i in range(n)]
    b = passkey_batch(n, seq_len, seed, depth=depths, key_len=key_len, loss_on="answer")
    logits, _ = model(b.tokens)
    correct = (logits[:, b.answer_pos].argmax(-1) == b.key).all(-1)
    distance = (seq_len - key_len - 1) - b.key_pos  # from the hidden key to the question's marker
    out = {}
    for lo, hi in DISTANCE_BINS:
        inside = (distance >= lo) & (distance < hi)
        if int(inside.sum()):
            out[f"{lo}-{hi}"] = float(correct[inside].float().mean())
    return out


def gradient_by_distance(model: LSTMLM, seq_len: int, key_len: int, n: int, seed: int) -> dict:
    """Mean norm of d(answer loss) / d(input embedding) at each distance bin before the question."""
    b = passkey_batch(n, seq_len, seed, key_len=key_len, loss_on="answer")
    inputs = model.embed(b.tokens).detach().requires_grad_()
    _, loss = model(b.tokens, b.targets, inputs=inputs)
    loss.backward()
    norms = inputs.grad.norm(dim=-1).mean(0)  # (T,): one number per input position
    question = seq_len - key_len - 1
    out = {}
    for lo, hi in DISTANCE_BINS:
        cols = [question - d for d in range(lo, hi) if 0 <= question - d]
        if cols:
            out[f"{lo}-{hi}"] = float(norms[cols].mean())
    return out


@torch.no_grad()
def ms_per_token(models: dict[str, torch.nn.Module], lengths: list[int], repeats: int = 5) -> dict:
    """Forward time per token at each length, batch 1, median of ``repeats`` rounds that visit every
    (model, length) once each, so both models see the same machine load."""
    times: dict = {name: {t: [] for t in lengths} for name in models}
    for _ in range(repeats + 1):  # the first round warms up
        for t in lengths:
            tokens = torch.randint(0, VOCAB_SIZE, (1, t))
            for name, model in models.items():
                start = time.perf_counter()
                model(tokens)
                times[name][t].append((time.perf_counter() - start) * 1e3 / t)
    return {name: {str(t): statistics.median(v[1:]) for t, v in by_len.items()} for name, by_len in times.items()}


def run(seeds: list[int], steps: int, key_len: int = 2, lr: float = 3e-3, samples: int = 400,
        lengths: tuple[int, ...] = LENGTHS, log=print) -> dict:
    """Train both models per seed and measure them (see the module docstring)."""
    for name, value in (("steps", steps), ("key_len", key_len), ("samples", samples)):
        positive_int(name, value)
    long_len = max(lengths)
    results = {"train_len": TRAIN_LEN, "lengths": list(lengths), "key_len": key_len, "steps": steps, "lr": lr,
               "seeds": seeds, "bins": [f"{lo}-{hi}" for lo, hi in DISTANCE_BINS], "runs": []}
    for seed in seeds:
        models = make_models(seed, long_len)
        run_ = {"seed": seed, "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}}
        for name, model in models.items():
            t0 = time.perf_counter()
            hist = train(model, passkey_batches(16, TRAIN_LEN, seed, loss_on="answer", key_len=key_len), steps,
                         lr=lr, warmup=min(50, steps), clip=1.0, seed=seed, progress=False)
            model.eval()
            run_[name] = {"final_loss": hist.losses[-1], "train_s": round(time.perf_counter() - t0, 1),
                          "accuracy": {str(t): accuracy_by_distance(model, t, key_len, samples, 10_000 + seed)
                                       for t in lengths}}
            log(f"seed {seed} {name}: loss {hist.losses[-1]:.3f}, {run_[name]['train_s']} s, "
                f"accuracy by distance {run_[name]['accuracy']}")
        run_["lstm"]["gradient"] = gradient_by_distance(models["lstm"], long_len, key_len, 16, 20_000 + seed)
        results["runs"].append(run_)
    torch.manual_seed(0)
    results["ms_per_token"] = ms_per_token(make_models(0, long_len), list(lengths))
    return results


def mean_accuracy(res: dict, model: str, seq_len: int | str) -> dict[str, tuple[float, float]]:
    """Per distance bin of one model and length in ``run`` results: (mean over seeds, max - min)."""
    per_bin = res["runs"][0][model]["accuracy"][str(seq_len)]
    values = {b: [r[model]["accuracy"][str(seq_len)][b] for r in res["runs"]] for b in per_bin}
    return {b: (sum(v) / len(v), max(v) - min(v)) for b, v in values.items()}


def mean_gradient(res: dict) -> dict[str, float]:
    """The LSTM's input-gradient norm per distance bin, mean over seeds."""
    bins = res["runs"][0]["lstm"]["gradient"]
    return {b: sum(r["lstm"]["gradient"][b] for r in res["runs"]) / len(res["runs"]) for b in bins}


def summary_line(res: dict) -> str:
    """Means over seeds: accuracy at the nearest and farthest bins of the longest length, and the LSTM's
    gradient at the farthest bin over the nearest."""
    long_len = str(max(res["lengths"]))
    present = sorted(res["runs"][0]["lstm"]["accuracy"][long_len], key=lambda b: int(b.split("-")[0]))
    near, far = present[0], present[-1]

    def mean(values):
        return sum(values) / len(values)
    acc = {f"{m}_{w}": mean_accuracy(res, m, long_len)[b][0]
           for m in ("lstm", "gpt") for w, b in (("near", near), ("far", far))}
    grad = mean([r["lstm"]["gradient"][far] / r["lstm"]["gradient"][near] for r in res["runs"]])
    return (f"lstm_near={acc['lstm_near']:.3f} lstm_far={acc['lstm_far']:.3f} gpt_near={acc['gpt_near']:.3f} "
            f"gpt_far={acc['gpt_far']:.3f} lstm_grad_far_over_near={grad:.3g}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ctxlab.bench recurrent", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2, help="training seeds per model")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps per model")
    p.add_argument("--key-len", type=int, default=2, help="digits of the key to recall")
    p.add_argument("--samples", type=int, default=400, help="passkey samples per length")
    p.add_argument("--out", default=None, help="write the measurements as JSON")
    args = p.parse_args(argv)
    check_output(p, args.out)
    with command_errors(p):
        for name, least in (("seeds", 1), ("steps", 1), ("key_len", 1), ("samples", 2)):
            if getattr(args, name) < least:
                p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
        torch.set_num_threads(1)  # one thread: the time per token compares the two designs, not thread pools
        t0 = time.perf_counter()
        res = run(list(range(args.seeds)), args.steps, args.key_len, samples=args.samples)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["command"] = "python -m ctxlab.bench recurrent " + " ".join(argv if argv is not None else [])
        if args.out:
            write_json(args.out, res, indent=1)
            print(f"wrote {args.out} ({res['seconds']} s)")
        print(summary_line(res))
