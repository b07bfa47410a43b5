"""Every command-line entry turns a bad argument into one line naming it, and exit status 2."""
import subprocess
import sys

import pytest

from ctxlab.bench.__main__ import SWEEPS

BAD = [
    (["ctxlab.bench", "attention", "--max-len", "0"], "--max-len"),
    (["ctxlab.bench", "causal_skip", "--chunk", "0"], "chunk"),
    (["ctxlab.bench", "clipping", "--seq-len", "1"], "--seq-len"),
    (["ctxlab.bench", "memory", "--budget-mib", "-1"], "--budget-mib"),
    (["ctxlab.bench", "pipeline", "--stages", "9"], "n_stages"),
    (["ctxlab.bench", "positions", "--samples", "0"], "samples"),
    (["ctxlab.bench", "recurrent", "--seeds", "0"], "--seeds"),
    (["ctxlab.bench", "ring", "--world-size", "0"], "--world-size"),
    (["ctxlab.bench", "stability", "--seeds", "0"], "seeds"),
    (["ctxlab.bench", "serving", "--samples", "0"], "samples"),
    (["ctxlab.bench", "zero", "--offload", "disk"], "offload"),
    (["ctxlab.extend", "train", "--steps", "0"], "--steps"),
    (["ctxlab.extend", "train", "--out", "/proc/nope"], "--out"),
    (["ctxlab.extend", "retrieval", "--seeds", "0"], "--seeds"),
    (["ctxlab.casestudy", "--quick", "--out", "/proc/nope"], "--out"),
    (["ctxlab.gpucheck", "--dry-run", "--out", "/"], "--out"),
    (["ctxlab.planner", "--model", "llama-9"], "model"),
]


def test_every_sweep_is_checked():
    assert {args[1] for args, _ in BAD if args[0] == "ctxlab.bench"} == set(SWEEPS)


@pytest.mark.parametrize("args, names", BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_bad_argument_is_one_line_and_status_2(args, names, tmp_path):
    run = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and names in run.stderr.splitlines()[-1], run.stderr
    assert not list(tmp_path.iterdir())  # nothing written before failing
