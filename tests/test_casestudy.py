import json
import re
from dataclasses import replace

import pytest
import torch

from ctxlab import casestudy
from ctxlab.casestudy import study
from ctxlab.casestudy import QUICK, accuracy_by_distance, check_device, check_settings, distance_bins, train_stage
from ctxlab.tasks import min_length
from ctxlab.train import load_checkpoint

TINY = replace(QUICK, base_steps=12, save_every=4, d_model=16, batch=4)


@pytest.mark.parametrize("argv, words", [
    (["--train-len", "10"], "train_len"),
    (["--train-len", "65"], "train_len"),
    (["--base-steps", "0"], "base_steps"),
    (["--finetune-steps", "-3"], "finetune_steps"),
    (["--lr", "0"], "lr"),
    (["--threads", "0"], "threads"),
    (["--device", "tpu"], "device"),
    (["--device", "cuda:7"], "not available"),
    (["--data-parallel", "0"], "data_parallel"),
    (["--data-parallel", "3"], "data_parallel must divide"),
    pytest.param(["--data-parallel", "2", "--device", "cuda"],
                 "not available" if not torch.cuda.is_available() else "data_parallel",
                 marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="valid on 2 GPUs: it would run")),
])
def test_bad_arguments_stop_before_any_work(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        casestudy.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_check_settings_names_the_field():
    for field, value in [("scaling", "dynamic_ntk"), ("factor", 1), ("attention", "flash"), ("latency_lens", (64, 32)),
                         ("order_digits", 5), ("eval_samples", 0)]:
        with pytest.raises(ValueError, match=field):
            check_settings(replace(QUICK, **{field: value}))
    assert check_device("cpu") == "cpu"


def test_distance_bins_cover_what_fits_and_no_more():
    assert distance_bins(64, 64) == [(0, 32), (32, 64 - min_length(0) + 1)]
    bins = distance_bins(64, 256)
    assert [lo for lo, _ in bins] == [0, 32, 64, 128]
    assert bins[-1][1] == 256 - min_length(0) + 1
    assert all(lo < hi for lo, hi in bins)


def test_accuracy_rows_respect_their_bins():
    torch.manual_seed(0)
    model = casestudy.GPT(casestudy.base_config(TINY).replace(max_seq_len=4 * TINY.train_len)).eval()
    rows = accuracy_by_distance(model, TINY, 4 * TINY.train_len, n=6)
    assert [r["lo"] for r in rows] == [lo for lo, _ in distance_bins(TINY.train_len, 4 * TINY.train_len)]
    assert all(r["lo"] <= r["mean_distance"] < r["hi"] and 0 <= r["correct"] <= 6 for r in rows)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    train_stage(TINY, whole, "base", "cpu")

    real = study.dialogue_batches

    def failing(*args):
        get = real(*args)

        def get_batch(step):
            if step == 6:
                raise KeyboardInterrupt  # as if the run were stopped here
            return get(step)
        return get_batch
    monkeypatch.setattr(study, "dialogue_batches", failing)
    with pytest.raises(KeyboardInterrupt):
        train_stage(TINY, broken, "base", "cpu")
    assert not (broken / "base.pt").exists()
    assert load_checkpoint(broken / "base.state.pt")["step"] == 4
    monkeypatch.setattr(study, "dialogue_batches", real)
    meta = train_stage(TINY, broken, "base", "cpu")
    assert "resuming from step 4 of 12" in capsys.readouterr().out
    assert meta["resumed"] and not (broken / "base.state.pt").exists()
    a, b = load_checkpoint(whole / "base.pt")["model"], load_checkpoint(broken / "base.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished stage is reused, not redone
    train_stage(TINY, broken, "base", "cpu")
    assert "reusing" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"train_len": 1}))
    with pytest.raises(ValueError, match="other settings"):
        casestudy.run(TINY, tmp_path)


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path, capsys):
    results = casestudy.main(["--quick", "--out", str(tmp_path)])
    *_, note, last = capsys.readouterr().out.strip().splitlines()
    assert note.startswith("--quick is a smoke test")
    number = r"[0-9]+\.[0-9]+"
    assert re.fullmatch(rf"far_accuracy_before=({number}) far_accuracy_after=({number}) "
                        rf"decode_ms_per_token_short=({number}) decode_ms_per_token_long=({number})", last), last
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["settings"]["seed"] == QUICK.seed and stored["settings"]["train_len"] == QUICK.train_len
    assert stored["far_accuracy_after"] == results["far_accuracy_after"]
    assert {r["context"] for r in stored["latency"]} == set(QUICK.latency_lens)
    assert all(r["prefill_ms"] > 0 and r["decode_ms_per_token"] > 0 for r in stored["latency"])
    # memory-efficient attention and recomputation lower the peak of a fine-tuning step
    naive, flash, recompute = (r["peak_bytes"] for r in stored["training_memory"])
    assert recompute < flash < naive
    for name in ("base.pt", "finetuned_yarn.pt"):
        assert (tmp_path / name).stat().st_size < 5e6
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.state.pt"))


def test_data_parallel_training_matches_one_process(tmp_path):
    """Two gloo ranks, each on half of every batch, train the same weights as one process (up to rounding)."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    meta1 = train_stage(TINY, one, "base", "cpu")
    meta2 = train_stage(TINY, two, "base", "cpu", data_parallel=2)
    assert meta2["data_parallel"] == 2 and meta1["data_parallel"] == 1
    assert meta2["final_loss"] == pytest.approx(meta1["final_loss"], rel=1e-4)
    a, b = load_checkpoint(one / "base.pt")["model"], load_checkpoint(two / "base.pt")["model"]
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    assert not list(two.glob("*.state.pt"))
