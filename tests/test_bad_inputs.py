"""Bad input anywhere in the public API: a ValueError or TypeError naming the parameter, raised at once.

Each row is (what is called, the error type, a pattern that the message must contain: the
parameter's name). The whole table runs in about a second: nothing expensive starts before the
check, and no process is spawned.
"""
import time

import pytest
import torch

from ctxlab import GPT, ContiguousKVCache, ModelConfig, attention, measure_peak, reference_config
from ctxlab.attention import chunked_attention
from ctxlab.bench.attention import attention_point
from ctxlab.clipping import adaptive_clip, clip_by_global_norm, clip_by_value, make_clipper
from ctxlab.tasks import dialogue_batch, make_dialogue, markov_batches, passkey_batch
from ctxlab.flops import attention_flops_per_token, model_flops_utilisation
from ctxlab.kvcache import BlockAllocator
from ctxlab.memory_model import apply_techniques, predict_step_memory
from ctxlab.packing import pack_documents
from ctxlab.parallel.launch import launch
from ctxlab.parallel.pipeline import stage_bounds
from ctxlab.parallel.sharding import check_seq_len, shard
from ctxlab.positions import rope_inv_freq, scaled_rope
from ctxlab.train import train

SMALL = reference_config(vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_seq_len=32)
q = torch.zeros(1, 2, 8, 8)
p = torch.nn.Parameter(torch.ones(3))
p.grad = torch.ones(3)
g = torch.Generator().manual_seed(0)


def ok_batch(step):
    return torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)


CASES = [
    (lambda: ModelConfig(d_model=-1), ValueError, "d_model"),
    (lambda: ModelConfig(n_heads=4, n_kv_heads=3), ValueError, "n_kv_heads"),
    (lambda: ModelConfig(attention="flash9"), ValueError, "attention"),
    (lambda: ModelConfig(dropout=2.0), ValueError, "dropout"),
    (lambda: ModelConfig(rope_scaling="magic"), ValueError, "rope_scaling"),
    (lambda: ModelConfig(position_encoding="sinusoid"), ValueError, "position_encoding"),
    (lambda: GPT("not a config"), TypeError, "cfg"),
    (lambda: GPT(SMALL)(torch.zeros(1, 33, dtype=torch.long)), ValueError, "max_seq_len"),
    (lambda: attention(q, q, q, backend="nope"), ValueError, "backend"),
    (lambda: attention(q, q, q[:, :, :4]), ValueError, "same shape"),
    (lambda: attention(q, q, q, mask=torch.ones(1, 1, 8, 8)), TypeError, "mask"),
    (lambda: chunked_attention(q, q, q, q_chunk=0), ValueError, "chunk"),
    (lambda: measure_peak(42), TypeError, "fn"),
    (lambda: attention_point("sdpa", 0), ValueError, "seq_len"),
    (lambda: ContiguousKVCache(SMALL, 0, 8), ValueError, "batch_size"),
    (lambda: BlockAllocator(0), ValueError, "num_blocks"),
    (lambda: pack_documents([torch.ones(3, dtype=torch.long)], 0), ValueError, "seq_len"),
    (lambda: predict_step_memory(SMALL, 0), ValueError, "seq_len"),
    (lambda: apply_techniques(SMALL, ["warp_drive"]), ValueError, "techniques"),
    (lambda: attention_flops_per_token(SMALL, -1), ValueError, "seq_len"),
    (lambda: model_flops_utilisation(1.0, 1.0, 0.0), ValueError, "peak"),
    (lambda: clip_by_global_norm([p], -1.0), ValueError, "max_norm"),
    (lambda: clip_by_global_norm([p], float("nan")), ValueError, "max_norm"),
    (lambda: clip_by_global_norm([p], 1.0, norm_type="euclid"), ValueError, "norm_type"),
    (lambda: clip_by_global_norm([3.0], 1.0), TypeError, "param"),
    (lambda: clip_by_value([p], -0.5), ValueError, "clip_value"),
    (lambda: adaptive_clip([p], clip_ratio=0.0), ValueError, "clip_ratio"),
    (lambda: make_clipper("sometimes"), ValueError, "strategy"),
    (lambda: train(GPT(SMALL), ok_batch, steps=0), ValueError, "steps"),
    (lambda: train(GPT(SMALL), ok_batch, steps=2, lr=-1.0), ValueError, "lr"),
    (lambda: train(GPT(SMALL), ok_batch, steps=2, accum=0), ValueError, "accum"),
    (lambda: train(GPT(SMALL), "batches", steps=2), TypeError, "get_batch"),
    (lambda: train(GPT(SMALL), ok_batch, steps=2, resume=True), ValueError, "checkpoint_path"),
    (lambda: rope_inv_freq(7), ValueError, "head_dim"),
    (lambda: scaled_rope("magic", 8, 10000.0, 2.0, 16), ValueError, "scaling"),
    (lambda: scaled_rope("pi", 8, 10000.0, 0.5, 16), ValueError, "scale"),
    (lambda: passkey_batch(0, 64, seed=0), ValueError, "batch"),
    (lambda: make_dialogue(100, 20, "age", g), ValueError, "asked"),
    (lambda: dialogue_batch(0, 64, 0), ValueError, "batch_size"),
    (lambda: dialogue_batch(2, 64, -1), ValueError, "seed"),
    (lambda: markov_batches(32, seed=-1), ValueError, "seed"),
    (lambda: launch(ok_batch, 0), ValueError, "world_size"),
    (lambda: launch(lambda rank, world: rank, 2), TypeError, "importable"),
    (lambda: stage_bounds(2, 3), ValueError, "stages"),
    (lambda: check_seq_len(10, 4, zigzag=False), ValueError, "multiple of world_size"),
    (lambda: shard(torch.zeros(1, 12), 0, 4, zigzag=True), ValueError, "multiple of 2 \\* world_size"),
]


@pytest.mark.parametrize("call,error,pattern", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_is_rejected_at_once(call, error, pattern):
    start = time.perf_counter()
    with pytest.raises(error, match=pattern):
        call()
    assert time.perf_counter() - start < 5.0, "the check must come before any expensive work"


def test_the_table_is_large_enough():
    assert len(CASES) >= 30
