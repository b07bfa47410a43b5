"""The files chapters load (stored results, small checkpoints): found in a checkout, or fetched once.

In a clone they sit under ``book/``. A notebook opened on its own (on Colab, say) has only the
installed package, so the files it names are downloaded from the book's repository into a cache
folder the first time, each written atomically (``atomic.atomic_write``: never half a file).
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from typing import Sequence

from .atomic import atomic_write

REPOSITORY_RAW = "https://raw.githubusercontent.com/ctxlab/ctxlab/main/book"
CHECKOUT_BOOK = Path(__file__).resolve().parents[1] / "book"


def cache_dir() -> Path:
    """Where fetched files go: ``$CTXLAB_CACHE``, else ``~/.cache/ctxlab``."""
    return Path(os.environ.get("CTXLAB_CACHE", Path.home() / ".cache" / "ctxlab"))


def book_folder(relative: str, files: Sequence[str], base_url: str = REPOSITORY_RAW) -> Path:
    """The folder ``book/<relative>`` holding every one of ``files``: beside the notebook (its working
    folder is ``book/``), in the checkout the package was imported from, or else fetched to the cache."""
    if not files or any(Path(f).is_absolute() or ".." in Path(f).parts for f in files):
        raise ValueError(f"files must be a non-empty list of names inside book/{relative}, got {list(files)!r}")
    for root in (Path.cwd(), CHECKOUT_BOOK):
        folder = root / relative
        if all((folder / f).is_file() for f in files):
            return folder
    folder = cache_dir() / relative
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = folder / name
        if target.is_file():
            continue
        url = f"{base_url.rstrip('/')}/{relative.strip('/')}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                atomic_write(target, lambda f: shutil.copyfileobj(response, f))
        except OSError as err:
            raise FileNotFoundError(f"book/{relative}/{name} is neither here nor in a checkout, and fetching "
                                    f"{url} failed: {err}") from err
    return folder
