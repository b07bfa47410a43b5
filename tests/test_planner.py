"""The context planner: its numbers come from the memory model, grow with memory and with each technique."""
from __future__ import annotations

import pytest

from ctxlab.config import reference_config
from ctxlab.kvcache import kv_cache_bytes_per_token
from ctxlab.memory_model import apply_techniques, count_params, predict_step_memory
from ctxlab.planner import GIB, PRESETS, custom_model, plan_context, technique_ladder


@pytest.mark.parametrize("efficient", [False, True])
def test_fp32_plan_is_the_memory_models_largest_context(efficient):
    """Reference model, fp32, one GPU: the planner's T is the last multiple of 64 the memory model fits."""
    budget_gib = 0.25
    plan = plan_context("reference", budget_gib, "fp32", efficient_attention=efficient)
    cfg = apply_techniques(reference_config(), ["chunked" if efficient else "naive"])
    budget = budget_gib * GIB
    t = plan.train_context
    assert t > 0 and t % 64 == 0
    predicted = predict_step_memory(cfg, t)
    assert predicted["total"] <= budget < predict_step_memory(cfg, t + 64)["total"]
    assert plan.train_breakdown["total"] == predicted["total"]
    assert plan.train_breakdown["activations"] == predicted["activations"]
    states = sum(plan.train_breakdown[k] for k in ("weights", "master weights", "gradients", "optimizer"))
    assert states == 16 * count_params(cfg) == predicted["parameters"] + predicted["gradients"] + predicted["optimizer"]


def test_bf16_states_are_16_bytes_per_parameter_and_activations_half():
    # chunked loss: the logits cost 12 bytes each in both precisions (the loss runs in fp32)
    fp32 = plan_context("gpt-110m", 40, "fp32", efficient_attention=True, checkpointing=True, chunked_loss=True)
    bf16 = plan_context("gpt-110m", 40, "bf16", efficient_attention=True, checkpointing=True, chunked_loss=True)
    n = count_params(PRESETS["gpt-110m"])
    for plan in (fp32, bf16):
        parts = plan.train_breakdown
        assert parts["weights"] + parts["master weights"] + parts["gradients"] + parts["optimizer"] == 16 * n
    assert bf16.train_breakdown["master weights"] == 4 * n and fp32.train_breakdown["master weights"] == 0
    assert bf16.train_context > 1.8 * fp32.train_context  # half the bytes per activation
    assert bf16.kv_tokens > 1.9 * fp32.kv_tokens  # and per cached key or value


def test_kv_budget_is_memory_left_by_the_weights_over_bytes_per_token():
    plan = plan_context("llama-2-7b", 80, "bf16")
    cfg = PRESETS["llama-2-7b"]
    per_token = kv_cache_bytes_per_token(cfg, 2)
    assert plan.kv_bytes_per_token == per_token == 2 * 32 * 32 * 128 * 2
    assert plan.kv_tokens == (80 * GIB - 2 * count_params(cfg)) // per_token
    gqa = plan_context("llama-2-7b", 80, "bf16", kv_heads=8)
    assert gqa.kv_bytes_per_token * 4 == per_token and gqa.kv_tokens > 4 * plan.kv_tokens


@pytest.mark.parametrize("model", list(PRESETS))
def test_more_memory_never_shrinks_the_context(model):
    last_train, last_kv = -1, -1
    for gib in (8, 16, 24, 40, 80, 141):
        plan = plan_context(model, gib, "bf16", efficient_attention=True, pipeline_stages=4)
        assert plan.train_context >= last_train and plan.kv_tokens >= last_kv
        assert plan.train_breakdown["total"] <= gib * GIB or plan.train_context == 0
        last_train, last_kv = plan.train_context, plan.kv_tokens


