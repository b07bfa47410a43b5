import math
import os

import pytest
import torch

from ctxlab import GPT, ModelConfig
from ctxlab.train import TrainResult, load_checkpoint, lr_at, resolve_clip, save_checkpoint, train

VOCAB, T = 16, 16




def tiny_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_seq_len=64, dropout=dropout))


def copy_batches(batch=8, seq=T):
    """Counting sequences (each token is the previous + 1 mod VOCAB) from a random start, seeded by the
    index; the first target is ignored (-100) since the start cannot be predicted."""
    def get_batch(i):
        g = torch.Generator().manual_seed(1000 + i)
        start = torch.randint(0, VOCAB, (batch, 1), generator=g)
        x = (start + torch.arange(seq + 1)) % VOCAB
        targets = x[:, 1:].clone()
        targets[:, 0] = -100
        return x[:, :-1], targets
    return get_batch


def test_loss_goes_down_and_history_is_plain_data():
    res = train(tiny_model(), copy_batches(), steps=30, lr=3e-3, warmup=5)
    assert isinstance(res, TrainResult) and res.steps_done == 30 and not res.diverged
    d = res.to_dict()
    assert all(len(d[k]) == 30 for k in ("losses", "grad_norms", "clipped_norms", "lrs", "clipped"))
    assert all(isinstance(x, float) for x in d["losses"] + d["grad_norms"] + d["lrs"])
    assert sum(res.losses[-5:]) / 5 < 0.7 * sum(res.losses[:5]) / 5


def test_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 4, 20, 0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lr_at(20, 1.0, 4, 20, 0.1) == pytest.approx(0.1)
    res = train(tiny_model(), copy_batches(), steps=6, lr=0.01, warmup=2, clip=None)
    assert res.lrs == pytest.approx([lr_at(s, 0.01, 2, 6) for s in range(6)])


