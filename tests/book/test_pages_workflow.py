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
    assert "-r requirements-book.txt" in runs and "torch" not in runs, "the build needs jupyter-book, not torch"
    uses = [s.get("uses", "") for s in steps]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    branch = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"].get("branch", "main")
    assert trigger["push"]["branches"] == [branch], "publish from the branch that the Colab links name"
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}


def test_make_book_installs_only_what_the_build_needs(tmp_path):
    """On a machine with no virtual environment, `make book` would install requirements-book.txt alone."""
    import subprocess

    dry = subprocess.run(["make", "-n", "book", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "requirements-book.txt" in dry and "torch" not in dry and "requirements.txt" not in dry, dry
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-book.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln] == ["jupyter-book>=1.0.4,<2"]
    assert "-r requirements-book.txt" in (ROOT / "requirements.txt").read_text()  # `make test` installs both


def test_readme_links_the_published_book_and_the_repository_of_config():
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    owner, name = repo.removeprefix("https://github.com/").split("/")
    readme = (ROOT / "README.md").read_text()
    assert f"<https://{owner}.github.io/{name}/>" in readme and f"<{repo}>" in readme
    assert set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme)) == {repo}
