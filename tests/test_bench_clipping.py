import re

import pytest
import torch

from ctxlab.bench.clipping import (clipped_gradients, cosine_rows, divergence_run, grad_cosine, grad_norm_vs_length,
                                   reference_gradients)


def test_cosines_on_model_gradients():
    model = reference_gradients(seq_len=32)
    before = [p.grad.clone() for p in model.parameters()]
    rows = {(r["rule"], r["threshold"]): r for r in cosine_rows(model, [("norm", 1.0), ("article", 1e-3),
                                                                         ("article", 10.0), ("value", 1e-3)])}
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))  # model untouched
    assert rows[("norm", 1.0)]["cosine"] > 1 - 1e-9 and rows[("norm", 1.0)]["norm_after"] <= 1 + 1e-5
    assert rows[("article", 1e-3)]["cosine"] < 0.8 and rows[("article", 1e-3)]["zeroed"] > 0.5
    assert rows[("article", 10.0)]["zeroed"] == 1.0 and rows[("article", 10.0)]["cosine"] == 0.0
    assert 0 < rows[("value", 1e-3)]["cosine"] < 1
    assert grad_cosine(before, before) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strategy"):
        clipped_gradients(model, "clamp", 1.0)
    with pytest.raises(ValueError, match="seq_len"):
        reference_gradients(seq_len=1)


def test_divergence_run_and_norm_sweep_are_plain_data():
    run = divergence_run("sgd", 0.1, 1.0, seq_len=32, steps=3)
    assert run["steps_done"] == 3 and not run["diverged"] and len(run["history"]["losses"]) == 3
    rows = grad_norm_vs_length([16, 32], samples=2)
    assert [r["T"] for r in rows] == [16, 32] and all(r["min"] <= r["grad_norm"] <= r["max"] for r in rows)


def test_cli_prints_the_cosines_last(capsys):
    from ctxlab.bench.__main__ import main  # the same dispatch as `python -m ctxlab.bench clipping`
    try:
        main(["clipping", "--seq-len", "32", "--steps", "2", "--batches", "1", "--device", "cpu",
              "--stability-steps", "3"])
    finally:
        torch.set_flush_denormal(False)
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"article_formula_cosine=([0-9.]+) norm_clip_cosine=([0-9.]+) max_logit_no_qknorm=([0-9.]+) "
                     r"max_logit_qknorm=([0-9.]+) spikes_no_warmup=([0-9]+) spikes_warmup=([0-9]+)", out[-1])
    assert m and float(m.group(1)) < 0.8 and float(m.group(2)) == 1.0, out[-1]
    with pytest.raises(SystemExit):
        main(["clipping", "--steps", "0"])
