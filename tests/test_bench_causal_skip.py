import subprocess
import sys

import pytest
import torch

from ctxlab.attention import chunked_attention, naive_attention
from ctxlab.bench.causal_skip import predicted_ratio, skip_comparison


def test_skipping_the_future_changes_no_value_and_saves_the_predicted_flops():
    r = skip_comparison(seq_len=256, chunk=64, heads=2, head_dim=16, repeats=3)
    assert r["max_difference"] == 0.0  # a fully masked block adds exactly nothing
    assert r["flops_ratio"] == pytest.approx(predicted_ratio(256, 64)) == pytest.approx(5 / 8)
    assert r["time_ratio_q1"] <= r["time_ratio"] <= r["time_ratio_q3"]


def test_the_full_kernel_equals_naive_attention():
    q, k, v = (torch.randn(1, 2, 100, 8) for _ in range(3))
    torch.testing.assert_close(chunked_attention(q, k, v, q_chunk=32, k_chunk=32, skip_future=False),
                               naive_attention(q, k, v), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="skip_future"):
        chunked_attention(q, k, v, skip_future="no")


def test_cli_prints_the_ratios_last():
    out = subprocess.run([sys.executable, "-m", "ctxlab.bench", "causal_skip", "--seq-len", "256", "--chunk", "64",
                          "--repeats", "3"], capture_output=True, text=True, check=True).stdout.strip().splitlines()
    last = dict(kv.split("=") for kv in out[-1].split())
    assert float(last["causal_skip_flops_ratio"]) == pytest.approx(0.625, abs=1e-4) and float(last["time_ratio"]) > 0
    bad = subprocess.run([sys.executable, "-m", "ctxlab.bench", "causal_skip", "--chunk", "0"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "chunk" in bad.stderr and "Traceback" not in bad.stderr


def test_speed_sweep_times_every_variant_in_turns_and_fits_the_exponent():
    from ctxlab.bench.causal_skip import fitted_exponent, speed_sweep, time_ratio

    rows = speed_sweep([64, 128], repeats=2)
    assert {(r["backend"], r["T"]) for r in rows} == {(b, t) for b in ("naive", "chunked", "chunked, no skip", "sdpa")
                                                      for t in (64, 128)}
    assert all(len(r["samples"]) == 2 and r["q1_ms"] <= r["ms"] <= r["q3_ms"] for r in rows)
    assert time_ratio(rows, "sdpa", "sdpa", 128) == (1.0, 1.0, 1.0)
    square = [{"backend": "x", "T": t, "ms": 3e-6 * t * t} for t in (512, 1024, 4096)]
    assert fitted_exponent(square, "x") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least two"):
        fitted_exponent(square[:1], "x")
