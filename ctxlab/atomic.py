"""Files written whole or not at all: a temporary file beside the target, fsync, then rename.

A reader (or a run resumed after a crash) sees either the previous file or the new one, never
half of one; a write that fails removes its temporary file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: object, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, atomically (values json cannot encode are written with ``str``)."""
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=indent, default=str) + "\n").encode()))
