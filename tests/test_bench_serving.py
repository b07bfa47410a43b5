"""The serving bench on a small model: its measurements agree with the caches' own guarantees."""
import json
import pytest
import torch

from ctxlab import GPT, reference_config
from ctxlab.bench import serving as sv
from ctxlab.book_files import CHECKOUT_BOOK
from ctxlab.kvcache_quant import QuantizedKVCache
from ctxlab.kvcache_window import SinkWindowCache
from ctxlab.tasks import DialogueSpec

SETTINGS = {"train_len": 48, "order_digits": 2}


@pytest.fixture(scope="module")
def chatbot():
    torch.manual_seed(0)
    cfg = reference_config(vocab_size=DialogueSpec().vocab_size, d_model=32, n_layers=2, n_heads=4, max_seq_len=96)
    return GPT(cfg).eval()


def test_a_window_as_long_as_the_dialogue_recalls_what_the_full_cache_does(chatbot):
    full = sv.recall_by_distance(chatbot, SETTINGS, n=4)
    window = sv.recall_by_distance(chatbot, SETTINGS, lambda b: SinkWindowCache(chatbot.cfg, b, 4, 92, chatbot.rope),
                                   step=1, n=4)
    assert [r["lo"] for r in full] == [0, 24, 48] and [r["correct"] for r in window] == [r["correct"] for r in full]
    for a, b in zip(full, window):
        assert b["answer_loss"] == pytest.approx(a["answer_loss"], rel=1e-4)


def test_quantised_recall_rows_and_the_pooled_figures(chatbot):
    rows = sv.recall_by_distance(chatbot, SETTINGS, lambda b: QuantizedKVCache(chatbot.cfg, b, 96, "int8"), n=4)
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 4 for r in rows)
    assert sv.pooled(rows, "n", lambda r: True) == 4


def test_chunked_prefill_and_shared_prompt_on_a_small_model(chatbot):
    c = sv.chunked_prefill(chatbot, chunks=(96, 24, 8), batch=2)
    peaks = [r["peak_bytes"] for r in c["rows"]]
    assert peaks == sorted(peaks, reverse=True) and max(r["max_logit_diff"] for r in c["rows"]) < 1e-4
    p = sv.shared_prompt(chatbot, prompt_len=30, sessions=3, own=10, block_size=8)
    assert (p["blocks_shared"], p["blocks_alone"], p["copied_blocks"]) == (4 + 3 * 2, 3 * 5, 3)
    assert p["max_logit_diff"] < 1e-5


def test_the_stored_run_gives_every_field_of_the_last_line():
    stored = json.loads((CHECKOUT_BOOK / "data" / "serving.json").read_text())
    fields = dict(kv.split("=") for kv in sv.last_line(stored).split())
    assert list(fields) == ["crossover_tokens_predicted", "crossover_tokens_measured", "int8_kv_bytes_ratio",
                            "int8_far_recall", "full_far_recall", "sinks_far_recall", "sinks_recent_loss_ratio",
                            "chunked_prefill_peak_ratio"]
    assert float(fields["int8_kv_bytes_ratio"]) < 0.3 and float(fields["chunked_prefill_peak_ratio"]) < 1
