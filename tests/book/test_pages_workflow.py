"""The GitHub Pages workflow builds the book the way `make book` does and publishes that folder."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_pages_workflow_builds_like_make_and_publishes_the_html():
    workflow = yaml.safe_load((ROOT / ".github/workflows/book.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    runs = "\n".join(s.get("run", "") for s in steps)
    make_build = re.search(r"^BUILD := \$\(VENV\)/bin/(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert make_build in runs, f"the workflow does not run `{make_build}`"
    torch_at, requirements_at = runs.index("torch=="), runs.index("-r requirements.txt")
    assert torch_at < requirements_at, "install the CPU torch wheel before requirements.txt"
    assert "whl/cpu" in runs[torch_at:requirements_at], "the workflow must take torch's CPU build"
    uses = [s.get("uses", "") for s in steps]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    branch = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"].get("branch", "main")
    assert trigger["push"]["branches"] == [branch], "publish from the branch that the Colab links name"
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
