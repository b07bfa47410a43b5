"""Serving the case-study chatbot: quantised and windowed caches, chunked prefill, shared prompts.

Every measurement runs the chatbot of chapter 8 (its stored fine-tuned model, read at 4x its trained
length) on fresh dialogues and sets a cache beside the full-precision, full-length baseline:

- recall by distance with an int8 (per token), KIVI (keys per channel) or fp8 cache, and the logit
  error each makes;
- a sliding window with attention sinks (StreamingLLM), fed one token at a time: the answers' loss and
  recall for facts inside the window against the full cache's, and recall of facts beyond it;
- peak memory and time of prefill in chunks of c tokens, and that its logits are one-shot's;
- sessions that share a system prompt in the paged cache: blocks saved, copy-on-write counted.

``python -m ctxlab.bench serving --out book/data/serving.json`` also times the decode roofline
(``bench.decode``) and prints last ``crossover_tokens_predicted=... crossover_tokens_measured=...
int8_kv_bytes_ratio=... int8_far_recall=... full_far_recall=... sinks_far_recall=...
sinks_recent_loss_ratio=... chunked_prefill_peak_ratio=...``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..atomic import write_json
from ..book_files import CHECKOUT_BOOK
from ..command import check_output, command_errors
from ..config import IGNORE, positive_int
from ..kvcache import ContiguousKVCache, PagedKVCache, kv_cache_bytes_per_token
from ..kvcache_quant import QUANT_MODES, QuantizedKVCache
from ..kvcache_window import SinkWindowCache
from ..measure import measure_peak, median_ms
from ..model import GPT
from ..serving import prefill
from ..tasks import DialogueSpec, dialogue_batch, distance_bins
from ..train import load_model
from . import format_table
from .decode import decode_roofline, decode_setup

CASESTUDY = CHECKOUT_BOOK / "data" / "casestudy"
SINKS, WINDOW = 4, 128


def load_chatbot(folder: Path = CASESTUDY) -> tuple[GPT, dict]:
    """The case study's fine-tuned model (read at its fine-tuned length) and the run's settings."""
    settings = json.loads((Path(folder) / "settings.json").read_text())
    return load_model(Path(folder) / f"finetuned_{settings['scaling']}.pt").eval(), settings


def run_through(model: GPT, tokens: torch.Tensor, cache=None, step: int | None = None) -> torch.Tensor:
    """Every position's logits: one plain forward without a cache, else the tokens fed ``step`` at a time."""
    if cache is None:
        with torch.no_grad():
            return model(tokens)[0]
    return prefill(model, tokens, cache, step, all_logits=True)


@torch.no_grad()
def recall_by_distance(model: GPT, settings: dict, make_cache: Callable[[int], object] | None = None,
                       step: int | None = None, n: int = 64, seed: int = 70_000) -> list[dict]:
    """Per distance bin, on ``n`` fresh dialogues of the model's length read through ``make_cache(batch)``
    (None: the plain forward, the baseline): whole-answer accuracy, the answers' mean loss, and the mean
    next-token loss over every position (how well the model keeps predicting the dialogue itself)."""
    positive_int("n", n)
    seq_len, spec = model.cfg.max_seq_len, DialogueSpec(order_digits=settings["order_digits"])
    rows = []
    for lo, hi in distance_bins(settings["train_len"], seq_len):
        tokens, targets, _ = dialogue_batch(n, seq_len, seed + lo, max_distance=hi - 1, min_distance=lo, spec=spec)
        logits = run_through(model, tokens, make_cache(n) if make_cache else None, step)
        scored = targets != IGNORE
        correct = ((logits.argmax(-1) == targets) | ~scored).all(dim=1)
        # in float64: the answers' probabilities are within float32's epsilon of 1, their losses below it
        answer = F.cross_entropy(logits.transpose(1, 2).double(), targets.clamp(min=0), reduction="none")
        text = F.cross_entropy(logits[:, :-1].transpose(1, 2).double(), tokens[:, 1:])  # every next token
        rows.append({"lo": lo, "hi": hi, "n": n, "correct": int(correct.sum()), "accuracy": correct.float().mean().item(),
                     "answer_loss": ((answer * scored).sum(1) / scored.sum(1)).mean().item(),
                     "token_loss": text.item()})
    return rows