def test_accumulation_equals_one_big_batch():
    big = copy_batches(batch=8)

    def half_batches(i):  # micro-batch i is half of big batch i // 2
        x, y = big(i // 2)
        sl = slice(0, 4) if i % 2 == 0 else slice(4, 8)
        return x[sl], y[sl]
    # every sequence has the same number of counted targets, so the mean of means is the mean
    a, b = tiny_model(), tiny_model()
    ra = train(a, big, steps=3, lr=1e-3, clip=1.0)
    rb = train(b, half_batches, steps=3, lr=1e-3, clip=1.0, accum=2)
    assert rb.losses == pytest.approx(ra.losses, rel=1e-5)
    assert rb.grad_norms == pytest.approx(ra.grad_norms, rel=1e-4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_clip_strategies_are_applied():
    res = train(tiny_model(), copy_batches(), steps=4, clip=1e-3)
    assert res.clipped_fraction == 1.0 and max(res.clipped_norms) <= 1e-3 * (1 + 1e-5)
    res = train(tiny_model(), copy_batches(), steps=4, clip=None)
    assert res.clipped_fraction == 0.0 and res.clipped_norms == res.grad_norms
    res = train(tiny_model(), copy_batches(), steps=2, clip="value", clip_threshold=1e-4)
    assert all(res.clipped)
    seen = []
    res = train(tiny_model(), copy_batches(), steps=2, clip=lambda ps: seen.append(len(ps)))
    assert seen == [len(list(tiny_model().parameters()))] * 2
    res = train(tiny_model(), copy_batches(), steps=2, per_layer_norms=True)
    assert set(res.layer_norms) == {"embed", "blocks.0", "blocks.1", "norm"}
    assert all(len(v) == 2 for v in res.layer_norms.values())


def test_nonfinite_loss_stops_the_run_and_is_reported():
    def poison(params):
        for p in params:
            p.grad.fill_(float("nan"))
    res = train(tiny_model(), copy_batches(), steps=10, clip=poison)
    assert res.diverged and res.steps_done == 2 and math.isnan(res.losses[-1])


def test_get_batch_sees_micro_batch_indices():
    seen = []
    get = copy_batches()
    train(tiny_model(), lambda i: seen.append(i) or get(i), steps=3, accum=2)
    assert seen == list(range(6))


def test_crash_then_resume_gives_bit_identical_losses(tmp_path):
    ckpt = tmp_path / "run" / "ckpt.pt"
    get = copy_batches()
    reference = train(tiny_model(dropout=0.1), get, steps=6, lr=3e-3, warmup=2, seed=7)

    def crashing(i):
        if i == 4:
            raise KeyboardInterrupt("power cut")
        return get(i)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(dropout=0.1), crashing, steps=6, lr=3e-3, warmup=2, seed=7,
              checkpoint_path=ckpt, checkpoint_every=2)
    assert load_checkpoint(ckpt)["step"] == 4
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint, not from here
    resumed = train(tiny_model(seed=99, dropout=0.1), get, steps=6, lr=3e-3, warmup=2, seed=7,
                    checkpoint_path=ckpt, resume=True)
    assert resumed.losses == reference.losses  # exact, not approximate
    assert resumed.grad_norms == reference.grad_norms and resumed.steps_done == 6


class Wrapper(torch.nn.Module):
    """Holds a model as ``.module``, as data-parallel wrappers do."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def test_a_wrapped_model_checkpoints_its_own_names_and_resumes_unwrapped(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    get = copy_batches()
    reference = train(tiny_model(), get, steps=4, lr=3e-3, seed=7)
    train(Wrapper(tiny_model()), get, steps=4, lr=3e-3, seed=7, checkpoint_path=ckpt, checkpoint_every=2)
    saved = load_checkpoint(ckpt)["model"]
    assert set(saved) == set(tiny_model().state_dict())  # no "module." prefix
    resumed = train(tiny_model(seed=5), get, steps=4, lr=3e-3, seed=7, checkpoint_path=ckpt, resume=True)
    assert resumed.losses == reference.losses


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_checkpoint_loads_only_plain_data(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "obj": TrainResult()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(path)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"warmup": 99}, "warmup"), ({"weight_decay": -1.0}, "weight_decay"), ({"accum": 0}, "accum"),
    ({"min_lr_ratio": 2.0}, "min_lr_ratio"), ({"checkpoint_every": 0, "checkpoint_path": "x"}, "checkpoint_every"),
    ({"resume": True}, "checkpoint_path"), ({"checkpoint_every": 2}, "checkpoint_path"),
    ({"clip": "sometimes"}, "clip strategy"), ({"clip": "norm", "clip_threshold": -1.0}, "threshold"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        train(tiny_model(), copy_batches(), **args)


def test_bad_types_and_missing_checkpoint(tmp_path):
    with pytest.raises(TypeError, match="model"):
        train("gpt", copy_batches(), steps=1)
    with pytest.raises(TypeError, match="get_batch"):
        train(tiny_model(), [1, 2], steps=1)
    with pytest.raises(TypeError, match="clip"):
        resolve_clip([1.0])
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        train(tiny_model(), copy_batches(), steps=1, checkpoint_path=tmp_path / "none.pt", resume=True)


def test_progress_bar_can_be_forced_on(capsys):
    train(tiny_model(), copy_batches(), steps=2, progress=True)
    assert "train" in capsys.readouterr().err


KILL_WHILE_SAVING = """
import sys, torch
from ctxlab.train import save_checkpoint
path = sys.argv[1]
big = {"w": torch.randn(4_000_000)}  # 16 MB: each save takes a while
print("saving", flush=True)
while True:
    save_checkpoint(path, big)
"""


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 7, "w": torch.ones(3)})
    proc = subprocess.Popen([sys.executable, "-c", KILL_WHILE_SAVING, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    time.sleep(1.5)  # several saves are under way or done
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    state = load_checkpoint(path)  # whatever save was interrupted, the file is a whole checkpoint
    assert ("step" in state and state["step"] == 7) or state["w"].numel() == 4_000_000
