import json

import pytest
import torch

from ctxlab.bench import positions as bench
from ctxlab.bench import positions_retrieval as retrieval
from ctxlab.config import with_positions
from ctxlab.tasks import TRAIN_LEN
from ctxlab.evaluate import passkey_accuracy
from ctxlab.extend import base_config, main
from ctxlab.train import load_model
from ctxlab.model import GPT


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    threads = torch.get_num_threads()
    main(["all", "--steps", "2", "--out", str(out), "--seed", "3", "--eval-samples", "4", "--threads", "1",
          "--seeds", "1", "--workers", "1"])
    torch.set_num_threads(threads)
    return out


def test_command_saves_every_checkpoint_with_its_record(ckpt_dir):
    names = {p.name for p in ckpt_dir.iterdir()}
    for stem in ("base", "base_alibi", "finetuned_none", "finetuned_pi", "finetuned_yarn"):
        assert f"{stem}.pt" in names and f"{stem}.json" in names
        state = torch.load(ckpt_dir / f"{stem}.pt", weights_only=True)
        assert set(state) == {"config", "model", "meta"}
    assert not [n for n in names if n.endswith(".tmp")]  # atomic: no half-written files left
    runs = json.loads((ckpt_dir / "runs.json").read_text())
    assert "all --steps 2 --out " + str(ckpt_dir) + " --seed 3" in runs[-1]["command"]
    assert runs[-1]["seed"] == 3
    meta = json.loads((ckpt_dir / "finetuned_yarn.json").read_text())
    assert meta["seq_len"] == 4 * TRAIN_LEN and meta["rope_scale"] == 4.0 and meta["steps"] == 2


def test_a_checkpoint_reads_with_any_scaling(ckpt_dir):
    model = load_model(ckpt_dir / "finetuned_pi.pt")
    assert model.cfg.rope_scaling == "pi" and model.cfg.max_seq_len == 4 * TRAIN_LEN
    longer = bench.model_for("pi_finetuned", 8 * TRAIN_LEN, ckpt_dir)
    assert longer.cfg.rope_scale == 8.0
    torch.testing.assert_close(longer.state_dict()["embed.weight"], model.state_dict()["embed.weight"])
    with pytest.raises(ValueError, match="method"):
        bench.model_for("pi_extra", 256, ckpt_dir)
    with pytest.raises(FileNotFoundError, match="extend train"):
        load_model(ckpt_dir / "missing.pt")


def test_bench_measures_every_cell(ckpt_dir):
    res = bench.run(methods=("none", "yarn_zero_shot", "alibi"), multiples=(1, 2), samples=5, loss_samples=4,
                    ckpt_dir=ckpt_dir, log=lambda *_: None)
    cell = res["passkey"]["yarn_zero_shot"]["2"]
    assert len(cell["correct"]) == 5 and 0 <= cell["accuracy"] <= 1
    assert len(res["loss"]["alibi"]["loss"]) == 4
    with pytest.raises(ValueError, match="methods"):
        bench.run(methods=("magic",), ckpt_dir=ckpt_dir)


def test_passkey_accuracy_is_one_for_a_model_that_knows_the_key():
    class Oracle(GPT):
        def forward(self, tokens, targets=None):  # predicts the next token from the data itself
            logits = torch.full((*tokens.shape, self.cfg.vocab_size), -1e9)
            nxt = torch.roll(tokens, -1, dims=1)
            logits.scatter_(2, nxt[..., None], 0.0)
            return logits, None

    res = passkey_accuracy(Oracle(base_config()), TRAIN_LEN, n=7, batch=3)
    assert res["accuracy"] == 1.0 and len(res["depth"]) == 7 and max(res["loss"]) < 1e-6
    assert sorted(set(res["target_depth"])) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(abs(a - b) < 0.05 for a, b in zip(res["depth"], res["target_depth"]))


def test_with_positions_sets_the_scale_from_the_length():
    cfg = with_positions(base_config(), 512, "yarn", original_len=TRAIN_LEN)
    assert cfg.rope_scale == 4.0 and cfg.rope_original_len == TRAIN_LEN and cfg.max_seq_len == 512
    assert with_positions(base_config(), 1024, "pi", scale=4.0, original_len=TRAIN_LEN).rope_scale == 8.0
    assert with_positions(base_config(), 256, "none", original_len=TRAIN_LEN).rope_scaling == "none"


def test_the_retrieval_experiment_saves_and_measures_every_reading(ckpt_dir):
    for method in (None, *retrieval.FINE_TUNED):
        path = retrieval.checkpoint(0, method, ckpt_dir / "retrieval")
        assert path.exists() and path.with_suffix(".json").exists()
    meta = json.loads(retrieval.checkpoint(0, "abf", ckpt_dir / "retrieval").with_suffix(".json").read_text())
    assert meta["rope_base"] == retrieval.ABF_BASE and meta["seq_len"] == 4 * TRAIN_LEN and meta["steps"] == 2
    assert load_model(retrieval.checkpoint(0, "yarn", ckpt_dir / "retrieval")).cfg.rope_scale == 4.0
    res = retrieval.run((0,), samples=2, text_samples=1, ckpt_dir=ckpt_dir / "retrieval", workers=1)
    assert set(res["zero_shot"]) == set(retrieval.FINE_TUNED + retrieval.ABLATION)
    assert set(res["fine_tuned"]) == set(retrieval.FINE_TUNED)
    cell = res["fine_tuned"]["pi"]["0"]["8"]
    assert len(cell["latest"]["by_depth"]) == 2 and len(cell["loss_count"]) == 8 * TRAIN_LEN // retrieval.BIN
    assert sum(cell["loss_count"]) == 32  # four questions per T_train of text
    line = retrieval.last_line(res)
    assert line.startswith("multikey_4x none=") and line.endswith("seeds=1") and "yarn_finetuned=" in line
    assert "latest accuracy" in retrieval.report(res)
