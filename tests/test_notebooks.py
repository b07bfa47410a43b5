"""The book's own rules for notebooks: executed, no stored errors, in the table of contents."""
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
