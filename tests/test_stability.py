import math

import pytest
import torch

from ctxlab import GPT
from ctxlab.bench.stability import (POLICIES, attention_probe, last_line, spikes, stability_run, summary,
                                    warmup_length)
from ctxlab.memory_model import count_params, measure_step_memory, predict_step_memory


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(small_config):
    """QK-layernorm's invariant: scaling the q and k projections changes nothing (it does without it)."""
    tokens = torch.randint(0, 64, (2, 48), generator=torch.Generator().manual_seed(0))
    for qk_norm in (True, False):
        torch.manual_seed(0)
        model = GPT(small_config(qk_norm=qk_norm)).eval()
        for block in model.blocks:  # LayerNorm's eps is the only thing that sees the scale
            for norm in (block.attn.q_norm, block.attn.k_norm):
                if norm is not None:
                    norm.eps = 0.0
        before = model(tokens)[0]
        with torch.no_grad():
            for block in model.blocks:
                block.attn.q_proj.weight.mul_(7.0)
                block.attn.kv_proj.weight[: block.attn.n_kv_heads * block.attn.head_dim].mul_(0.2)  # the k rows
        after = model(tokens)[0]
        assert torch.allclose(before, after, atol=1e-5) == qk_norm


def test_qk_norm_bounds_the_logits_at_initialisation(small_config):
    """Normalised q and k (unit gains) have norm sqrt(d_h), so |q.k| / sqrt(d_h) <= sqrt(d_h)."""
    cfg = small_config(qk_norm=True)
    model = GPT(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(100.0)
    record = {"max_logit": [], "entropy": []}
    with attention_probe(model, record), torch.no_grad():
        model(torch.randint(0, 64, (2, 48)))
    assert 0 < max(record["max_logit"]) <= math.sqrt(cfg.head_dim) + 1e-4
    assert model.blocks[0].attn.attend.__name__ != "attend"  # the probe put the backend back


def test_qk_norm_is_counted_and_predicted(small_config):
    cfg = small_config(qk_norm=True, max_seq_len=1024, n_kv_heads=2)
    with torch.device("meta"):
        assert count_params(cfg) == GPT(cfg).num_params()
    measured = measure_step_memory(cfg, 512)["total"]
    assert abs(predict_step_memory(cfg, 512)["total"] - measured) / measured < 0.05


def test_the_probe_reads_the_logits_the_model_computes(small_config):
    model = GPT(small_config(attention="naive"))
    record = {"max_logit": [], "entropy": []}
    seen = []
    inner = model.blocks[0].attn.attend

    def spy(q, k, v, *a, **kw):
        seen.append((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).tril().abs().max().item())
        return inner(q, k, v, *a, **kw)
    model.blocks[0].attn.attend = spy
    with attention_probe(model, record), torch.no_grad():
        model(torch.randint(0, 64, (1, 32)))
    assert record["max_logit"][0] == pytest.approx(seen[0], rel=1e-5)
    assert 0 <= min(record["entropy"]) <= math.log(32)


def test_length_warmup_doubles_to_the_full_length_and_spikes_are_counted():
    lengths = [warmup_length(s, 256, 30) for s in range(40)]
    assert lengths[0] == 32 and lengths[-1] == 256 and lengths == sorted(lengths)
    assert set(lengths) == {32, 64, 128, 256}
    assert spikes([4.0, 3.9, 4.5, 4.4, float("nan")]) == 2 and spikes([3.0, 2.9]) == 0


def test_a_short_run_of_every_policy_records_its_history():
    for name, changes in POLICIES.items():
        history = stability_run(0.03, 0, seq_len=64, steps=3, tokens_per_step=128, **changes)
        assert all(len(v) == 3 for v in history.values()), name
        assert summary(history)["first_max_logit"] == history["max_logit"][0]
    results = {name: [{"summary": {"final_max_logit": 1.0, "spikes": 0}}] for name in POLICIES}
    assert last_line(results) == "max_logit_no_qknorm=1.0 max_logit_qknorm=1.0 spikes_no_warmup=0 spikes_warmup=0"
    with pytest.raises(ValueError, match="lr"):
        stability_run(0.0, 0)
