"""What a reader on Colab meets: the install cell of every notebook, and a fresh environment running it.

Colab comes with torch, numpy, matplotlib, ipywidgets and a kernel, but not ctxlab. The simulation
builds such an environment (a new virtual environment that sees this interpreter's packages, except
ctxlab), runs the notebook's own install cell with the repository URL swapped for a copy of this
checkout, then the notebook's next code cell, and checks that ``import ctxlab`` found the fresh copy.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import urllib.parse
from pathlib import Path

import nbformat
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
PIP_GIT = re.compile(r"""%pip install[^\n]*?["']?git\+(?P<url>https://[^"'\s@]+?)(?:\.git)?(?:@(?P<ref>[^"'\s#]+))?["'\s]""")


def repository() -> tuple[str, str]:
    """The repository URL (no trailing .git or /) and branch that _config.yml gives the launch buttons."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", "main")


def install_cell(path: Path) -> str:
    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    return cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_installs_the_repository_of_config(path: Path):
    url, branch = repository()
    source = install_cell(path)
    match = PIP_GIT.search(source + "\n")
    assert match, f"{path.name}: the first code cell has no `%pip install git+https://...`:\n{source}"
    assert match["url"] == url, f"{path.name} installs from {match['url']}, _config.yml names {url}"
    # one revision for the page, the notebook Colab opens (blob/<branch>), the package and its data
    # (raw/<branch>): the cell names the branch rather than leaving it to the repository's default
    assert match["ref"] == branch, f"{path.name} installs @{match['ref']}, the book's branch is {branch}"
    assert re.search(r"^\s*import ctxlab", source, re.M) and "except ImportError" in source, \
        f"{path.name}: the install cell must only install when `import ctxlab` fails"


def test_config_repository_is_a_github_repository():
    url, _ = repository()
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "github.com" and len(parts.path.strip("/").split("/")) == 2, \
        f"repository.url must be https://github.com/OWNER/NAME for the Colab button, got {url}"


def test_data_fetch_uses_the_repository_of_config():
    """Chapters 6 and 8 on Colab fetch their stored data from the same repository and branch."""
    from ctxlab.book_files import REPOSITORY_RAW

    url, branch = repository()
    owner_name = urllib.parse.urlsplit(url).path.strip("/")
    assert REPOSITORY_RAW == f"https://raw.githubusercontent.com/{owner_name}/{branch}/book"


# -- the fresh reader -------------------------------------------------------------------------------

def checkout_copy(dest: Path) -> Path:
    """The files git tracks or would track (committed or not), as a clone would have them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def colab_like_venv(dest: Path) -> Path:
    """A new virtual environment that sees this interpreter's packages as preinstalled, but not ctxlab.

    The packages come in through a .pth line, which adds the folder to sys.path without running the
    .pth files inside it; so the editable ctxlab of the development environment stays invisible.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=120)
    python = dest / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    preinstalled = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "preinstalled.pth").write_text("\n".join(preinstalled) + "\n")
    spec = dest / "share" / "jupyter" / "kernels" / "reader"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (reader)", "language": "python"}))
    return python


@pytest.mark.slow
def test_fresh_reader_runs_the_install_cell_then_the_chapter(tmp_path: Path):
    notebook = NOTEBOOKS[0]
    url, _ = repository()
    source = checkout_copy(tmp_path / "ctxlab-checkout")
    python = colab_like_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    before = subprocess.run([str(python), "-c", "import ctxlab"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert before.returncode != 0, "ctxlab is importable in the fresh environment before the install cell ran"

    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    install = re.sub(r"git\+" + re.escape(url) + r"(\.git)?(@[^\"'\s]+)?", str(source), cells[0].source)
    assert str(source) in install, f"could not swap the repository URL in {notebook.name}'s install cell"
    check = "import ctxlab\nprint('CTXLAB_FILE=' + ctxlab.__file__)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(install), nbformat.v4.new_code_cell(cells[1].source),
                                         nbformat.v4.new_code_cell(check)])
    workdir = tmp_path / "content"   # Colab's working folder; not the checkout, so `import ctxlab` cannot cheat
    workdir.mkdir()
    km = KernelManager(kernel_name="reader",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(python.parents[1] / "share/jupyter/kernels")]))
    NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(workdir)}}).execute(env=env)

    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs if o.get("output_type") == "stream")
    found = Path(printed.split("CTXLAB_FILE=")[1].strip())
    assert found.is_relative_to(python.parents[1]), f"import ctxlab found {found}, not the fresh install in the venv"
    assert not found.is_relative_to(ROOT), f"import ctxlab found the development checkout: {found}"
    errors = [o for c in nb.cells for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
