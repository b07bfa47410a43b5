"""A freshly executed notebook passes nbval twice in a row: its stored outputs are reproducible.

Run on the chapters whose cells are cheap (the planner chapter and the GPU appendix); the heavier
chapters get the same check from nbval over their committed outputs on every test run.
"""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["09_applications_faq.ipynb", "10_gpu_appendix.ipynb"])
def test_fresh_execution_then_nbval_twice(tmp_path, name):
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(ROOT / "book" / name, book / name)
    if (ROOT / "book" / "data").exists():
        shutil.copytree(ROOT / "book" / "data", book / "data")
    jupyter = [sys.executable, "-m", "jupyter"]
    subprocess.run(jupyter + ["execute", "--inplace", str(book / name)], check=True, capture_output=True, timeout=600)
    for attempt in range(2):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                               "--nbval-current-env", "--nbval-sanitize-with", str(ROOT / "nbval_sanitize.cfg"),
                               str(book / name)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, f"run {attempt + 1}:\n{proc.stdout[-3000:]}"
