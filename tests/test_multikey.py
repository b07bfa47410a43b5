"""Chapter 6's position-sensitive tasks, their evaluators and how each method reads a length."""
import math

import pytest
import torch

from ctxlab import GPT, ModelConfig
from ctxlab.bench import positions_retrieval as pr
from ctxlab.config import IGNORE
from ctxlab.evaluate import retrieval_accuracy, token_losses
from ctxlab.positions import yarn_attention_factor
from ctxlab.tasks import TRAIN_LEN, chapter6_batches, retrieval_batch, tracking_batch
from ctxlab.tasks.multikey import FIRST_KEY, MARK, N_KEY_TOKENS, N_VALUES


def test_a_multikey_answer_is_the_value_after_the_asked_key():
    b = retrieval_batch("multikey", 40, 256, seed=3, questions=3)
    assert torch.equal(b.tokens, retrieval_batch("multikey", 40, 256, seed=3, questions=3).tokens)
    for i in range(40):
        row = b.tokens[i].tolist()
        keys = [t for t in row[: 256 - 9] if FIRST_KEY <= t < FIRST_KEY + N_KEY_TOKENS]
        assert len(keys) == len(set(keys)) == 4  # four different keys, each once
        for j, pos in enumerate(b.answer_pos.tolist()):
            key, answer = row[pos], row[pos + 1]
            assert row[pos - 1] == MARK and answer == b.value[i, j]
            assert row[b.target_pos[i, j]: b.target_pos[i, j] + 2] == [key, answer]
            assert b.targets[i, pos] == answer
    assert int((b.targets != IGNORE).sum()) == 40 * 3  # only the answers are scored


def test_latest_asks_for_the_later_of_two_values():
    b = retrieval_batch("latest", 60, 128, seed=5, n_keys=1, depth=[0.0, 0.5, 1.0] * 20)
    for i in range(60):
        row = b.tokens[i].tolist()
        key = row[-2]
        places = [p for p, t in enumerate(row[:-3]) if t == key]
        assert len(places) == 2 and places[1] == b.target_pos[i, 0]  # the answer's needle is the later one
        assert row[places[1] + 1] == b.value[i, 0] == row[-1] != row[places[0] + 1]
    assert b.depth[2] > 0.9 and b.depth[0] < 0.1  # depth 0 puts the later assignment near the start


def test_tracking_answers_are_the_latest_assignment():
    tokens, targets = tracking_batch(20, 512, seed=2, n_sets=3, n_asks=6)
    for row, tgt in zip(tokens.tolist(), targets.tolist()):
        key, value, asked = row[0], row[1], 0
        for p in range(2, len(row) - 1):
            if row[p] == key and row[p - 1] != MARK:
                value = row[p + 1]
            if tgt[p] != IGNORE:
                assert row[p] == key and row[p - 1] == MARK and tgt[p] == value == row[p + 1]
                asked += 1
        assert asked == 6


def test_the_training_mixture_has_every_task():
    tokens, targets = chapter6_batches(8, 128, seed=1)(0)
    assert tokens.shape == targets.shape == (8, 128)
    assert int((targets != IGNORE).sum()) == 2 * 4 + 2 * 1 + 4 * 4
    with pytest.raises(ValueError, match="batch"):
        chapter6_batches(6, 128, seed=1)


@pytest.mark.parametrize("call, name", [
    (lambda: retrieval_batch("counting", 1, 128, 0), "task"),
    (lambda: retrieval_batch("multikey", 1, 128, 0, n_keys=N_KEY_TOKENS + 1), "n_keys"),
    (lambda: retrieval_batch("multikey", 1, 128, 0, n_keys=2, questions=3), "questions"),
    (lambda: retrieval_batch("latest", 1, 20, 0), "seq_len"),
    (lambda: retrieval_batch("multikey", 1, 128, 0, depth=1.5), "depth"),
    (lambda: tracking_batch(1, 128, 0, n_sets=0), "n_sets"),
    (lambda: tracking_batch(1, 16, 0), "seq_len"),
])
def test_bad_task_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


class Oracle(GPT):
    def forward(self, tokens, targets=None):  # predicts the next token from the data itself
        logits = torch.full((*tokens.shape, self.cfg.vocab_size), -1e9)
        logits.scatter_(2, torch.roll(tokens, -1, dims=1)[..., None], 0.0)
        return logits, None


def test_evaluators_score_a_model_that_knows_the_answers():
    oracle = Oracle(ModelConfig(vocab_size=96, d_model=16, n_layers=1, n_heads=2, max_seq_len=256))
    res = retrieval_accuracy(oracle, "latest", 256, n=7, batch=3, n_keys=1)
    assert res["accuracy"] == 1.0 and sorted(set(res["target_depth"])) == [0.0, 0.25, 0.5, 0.75, 1.0]
    tokens, targets = tracking_batch(3, 256, seed=0)
    loss = token_losses(oracle, tokens, targets)
    assert loss.isnan().sum() == (targets == IGNORE).sum() and loss.nan_to_num().max() < 1e-6
    assert N_VALUES <= MARK < FIRST_KEY  # values, the question mark and the keys do not overlap


def test_each_method_reads_a_length_as_documented():
    base = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, max_seq_len=TRAIN_LEN)
    assert pr.reading(base, "abf", 512, False).rope_base == pr.ABF_BASE
    assert pr.reading(base, "none", 1024, True).rope_scaling == "none"
    pi_t = pr.reading(base, "pi_temperature", 1024, False)
    assert pi_t.rope_scale == 8.0 and math.isclose(GPT(pi_t).rope.attention_factor, yarn_attention_factor(8.0))
    assert GPT(pr.reading(base, "yarn_no_temperature", 512, False)).rope.attention_factor == 1.0
    assert GPT(pr.reading(base, "yarn", 512, False)).rope.attention_factor == yarn_attention_factor(4.0)
    assert pr.reading(base, "pi", 1024, True).rope_scale == 8.0  # past the tuned range: stretched further
    assert pr.reading(base, "llama3", 1024, True).rope_scale == 4.0  # llama3 reads past s * L as tuned
    assert pr.reading(base, "ntk", 256, True).rope_scale == 4.0
    saved = pr.reading(base, "abf", 512, True)  # a fine-tuned checkpoint's own positions are undone first
    assert pr.reading(saved, "pi", 512, False).rope_base == base.rope_base
    with pytest.raises(ValueError, match="method"):
        pr.reading(base, "xpos", 512, False)


def test_mean_and_spread():
    assert pr.mean_and_spread([1.0]) == (1.0, 0.0)
    mean, sd = pr.mean_and_spread([0.2, 0.4, 0.6])
    assert math.isclose(mean, 0.4) and math.isclose(sd, 0.2)


def test_attention_factor_override_is_checked():
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layers=1, n_heads=4, max_seq_len=256, rope_scaling="pi",
                      rope_scale=2.0, rope_original_len=128, rope_attention_factor=1.25)
    assert GPT(cfg).rope.attention_factor == 1.25
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="rope_attention_factor"):
            cfg.replace(rope_attention_factor=bad)


def test_depth_accuracy_averages_the_seeds():
    cell = {"depths": [0.0, 1.0]}
    results = {"zero_shot": {"pi": {"0": {"8": {"latest": {**cell, "by_depth": [0.2, 1.0]}}},
                                    "1": {"8": {"latest": {**cell, "by_depth": [0.4, 0.8]}}}}}}
    depths, acc = pr.depth_accuracy(results, "zero_shot", "pi", "latest", 8)
    assert depths == [0.0, 1.0] and acc == pytest.approx([0.3, 0.9])
