"""The LSTM beside the GPT (erratum E2): the same interface, the same parameter budget, and the bench."""
import re
import subprocess
import sys

import pytest
import torch

from ctxlab.bench.recurrent import DISTANCE_BINS, accuracy_by_distance, gradient_by_distance, make_models
from ctxlab.config import IGNORE
from ctxlab.tasks import VOCAB_SIZE, passkey_batches
from ctxlab.recurrent import LSTMLM, hidden_for_budget, lstm_params
from ctxlab.train import train


def test_the_parameter_formula_counts_the_module():
    for d_embed, hidden, layers in ((8, 16, 1), (64, 118, 1), (32, 40, 2)):
        assert lstm_params(VOCAB_SIZE, d_embed, hidden, layers) == LSTMLM(VOCAB_SIZE, d_embed, hidden, layers).num_params()


def test_the_lstm_gets_the_gpts_budget_and_no_more():
    models = make_models(0, 256)
    gpt, lstm = (sum(p.numel() for p in m.parameters()) for m in (models["gpt"], models["lstm"]))
    hidden = models["lstm"].lstm.hidden_size
    assert lstm <= gpt < lstm_params(VOCAB_SIZE, 64, hidden + 1)  # the largest state that fits the budget
    assert hidden_for_budget(gpt, VOCAB_SIZE, 64) == hidden
    with pytest.raises(ValueError, match="n_params"):
        hidden_for_budget(100, VOCAB_SIZE, 64)  # below even a one-unit LSTM


def test_the_loss_skips_ignored_targets_and_trains_with_the_book_loop():
    torch.manual_seed(0)
    model = LSTMLM(VOCAB_SIZE, 8, 16)
    tokens = torch.randint(0, VOCAB_SIZE, (2, 12))
    targets = tokens.roll(-1, 1)
    targets[:, :6] = IGNORE
    logits, loss = model(tokens, targets)
    manual = torch.nn.functional.cross_entropy(logits[:, 6:].reshape(-1, VOCAB_SIZE), targets[:, 6:].reshape(-1))
    torch.testing.assert_close(loss, manual)
    hist = train(model, passkey_batches(4, 32, 0, loss_on="answer", key_len=1), 3, lr=1e-2, progress=False)
    assert hist.steps_done == 3 and all(torch.isfinite(torch.tensor(hist.losses)))
    with pytest.raises(ValueError, match="hidden"):
        LSTMLM(VOCAB_SIZE, 8, 0)


def test_accuracy_and_gradients_by_distance_cover_the_sequence():
    torch.manual_seed(0)
    model = LSTMLM(VOCAB_SIZE, 8, 16).eval()
    acc = accuracy_by_distance(model, 128, 2, 40, 0)
    assert set(acc) == {f"{lo}-{hi}" for lo, hi in DISTANCE_BINS if lo < 128} and all(0 <= a <= 1 for a in acc.values())
    grad = gradient_by_distance(model, 128, 2, 4, 0)
    assert set(grad) == set(acc) and all(g > 0 for g in grad.values())


def test_the_bench_prints_its_figures_last():
    out = subprocess.run([sys.executable, "-m", "ctxlab.bench", "recurrent", "--seeds", "1", "--steps", "2",
                          "--samples", "20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"lstm_near=\S+ lstm_far=\S+ gpt_near=\S+ gpt_far=\S+ lstm_grad_far_over_near=\S+", last), last
    bad = subprocess.run([sys.executable, "-m", "ctxlab.bench", "recurrent", "--steps", "0"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--steps" in bad.stderr and "Traceback" not in bad.stderr