def pooled(rows: list[dict], key: str, keep: Callable[[dict], bool]) -> float:
    chosen = [r for r in rows if keep(r)]
    return sum(r[key] * r["n"] for r in chosen) / sum(r["n"] for r in chosen)


def quantised_caches(model: GPT, settings: dict, n: int) -> dict:
    """Recall, bytes per token and logit error of each quantised cache beside the full-precision one."""
    cfg = model.cfg
    full = recall_by_distance(model, settings, n=n)
    tokens, _, _ = dialogue_batch(8, cfg.max_seq_len, 123, spec=DialogueSpec(order_digits=settings["order_digits"]))
    reference = run_through(model, tokens)
    out = {"full": {"rows": full, "bytes_per_token": kv_cache_bytes_per_token(cfg)}}
    for mode in QUANT_MODES:
        make = lambda b, mode=mode: QuantizedKVCache(cfg, b, cfg.max_seq_len, mode)  # noqa: E731
        logits = run_through(model, tokens, make(8))
        out[mode] = {"rows": recall_by_distance(model, settings, make, n=n), "bytes_per_token": make(1).bytes_per_token(),
                     "max_logit_error": (logits - reference).abs().max().item(),
                     "logit_scale": reference.std().item(),
                     "same_argmax": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()}
    return out


