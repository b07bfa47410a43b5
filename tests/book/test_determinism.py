"""A freshly executed notebook passes nbval: a second execution reproduces the first one's outputs.

The two executions use different kernel paths, as a reader's machine would: the fresh one runs
under ``ATEN_CPU_CAPABILITY=avx2`` where the CPU has AVX2 (natively elsewhere), nbval under
``default``, the path ``make nbval`` uses. So a printed digit that depends on the kernels fails
here, on the developer's machine, before it reaches a reader's.

One notebook of each kind: real multi-process runs over gloo (chapter 4b, ZeRO on four ranks beside
torch's; chapter 5's rings take twice as long and print only counts and stored figures), a stored
command's results re-checked by live runs of a trained model (the serving part of chapter 8), widgets
and the planner (chapter 9), and a page that reads the GPU results (the appendix). The other chapters, the timing
sweeps of chapters 1 and 2 among them, are compared with their committed outputs by the nbval run of
the whole book (which keeps the test run within its time budget on two cores: chapter 1's fresh
execution here alone took two minutes).
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def fresh_kernel_path() -> dict[str, str]:
    """The environment of the fresh execution: AVX2 kernels where the CPU has them (not the native AVX-512
    path that writes the stored outputs, nor nbval's default path)."""
    native = torch.backends.cpu.get_cpu_capability().upper()
    return {"ATEN_CPU_CAPABILITY": "avx2"} if native.startswith("AVX") else {}


@pytest.mark.parametrize("name", ["04b_model_states.ipynb", "08b_serving.ipynb", "09_applications_faq.ipynb",
                                  "10_gpu_appendix.ipynb"])
def test_fresh_execution_then_nbval(tmp_path, name):
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(ROOT / "book" / name, book / name)
    if (ROOT / "book" / "data").exists():
        shutil.copytree(ROOT / "book" / "data", book / "data")
    jupyter = [sys.executable, "-m", "jupyter"]
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["OMP_NUM_THREADS"] = "1"  # beside the other test worker, one thread each
    subprocess.run(jupyter + ["execute", "--inplace", str(book / name)], check=True, capture_output=True, timeout=600,
                   env={**env, **fresh_kernel_path()}, cwd=book)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                           "--nbval-current-env", "--nbval-sanitize-with", str(ROOT / "nbval_sanitize.cfg"),
                           str(book / name)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**env, "ATEN_CPU_CAPABILITY": "default"})
    assert proc.returncode == 0, proc.stdout[-3000:]
