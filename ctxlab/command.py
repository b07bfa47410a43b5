"""Command-line entries: a bad argument is one line naming it and exit status 2, never a traceback.

Every ``python -m ctxlab...`` entry parses its options with argparse, then runs its body inside
``command_errors(parser)``: the ValueError or TypeError by which the library refuses a bad value
(each names its parameter) and an OSError on the output path become argparse's usage line and
``error: ...``. ``CTXLAB_TRACEBACK=1`` lets them through for debugging. ``check_output`` refuses
an output path whose folder cannot be written before any work is done.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def command_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        if os.environ.get("CTXLAB_TRACEBACK"):
            raise
        parser.error(str(err) or type(err).__name__)


def check_output(parser: argparse.ArgumentParser, path: "str | Path | None", flag: str = "--out",
                 folder: bool = False) -> None:
    """Exit with a usage error unless ``path`` (a file, or with ``folder=True`` a folder) can be written:
    its folder is created if missing (as the command would) and a scratch file is made and removed there."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not folder:
        parser.error(f"{flag} must name a file, got the folder {str(path)!r}")
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        parser.error(f"{flag} must be a path this user can write, got {str(path)!r} ({err.strerror or err})")
