"""The book's own rules for notebooks: executed, no stored errors, in the table of contents."""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
SKIP_TAGS = {"nbval-skip", "skip-execution"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_has_stored_outputs_or_a_tag(path):
    cells = json.loads(path.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & SKIP_TAGS:
            continue
        assert cell.get("execution_count") is not None, f"{path.name} cell {i} was never executed"
        if "raises-exception" not in tags:
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{path.name} cell {i} stores an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_ctxlab_on_colab(path):
    first_code = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    src = "".join(first_code["source"])
    assert "import ctxlab" in src and "%pip install" in src


def test_every_notebook_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"book/{path.stem}" in toc, f"{path.name} is missing from _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_control_characters_in_cell_sources(path):
    """A lost backslash (\\t in \\text, \\a in \\approx) turns into a control character that breaks the math."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        bad = {hex(ord(ch)) for ch in "".join(cell["source"]) if ord(ch) < 32 and ch != "\n"}
        assert not bad, f"{path.name} cell {i} has control characters {sorted(bad)}"


# A number of 1e-5 or less with one to three significant digits, as a rounding error prints ("6.0e-07",
# "6e-07", "1.23e-07"); a bound ("1e-05") or a value scaled down on purpose ("4.666e-06") is not one.
TINY = re.compile(r"(?<![\w.])-?(?:\d\.\d{1,2}|[2-9])e-(?:0[5-9]|[1-9]\d)\b")
# Compared outputs that print such a number on purpose, each with the reason it is the same everywhere.
TINY_ALLOWED = {
    ("07_math_model.ipynb", "-4.04e-06"): "the relative error of two byte counts: integers on every machine",
}


def _compared_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]))
        elif "text/plain" in out.get("data", {}) and "image/png" not in out["data"]:
            parts.append("".join(out["data"]["text/plain"]))
    return "".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_compared_outputs_print_no_rounding_error_digits(path):
    """A rounding error's digits change with the CPU, the kernel path and the thread count: nbval may compare
    only the bound the cell asserts ("< 1e-5"); the digits belong in a cell tagged nbval-ignore-output."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] != "code" or tags & (SKIP_TAGS | {"nbval-ignore-output"}):
            continue
        tiny = [m for m in TINY.findall(_compared_text(cell)) if (path.name, m) not in TINY_ALLOWED]
        assert not tiny, f"{path.name} cell {i} prints rounding-error digits {tiny} where nbval compares them"


def test_the_rounding_error_check_would_catch_one():
    cell = {"cell_type": "code", "outputs": [{"output_type": "stream", "text": ["max |a - b| = 6.0e-07\n"]}]}
    assert TINY.findall(_compared_text(cell)) == ["6.0e-07"]
    assert TINY.findall("errors 6e-07 and -1.23e-10") == ["6e-07", "-1.23e-10"]
    assert not TINY.findall("norm 4.666e+00, scaled 4.666e-06, within 1e-05, 1.2e-03")


def test_nbval_runs_under_the_portable_kernel_path():
    """make nbval checks the stored (native) outputs under ATEN_CPU_CAPABILITY=default (CONTRIBUTING.md)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "NBVAL_CPU ?= default" in makefile and "ATEN_CPU_CAPABILITY=$(NBVAL_CPU)" in makefile


MAX_LINE = 88  # what the page's code column shows without scrolling (make format keeps to it)


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_lines_fit_the_column(path):
    long = [(i, line) for i, cell in enumerate(_code_cells(path))
            for line in "".join(cell["source"]).splitlines() if len(line) > MAX_LINE]
    assert not long, f"{path.name}: {len(long)} code lines over {MAX_LINE} characters, first {long[0]}"


def _only_asserts(source: str) -> bool:
    import ast

    # an IPython magic becomes ``pass`` at its own indentation, so the cell parses as Python
    lines = [ln[: len(ln) - len(ln.lstrip())] + "pass" if ln.lstrip().startswith(("%", "!")) else ln
             for ln in source.splitlines()]
    body = ast.parse("\n".join(lines)).body
    return bool(body) and all(isinstance(s, ast.Assert) for s in body)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_of_asserts_are_folded(path):
    """A reader sees prose, results and plots; the checks behind them are one click away."""
    for i, cell in enumerate(_code_cells(path)):
        if _only_asserts("".join(cell["source"])):
            assert "hide-input" in cell.get("metadata", {}).get("tags", []), f"{path.name} code cell {i}"