def sink_window(model: GPT, settings: dict, n: int, sinks: int = SINKS, window: int = WINDOW) -> dict:
    """The window cache with and without sinks, fed token by token, beside the full cache; and its bytes
    over a dialogue eight times the model's length (constant), against a full cache's (linear)."""
    cfg = model.cfg
    runs = {"full": recall_by_distance(model, settings, n=n)}
    for name, k in (("sinks", sinks), ("window only", 0)):
        runs[name] = recall_by_distance(model, settings, lambda b, k=k: SinkWindowCache(cfg, b, k, window, model.rope),
                                        step=1, n=n)
    cache, held = SinkWindowCache(cfg, 1, sinks, window, model.rope), []
    stream = torch.randint(cfg.vocab_size, (1, 8 * cfg.max_seq_len), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for i in range(stream.shape[1]):
            model(stream[:, i:i + 1], cache=cache)
            if (i + 1) % cfg.max_seq_len == 0:
                held.append({"tokens_read": i + 1, "cache_bytes": cache.nbytes(),
                             "full_cache_bytes": (i + 1) * kv_cache_bytes_per_token(cfg)})
    return {"sinks": sinks, "window": window, "runs": runs, "stream": held}


def chunked_prefill(model: GPT, chunks: tuple[int, ...] = (512, 256, 128, 64, 32, 16), batch: int = 8) -> dict:
    """Peak bytes and time of prefill by chunk size (the cache made beforehand), and its largest logit
    difference from one-shot prefill."""
    cfg, seq_len = model.cfg, model.cfg.max_seq_len
    tokens = torch.randint(cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(9))
    one_shot = run_through(model, tokens)
    rows = []
    for c in chunks:
        cache = ContiguousKVCache(cfg, batch, seq_len)
        peak = measure_peak(lambda: prefill(model, tokens, cache, c), "cpu")
        same = prefill(model, tokens, ContiguousKVCache(cfg, batch, seq_len), c, all_logits=True)
        ms = median_ms(lambda: prefill(model, tokens, ContiguousKVCache(cfg, batch, seq_len), c), repeats=5)
        rows.append({"chunk": c, "peak_bytes": peak, "ms": ms, "max_logit_diff": (same - one_shot).abs().max().item()})
    return {"batch": batch, "seq_len": seq_len, "rows": rows}


def shared_prompt(model: GPT, prompt_len: int = 250, sessions: int = 8, own: int = 64, block_size: int = 16) -> dict:
    """Sessions that continue one system prompt: blocks held when they share it vs when each has its own."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(11)
    prompt = torch.randint(cfg.vocab_size, (1, prompt_len), generator=g)
    replies = torch.randint(cfg.vocab_size, (sessions, own), generator=g)
    pool = -(-(prompt_len + own) // block_size) * sessions
    base = PagedKVCache(cfg, 1, pool, block_size)
    prefill(model, prompt, base)
    shared = base.fork(sessions)
    logits = prefill(model, replies, shared, all_logits=True)
    alone = PagedKVCache(cfg, sessions, pool, block_size)
    reference = prefill(model, torch.cat([prompt.expand(sessions, -1), replies], 1), alone, all_logits=True)
    return {"prompt_len": prompt_len, "sessions": sessions, "own_tokens": own, "block_size": block_size,
            "blocks_shared": base.allocator.in_use, "blocks_alone": alone.allocator.in_use,
            "copied_blocks": shared.copied_blocks,
            "max_logit_diff": (logits - reference[:, prompt_len:]).abs().max().item()}


def serving_study(folder: Path = CASESTUDY, n: int = 64, decode: bool = True, device: str = "cpu") -> dict:
    """Everything above on the stored chatbot (on the CPU: it is small), and the decode roofline on ``device``."""
    model, settings = load_chatbot(folder)
    t0 = time.perf_counter()
    out = {"settings": settings, "model": {"d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers,
                                           "seq_len": model.cfg.max_seq_len}, "samples_per_bin": n}
    if decode:
        out["decode"] = decode_roofline(*decode_setup(device), device=device,
                                        dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    out["quantised"] = quantised_caches(model, settings, n)
    out["sink_window"] = sink_window(model, settings, n)
    out["chunked_prefill"] = chunked_prefill(model)
    out["shared_prompt"] = shared_prompt(model)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def last_line(r: dict) -> str:
    q, w, c = r["quantised"], r["sink_window"], r["chunked_prefill"]
    far = lambda rows: pooled(rows, "accuracy", lambda b: b["lo"] >= w["window"])  # noqa: E731
    near_loss = lambda rows: pooled(rows, "answer_loss", lambda b: b["hi"] <= w["window"])  # noqa: E731
    one_shot = next(row for row in c["rows"] if row["chunk"] == c["seq_len"])
    at64 = next(row for row in c["rows"] if row["chunk"] == 64)
    d = r.get("decode", {})
    return (f"crossover_tokens_predicted={d.get('crossover_predicted', float('nan')):.0f} "
            f"crossover_tokens_measured={d.get('crossover_measured', float('nan')):.0f} "
            f"int8_kv_bytes_ratio={q['int8']['bytes_per_token'] / q['full']['bytes_per_token']:.3f} "
            f"int8_far_recall={far(q['int8']['rows']):.3f} full_far_recall={far(q['full']['rows']):.3f} "
            f"sinks_far_recall={far(w['runs']['sinks']):.3f} "
            f"sinks_recent_loss_ratio={near_loss(w['runs']['sinks']) / near_loss(w['runs']['full']):.3f} "
            f"chunked_prefill_peak_ratio={at64['peak_bytes'] / one_shot['peak_bytes']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxlab.bench serving", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="dialogues per distance bin")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode roofline timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write every measurement as JSON here")
    args = parser.parse_args(argv)
    check_output(parser, args.out)
    with command_errors(parser):
        positive_int("samples", args.samples)
        r = serving_study(n=args.samples, decode=not args.no_decode, device=args.device)
        if "decode" in r:
            print(format_table(r["decode"]["rows"], ["context", "ms", "ms_q1", "ms_q3", "predicted_ms"]))
        print(format_table([{"cache": k, "bytes_per_token": v["bytes_per_token"],
                             "far_recall": pooled(v["rows"], "accuracy", lambda b: b["lo"] >= WINDOW)}
                            for k, v in r["quantised"].items()], ["cache", "bytes_per_token", "far_recall"]))
        if args.out:
            command = " ".join(["python -m ctxlab.bench serving", *(argv if argv is not None else [])])
            write_json(args.out, {"command": command, **r})
        print(last_line(r))
