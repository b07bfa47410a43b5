"""The chatbot case study, end to end: train short, lose far facts, extend, fine-tune, measure.

``python -m ctxlab.casestudy`` trains the small GPT on synthetic dialogues (:mod:`ctxlab.tasks.dialogue`) at
``train_len`` tokens with gradient clipping; measures answer accuracy by distance to the fact at 1x, 2x
and 4x that length; extends RoPE 4x with YaRN (the best scaling of chapter 6, :mod:`ctxlab.extend`) and
fine-tunes briefly at 4x with flash (SDPA) attention and activation checkpointing, on every GPU with
data parallelism when there are several; fine-tunes a control the same way without scaling; measures
again; then times prefill and per-token decode with a KV cache as the context grows and records peak
memory. Results (JSON, with seed and settings) and weights-only checkpoints are written atomically to
``book/data/casestudy/``; an interrupted run resumes from its last training checkpoint.

- ``settings``: what decides the numbers, and their checks;
- ``study``: the steps and ``run``;
- ``cli``: the command line (``__main__`` runs it).
"""
from ..model import GPT
from .cli import default_data_parallel, main
from .settings import (QUICK, Settings, base_config, check_device, check_settings, dialogue_batches, distance_bins,
                       extended_config, spec_of)
from .study import (OUT_DIR, accuracy_by_distance, check_data_parallel, evaluate, far_accuracy, latency, near_accuracy,
                    run, summary_line, train_stage, train_stage_worker, training_memory, write_json)

__all__ = ["GPT", "OUT_DIR", "QUICK", "Settings", "accuracy_by_distance", "base_config", "check_data_parallel",
           "check_device", "check_settings", "default_data_parallel", "dialogue_batches", "distance_bins", "evaluate",
           "extended_config", "far_accuracy", "latency", "main", "near_accuracy", "run", "spec_of", "summary_line",
           "train_stage", "train_stage_worker", "training_memory", "write_json"]
