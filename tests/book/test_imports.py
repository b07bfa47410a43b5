"""Chapters import from few, memorable places, and each name the same way in every chapter.

The rule (``ctxlab/__init__.py``): the library from ``ctxlab``, parallelism from ``ctxlab.parallel``,
a chapter's experiments from ``ctxlab.bench.<name>``, figures from ``ctxlab.plots`` / ``ctxlab.widgets``.
"""
import ast
import json
import pathlib

import pytest

import ctxlab
import ctxlab.parallel

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
MOST_MODULES = 6  # ctxlab, a technique or two, the chapter's bench, plots, widgets


def ctxlab_imports(path: pathlib.Path) -> list[tuple[str, str]]:
    """(module, name) for every ``from ctxlab... import name`` in the notebook's code cells."""
    found = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = [ln for ln in "".join(cell["source"]).splitlines() if not ln.lstrip().startswith(("%", "!"))]
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ctxlab":
                found += [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "ctxlab"]
    return found


def by_name(paths: list[pathlib.Path]) -> dict[str, set[str]]:
    places: dict[str, set[str]] = {}
    for path in paths:
        for module, name in ctxlab_imports(path):
            if name:
                places.setdefault(name, set()).add(module)
    return places


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_chapter_imports_from_few_modules(path):
    modules = {m for m, _ in ctxlab_imports(path)}
    assert len(modules) <= MOST_MODULES, f"{path.name} imports from {sorted(modules)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_front_door_names_come_from_the_front_door(path):
    for module, name in ctxlab_imports(path):
        if name in ctxlab.__all__ and module != "ctxlab":
            pytest.fail(f"{path.name}: import {name} from ctxlab, not {module}")
        if name in ctxlab.parallel.__all__ and name not in ctxlab.__all__ and module != "ctxlab.parallel":
            pytest.fail(f"{path.name}: import {name} from ctxlab.parallel, not {module}")


def test_each_name_is_imported_one_way_in_every_chapter():
    mixed = {name: sorted(mods) for name, mods in by_name(NOTEBOOKS).items() if len(mods) > 1}
    assert not mixed, mixed


def test_the_check_sees_a_name_imported_two_ways(tmp_path):
    cells = [{"cell_type": "code", "source": [src]} for src in
             ("from ctxlab.measure import median_ms", "from ctxlab import median_ms")]
    (tmp_path / "a.ipynb").write_text(json.dumps({"cells": cells}))
    assert by_name([tmp_path / "a.ipynb"]) == {"median_ms": {"ctxlab", "ctxlab.measure"}}