@pytest.mark.parametrize("model", list(PRESETS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_technique_only_ever_raises_the_context(model, precision):
    cfg = PRESETS[model]
    base = dict(checkpointing=False, efficient_attention=False, chunked_loss=False, kv_heads=None,
                context_ranks=1, pipeline_stages=1)
    switch_on = dict(checkpointing=True, efficient_attention=True, chunked_loss=True,
                     kv_heads=min(cfg.n_kv_heads, max(1, cfg.n_heads // 4)), context_ranks=4, pipeline_stages=2)
    # every technique added alone to: nothing, and everything else
    for name, value in switch_on.items():
        for others in (base, {**switch_on, name: base[name]}):
            without = plan_context(model, 80, precision, **others)
            with_it = plan_context(model, 80, precision, **{**others, name: value})
            assert with_it.train_context >= without.train_context, (name, others)
            assert with_it.kv_tokens >= without.kv_tokens, (name, others)


def test_ladder_reaches_long_contexts_where_naive_fits_little():
    plans = [plan_context("gpt-110m", 80, "bf16", **s).train_context for _, s in technique_ladder(PRESETS["gpt-110m"])]
    assert plans == sorted(plans) and plans[-1] > 100 * plans[0]
    assert plan_context("llama-2-7b", 80, "bf16").train_context == 0  # 16 bytes x 6.7B parameters > 80 GiB
    assert plan_context("llama-2-7b", 80, "bf16", pipeline_stages=4, efficient_attention=True).train_context > 0


def test_custom_shape_and_context_parallel_granularity():
    cfg = custom_model(layers=8, width=512, heads=8, kv_heads=2, vocab=1000)
    plan = plan_context(cfg, 4, "fp32", efficient_attention=True, context_ranks=3, granularity=128)
    assert plan.train_context % (3 * 128) == 0 and plan.model.n_kv_heads == 2
    assert "largest trainable context" in plan.summary()


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="13B"), "model must be"),
    (dict(memory_gib=0), "memory_gib"),
    (dict(memory_gib="80"), "memory_gib"),
    (dict(precision="fp16"), "precision must be one of"),
    (dict(context_ranks=0), "context_ranks"),
    (dict(pipeline_stages=5), "pipeline_stages must divide n_layers=12"),
    (dict(kv_heads=5), "kv_heads must divide n_heads=12"),
    (dict(kv_heads=0), "kv_heads"),
    (dict(granularity=1.5), "granularity"),
])
def test_bad_inputs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_context(**{"model": "gpt-110m", **kwargs})


def test_flags_must_be_bools():
    with pytest.raises(TypeError, match="checkpointing must be a bool"):
        plan_context("gpt-110m", checkpointing="yes")
    with pytest.raises(ValueError, match="n_kv_heads"):
        custom_model(layers=4, width=256, heads=4, kv_heads=3)


def test_precomputed_choices_links_every_stack():
    import ipywidgets as widgets

    from ctxlab.widgets import precomputed_choices

    views = [widgets.HTML(f"{a}{b}{c}") for a in "xy" for b in "123" for c in "pq"]
    box = precomputed_choices([("a", "xy"), ("b", "123"), ("c", "pq")], views, slider_axis=1)
    dropdowns, (slider_row, root) = box.children[0], box.children[1].children
    assert [d.description for d in dropdowns.children] == ["a", "c"]
    assert isinstance(slider_row.children[0], widgets.IntSlider) and slider_row.children[0].max == 2
    assert isinstance(root, widgets.Stack) and len(root.children) == 2
    assert root.children[1].children[2].children[0].value == "y3p"  # row-major, last axis fastest
    with pytest.raises(ValueError, match="one view per combination"):
        precomputed_choices([("a", "xy")], views)
    with pytest.raises(ValueError, match="slider_axis"):
        precomputed_choices([("a", "xy")], views[:2], slider_axis=3)


def test_prefill_and_decode_costs_grow_with_the_context():
    from ctxlab.flops import matmul_params
    from ctxlab.planner import prefill_flops

    cfg = PRESETS["llama-2-7b"]
    n = matmul_params(cfg)
    assert prefill_flops(cfg, 1000) == pytest.approx(1000 * (2 * n + 2 * 32 * 4096 * 1000))
    assert prefill_flops(cfg, 128_000) > 32 * prefill_flops(cfg, 4000)  # superlinear


def test_html_views_share_one_layout_and_style():
    from ctxlab.widgets import html_views

    views = html_views(["<b>a</b>", "<b>b</b>"])
    assert [v.value for v in views] == ["<b>a</b>", "<b>b</b>"]
    assert views[0].layout is views[1].layout and views[0].style is views[1].style


def test_shipped_models_and_a_config_json_are_plannable(tmp_path):
    import json

    from ctxlab.hf_config import read_hf_config

    alone = plan_context("llama-3-8b", 80, "bf16", efficient_attention=True, checkpointing=True, chunked_loss=True)
    assert alone.params == 8_030_261_248 and alone.train_context == 0  # 16 bytes x 8.0B parameters > 80 GiB
    plan = plan_context("llama-3-8b", 80, "bf16", efficient_attention=True, checkpointing=True, chunked_loss=True,
                        pipeline_stages=4)
    assert plan.train_context > 0
    assert plan.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # k and v, 32 layers, 8 kv heads of 128, bf16
    path = tmp_path / "config.json"
    path.write_text(json.dumps(read_hf_config("llama-3-8b")))
    assert plan_context(str(path), 80, "bf16", efficient_attention=True, checkpointing=True,
                        chunked_loss=True, pipeline_stages=4).train_context == plan.train_context
    llama = custom_model(32, 4096, 32, 8, vocab=128256, d_ff=14336, llama=True)
    assert count_params(llama) == plan.params


def test_planner_command_prints_its_figures_last():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "ctxlab.planner", "--model", "llama-3-8b", "--gpu-gib", "80",
                          "--precision", "bf16", "--techniques", "flash,checkpoint,chunked-loss", "--pipeline", "4"],
                         capture_output=True, text=True, check=True)
    last = dict(kv.split("=") for kv in run.stdout.strip().splitlines()[-1].split())
    assert int(last["params"]) == 8_030_261_248 and int(last["max_train_context"]) > 0
    assert int(last["kv_bytes_per_token"]) == 131072
    bad = subprocess.run([sys.executable, "-m", "ctxlab.planner", "--model", "llama-9"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "llama-3-8b" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "ctxlab.planner", "--techniques", "flash,magic"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "magic" in bad.stderr


def test_zero_shards_the_states_and_easycontext_fits():
    every = dict(efficient_attention=True, checkpointing=True, chunked_loss=True, context_ranks=8)
    plans = [plan_context("llama-2-7b", 80, "bf16", zero_stage=s, **every) for s in range(4)]
    states = [p.train_breakdown["total"] - p.train_breakdown["activations"] for p in plans]
    assert states == sorted(states, reverse=True) and plans[0].train_context == 0 < plans[3].train_context
    n = count_params(PRESETS["llama-2-7b"])
    assert plans[1].train_breakdown["optimizer"] == 8 * n // 8 and plans[1].train_breakdown["weights"] == 2 * n
    # EasyContext: Llama-2-7B at 700K tokens on 8 A100-80GB, ZeRO-3 with the optimizer and weights offloaded
    easy = plan_context("llama-2-7b", 80, "bf16", zero_stage=3, offload=("optimizer", "params"), **every)
    assert 0.5 < easy.train_context / 700_000 < 2 and easy.host_bytes == 16 * n // 8
    assert "host memory" in easy.summary()
    wider = plan_context("llama-2-7b", 80, "bf16", zero_stage=3, zero_ranks=64, **every)
    assert wider.train_context > plans[3].train_context  # more ranks to shard over


@pytest.mark.parametrize("changes,match", [(dict(zero_stage=4), "zero_stage"),
                                           (dict(offload=("optimizer",)), "zero_stage >= 1"),
                                           (dict(zero_stage=1, offload=("params",)), "zero_stage 3"),
                                           (dict(zero_stage=1, zero_ranks=0), "zero_ranks")])
def test_zero_settings_are_checked(changes, match):
    with pytest.raises(ValueError, match=match):
        plan_context("llama-2-7b", 80, "bf16", **changes)


def test_planner_command_takes_zero_and_offload(capsys):
    from ctxlab.planner import main

    main(["--model", "llama-2-7b", "--techniques", "flash,checkpoint,chunked-loss", "--context-ranks", "8",
          "--zero", "3", "--offload", "optimizer,params"])
    out = capsys.readouterr().out
    assert 350_000 < int(out.strip().splitlines()[-1].split("max_train_context=")[1].split()[0]) < 1_400_000
    assert "host memory per rank" in out
