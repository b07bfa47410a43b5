import pytest
import torch

from ctxlab import GPT
from ctxlab.bench.korthikanti import (TERMS, ctxlab_layer_bytes, ctxlab_terms_bytes, korthikanti_bytes,
                                      megatron_layer_bytes)
from ctxlab.bench.selective import recomputation_rows
from ctxlab.memory_model import measure_step_memory, predict_step_memory


@pytest.mark.parametrize("seq_len, width, heads", [(2048, 2560, 32), (1024, 1024, 16), (2048, 256, 4)])
def test_the_megatron_layer_traces_to_korthikantis_formula(seq_len, width, heads):
    s, h, a = seq_len, width, heads
    assert korthikanti_bytes(s, 1, h, a) == s * h * (34 + 5 * a * s / h)
    traced = megatron_layer_bytes(s, 1, h, a)
    assert abs(traced - korthikanti_bytes(s, 1, h, a)) / korthikanti_bytes(s, 1, h, a) < 0.01  # LayerNorm's stats


def test_ctxlabs_own_terms_add_up_to_its_traced_layer(small_config):
    cfg = small_config(d_model=256, attention="naive", dropout=0.1, max_seq_len=2048)
    traced = ctxlab_layer_bytes(cfg, 2048)
    assert traced == pytest.approx(ctxlab_terms_bytes(2048, 256, 4), rel=0.002)
    one_layer = cfg.replace(n_layers=1)
    assert traced == pytest.approx(predict_step_memory(one_layer, 2048, bytes_per_element=2)["saved_activations"],
                                   rel=0.002)
    assert len({name for name, _, _ in TERMS}) == len(TERMS)


def test_selective_recomputation_keeps_the_gradients(small_config):
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 48))
    grads = []
    for selective in (False, True):
        torch.manual_seed(1)
        model = GPT(small_config(attention="naive", checkpoint_attention=selective))
        model(tokens, tokens)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1])


def test_selective_recomputation_drops_the_scores_unless_a_fused_kernel_already_did(small_config):
    rows = {(r["backend"], r["policy"]): r for r in recomputation_rows(small_config(d_model=64), 512)}
    naive, fused = rows[("naive", "selective")], rows[("sdpa", "selective")]
    assert naive["activations_vs_none"] < 0.5 and fused["activations_vs_none"] > 0.85
    assert rows[("naive", "full")]["activations_vs_none"] < naive["activations_vs_none"]
    for policy in ("none", "selective", "full"):  # the FLOP formula, recomputation included, against torch's count
        r = rows[("naive", policy)]
        assert r["counted_flops"] == pytest.approx(512 * r["flops_per_token"], rel=1e-9)
    assert 1 < naive["flops_vs_none"] < rows[("naive", "full")]["flops_vs_none"]


@pytest.mark.parametrize("attention", ["naive", "sdpa", "chunked"])
def test_selective_recomputation_is_predicted(attention, small_config):
    cfg = small_config(max_seq_len=1024, attention=attention, checkpoint_attention=True)
    measured = measure_step_memory(cfg, 512, 2)["step_peak"]
    predicted = predict_step_memory(cfg, 512, 2)
    assert abs(predicted["gradients"] + predicted["activations"] - measured) / measured < 0.03
