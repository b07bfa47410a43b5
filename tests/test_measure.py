import pytest
import torch

from ctxlab.measure import LiveStorageTracker, measure_peak


def test_known_allocation_is_reported():
    keep = []
    peak = measure_peak(lambda: keep.append(torch.empty(1000, 1000)), "cpu")
    assert 4_000_000 <= peak <= 4_100_000


def test_freed_tensors_are_not_counted_twice():
    def fn():
        a = torch.ones(1000, 1000)
        b = a * 2
        del a
        c = b + 1
        return c
    peak = measure_peak(fn, "cpu")
    assert 8_000_000 <= peak < 12_000_000  # two 4 MB tensors alive at once, never three


def test_views_share_storage():
    def fn():
        a = torch.zeros(1000, 1000)
        _ = [a[i] for i in range(10)], a.t(), a.view(-1)
    assert measure_peak(fn, "cpu") < 4_100_000


def test_backward_saved_tensors_are_counted():
    x = torch.randn(512, 512, requires_grad=True)
    fwd_only = measure_peak(lambda: (x.exp() * 2).sum(), "cpu")
    fwd_bwd = measure_peak(lambda: (x.exp() * 2).sum().backward(), "cpu")
    assert fwd_bwd > fwd_only >= 512 * 512 * 4


def test_tracker_live_returns_to_zero():
    with LiveStorageTracker() as t:
        a = torch.ones(100)
        del a
    assert t.live == 0 and t.peak == 400


def test_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable"):
        measure_peak(3)
    with pytest.raises(ValueError, match="device"):
        measure_peak(lambda: None, "mps")


def test_views_of_existing_tensors_are_not_allocations():
    weight = torch.randn(1000, 1000)
    x = torch.randn(10, 1000)
    peak = measure_peak(lambda: torch.nn.functional.linear(x, weight), "cpu")  # linear views weight.t()
    assert peak < 100_000
    assert measure_peak(lambda: weight.t(), "cpu") == 0
    assert measure_peak(lambda: weight.add_(1.0), "cpu", existing=[weight]) == 0
    assert measure_peak(lambda: weight + 1.0, "cpu", existing=[weight]) == 4_000_000


def test_budget_raises_memory_error_and_bad_budget():
    with pytest.raises(MemoryError, match="budget"):
        measure_peak(lambda: torch.empty(1000, 1000), "cpu", budget_bytes=1_000_000)
    assert measure_peak(lambda: torch.empty(100), "cpu", budget_bytes=1_000_000) == 400
    with pytest.raises(ValueError, match="budget_bytes"):
        measure_peak(lambda: None, "cpu", budget_bytes=-5)
