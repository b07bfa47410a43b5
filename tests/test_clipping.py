import math

import pytest
import torch
from torch import nn

from ctxlab.clipping import (GradNormMonitor, adaptive_clip, article_clip, clip_by_global_norm, clip_by_value,
                             layer_norms, layer_of, make_clipper, total_norm, unitwise_norm)

SHAPES = {"vector": [(7,)], "matrices": [(4, 5), (3,), (2, 3, 4)], "scalar+big": [(), (64, 32), (32,)]}




def make_params(shapes, missing=(), fill=None, scale=3.0):
    """Two identical parameter lists (ours, torch's) with random gradients; indices in ``missing`` get none."""
    ours, theirs = [], []
    for i, shape in enumerate(shapes):
        w = torch.randn(shape)
        g = torch.randn(shape) * scale
        if fill is not None and i == 0 and g.numel():
            g.view(-1)[0] = fill
        a, b = nn.Parameter(w.clone()), nn.Parameter(w.clone())
        if i not in missing:
            a.grad, b.grad = g.clone(), g.clone()
        ours.append(a)
        theirs.append(b)
    return ours, theirs


def assert_same_grads(ours, theirs, equal_nan=False):
    for a, b in zip(ours, theirs):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6, equal_nan=equal_nan)


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("norm_type", [1, 2.0, 3.5, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])
@pytest.mark.parametrize("missing", [(), (0,)], ids=["all-grads", "one-missing"])
def test_global_norm_equals_torch(shapes, norm_type, max_norm, missing):
    ours, theirs = make_params(shapes, missing)
    got = clip_by_global_norm(ours, max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_same_grads(ours, theirs)
    after = total_norm([p.grad for p in ours if p.grad is not None], norm_type)
    assert after <= max_norm * (1 + 1e-5)


def test_global_norm_keeps_the_direction():
    ours, _ = make_params(SHAPES["matrices"])
    before = torch.cat([p.grad.flatten() for p in ours])
    clip_by_global_norm(ours, 0.1)
    after = torch.cat([p.grad.flatten() for p in ours])
    assert torch.nn.functional.cosine_similarity(before, after, dim=0) > 1 - 1e-6


def test_single_tensor_empty_list_and_no_grads_like_torch():
    ours, theirs = make_params([(5, 5)])
    torch.testing.assert_close(clip_by_global_norm(ours[0], 1.0), torch.nn.utils.clip_grad_norm_(theirs[0], 1.0))
    assert_same_grads(ours, theirs)
    for params in ([], [nn.Parameter(torch.ones(3))]):
        got = clip_by_global_norm(params, 1.0)
        want = torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert got.item() == want.item() == 0.0
    assert clip_by_global_norm(iter(make_params([(3,)])[0]), 1.0) > 0  # a generator works too


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nonfinite_gradients_like_torch(bad, norm_type):
    ours, theirs = make_params(SHAPES["matrices"], fill=bad)
    got = clip_by_global_norm(ours, 1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert not torch.isfinite(got)
    assert_same_grads(ours, theirs, equal_nan=True)
    ours, theirs = make_params(SHAPES["matrices"], fill=bad)
    with pytest.raises(RuntimeError, match="non-finite") as mine:
        clip_by_global_norm(ours, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite") as torchs:
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
    assert str(mine.value) == str(torchs.value)
    assert_same_grads(ours, theirs, equal_nan=True)  # nothing was touched before raising


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("clip_value", [0.1, 1, 100.0])
def test_value_clipping_equals_torch(shapes, clip_value):
    ours, theirs = make_params(shapes, missing=(1,), fill=float("nan"))
    assert clip_by_value(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    assert_same_grads(ours, theirs, equal_nan=True)


def test_adaptive_clipping_bounds_each_unit_relative_to_its_weights():
    ours, _ = make_params([(8, 6), (6,)], scale=1.0)
    ours[1].data.zero_()  # zero weights: the bound falls back to eps
    before = [p.grad.clone() for p in ours]
    adaptive_clip(ours, clip_ratio=0.05, eps=1e-3)
    for p, g0 in zip(ours, before):
        bound = unitwise_norm(p.detach()).clamp_min(1e-3) * 0.05
        g_norm, g0_norm = unitwise_norm(p.grad), unitwise_norm(g0)
        assert torch.all(g_norm <= bound * (1 + 1e-5))
        unclipped = (g0_norm <= bound).expand_as(p.grad) if p.dim() > 1 else (g0_norm <= bound)
        assert torch.equal(torch.where(unclipped, p.grad, g0), g0)  # small units untouched
        if p.dim() > 1:  # each unit keeps its direction
            cos = torch.nn.functional.cosine_similarity(p.grad, g0, dim=1)
            assert torch.all(cos > 1 - 1e-5)
    big_ratio, _ = make_params([(8, 6)], scale=1e-3)
    g = big_ratio[0].grad.clone()
    adaptive_clip(big_ratio, clip_ratio=10.0)
    assert torch.equal(big_ratio[0].grad, g)


def test_article_formula_on_the_worked_example():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, -4.0, 0.05])
    article_clip([p], 0.1)
    torch.testing.assert_close(p.grad, torch.tensor([2.9, 0.0, 0.0]))
    q = nn.Parameter(torch.zeros(3))
    q.grad = torch.tensor([3.0, -4.0, 0.05])
    clip_by_global_norm([q], 0.1)
    torch.testing.assert_close(q.grad, torch.tensor([3.0, -4.0, 0.05]) * 0.1 / (5.00025 + 1e-6))


@pytest.mark.parametrize("fn, kwargs, match", [
    (clip_by_global_norm, {"max_norm": 0.0}, "max_norm"), (clip_by_global_norm, {"max_norm": -1.0}, "max_norm"),
    (clip_by_global_norm, {"max_norm": float("nan")}, "max_norm"),
    (clip_by_global_norm, {"max_norm": float("inf")}, "max_norm"),
    (clip_by_global_norm, {"max_norm": True}, "max_norm"),
    (clip_by_global_norm, {"max_norm": 1.0, "norm_type": 0}, "norm_type"),
    (clip_by_global_norm, {"max_norm": 1.0, "norm_type": -2}, "norm_type"),
    (clip_by_global_norm, {"max_norm": 1.0, "norm_type": "fro"}, "norm_type"),
    (clip_by_global_norm, {"max_norm": 1.0, "norm_type": float("nan")}, "norm_type"),
    (clip_by_value, {"clip_value": 0}, "clip_value"), (clip_by_value, {"clip_value": float("inf")}, "clip_value"),
    (adaptive_clip, {"clip_ratio": -0.01}, "clip_ratio"), (adaptive_clip, {"eps": 0.0}, "eps"),
    (article_clip, {"theta": float("nan")}, "theta"),
])
def test_bad_thresholds_are_named(fn, kwargs, match):
    params, _ = make_params([(3,)])
    with pytest.raises(ValueError, match=match):
        fn(params, **kwargs)


@pytest.mark.parametrize("params", [[1.0, 2.0], "weights", 3, [torch.ones(2), None]])
def test_non_tensor_parameters_are_refused(params):
    with pytest.raises(TypeError, match="params"):
        clip_by_global_norm(params, 1.0)


def test_make_clipper_and_layer_names():
    with pytest.raises(ValueError, match="strategy"):
        make_clipper("clamp")
    with pytest.raises(ValueError, match="threshold"):
        make_clipper("value", 0.0)
    assert layer_of("blocks.2.attn.q_proj.weight") == "blocks.2" and layer_of("embed.weight") == "embed"


def test_monitor_counts_clipped_steps_and_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    monitor = GradNormMonitor(per_layer=True)
    for scale in (1e-3, 10.0, 1e-3, 10.0):
        model.zero_grad()
        (model(torch.randn(8, 4)).sum() * scale).backward()
        norm = monitor.observe(model, make_clipper("norm", 1.0))
        assert norm == monitor.total_norms[-1]
    assert monitor.clipped == [False, True, False, True] and monitor.clipped_fraction == 0.5
    assert max(monitor.clipped_norms) <= 1.0 + 1e-5
    assert set(monitor.layer_norms) == {"0", "1"} and all(len(v) == 4 for v in monitor.layer_norms.values())
    restored = GradNormMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict() == monitor.state_dict()
    unclipped = GradNormMonitor(per_layer=True)  # no clipping: the norm after is the norm before
    unclipped.observe(model)
    assert unclipped.clipped_norms == unclipped.total_norms and unclipped.clipped == [False]
    first = next(iter(unclipped.layer_norms.values()))[0]
    assert first == pytest.approx(layer_norms([(n, p.grad) for n, p in model.named_parameters()])["0"])


def test_layer_norms_combine_to_the_total():
    grads = [("blocks.0.attn.q.weight", torch.randn(4, 4)), ("blocks.0.mlp.up.weight", torch.randn(4)),
             ("blocks.1.mlp.up.weight", torch.randn(3, 2)), ("embed.weight", torch.randn(5, 4))]
    norms = layer_norms(grads)
    assert list(norms) == ["blocks.0", "blocks.1", "embed"]
    combined = math.sqrt(sum(v ** 2 for v in norms.values()))
    assert combined == pytest.approx(float(total_norm([g for _, g in grads])), rel=1e-5)
