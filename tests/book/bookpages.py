"""The book's pages as a reader's browser gets them, offline, driven by Playwright.

Chromium is Debian's (``executable_path``; Playwright downloads no browser). A ``Tab`` answers the
pages' requests to jsDelivr from the npm packages under ``.browser/`` (installed by ``make browserdeps``),
blocks and records every other request that would leave the machine, and records the browser's errors:
exceptions, console errors, failed requests and error responses. Beside it: checking links against the
built files.
"""
from __future__ import annotations

import functools
import html.parser
import json
import mimetypes
import os
import re
import shutil
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NPM = ROOT / ".browser" / "npm"
CDN = "https://cdn.jsdelivr.net/npm/"
# Without the background-networking flags Chromium keeps calling home, refused by a closed network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
WIDTH = 1280  # the reader's window

# Console errors that come from the book's toolchain and that a page cannot fix, each with why it is
# harmless. Anything else the browser reports as an error fails the test.
KNOWN_NOISE = [
    (r"Identifier 'THEBE_JS_URL' has already been declared",
     "jupyter-book 1 emits sphinx-thebe's configuration script twice; thebe is not used"),
    (r"reading 'Queue'",
     "html-manager 1.0 typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue) while the page "
     "runs MathJax 3; the label text is set before that call"),
    (r"@jupyter-widgets/html-manager/dist/[0-9a-f]{20}\.(woff2?|ttf|eot|svg)",
     "html-manager resolves its Font Awesome files against the page instead of the CDN; the book's widgets "
     "show no icons"),
]


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or a ``CHROMIUM`` override), or None when not installed."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.access(path, os.X_OK) else None


def _package_file(url: str) -> tuple[Path | None, str]:
    """The local file for a jsDelivr npm URL, or None and why not."""
    rest = urllib.parse.urlsplit(url).path.removeprefix("/npm/")
    parts = rest.split("/")
    n = 2 if parts[0].startswith("@") else 1
    spec, path = "/".join(parts[:n]), "/".join(parts[n:])
    name, _, wanted = spec.rpartition("@")
    meta = NPM / name / "package.json"
    if not name or not meta.exists():
        return None, f"{spec} is not under .browser/ (add it to BROWSER_JS in the Makefile)"
    have = json.loads(meta.read_text())["version"]
    if have != wanted and not have.startswith(wanted + "."):
        return None, f"the page asks for {spec}, .browser/ has {name}@{have} (run make browserdeps)"
    file = NPM / name / path
    return (file, "") if file.is_file() else (None, f"{path} is not in the npm package {name}@{have}")


class Tab:
    """A fresh browser context and page per test, so nothing of the previous page leaks into the checks."""

    def __init__(self, browser, base: str):
        self.base = base
        self.errors: list[str] = []      # exceptions, console errors, failed loads
        self.offline: list[str] = []     # requests that would have left the machine
        self.context = browser.new_context(viewport={"width": WIDTH, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda err: self.errors.append(f"exception: {err}"))
        self.page.on("console", self._on_console)
        self.page.on("requestfailed", self._on_failed)
        self.page.on("response", self._on_response)

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base):
            route.continue_()
            return
        if url.startswith(CDN):
            file, why = _package_file(url)
            if file is not None:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                route.fulfill(status=200, body=file.read_bytes(),
                              headers={"Content-Type": kind, "Access-Control-Allow-Origin": "*"})
                return
            self.offline.append(f"{url}: {why}")
        else:
            self.offline.append(url)
        route.abort("blockedbyclient")

    def _on_console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text} ({message.location.get('url', '')})")

    def _on_failed(self, request) -> None:
        failure = request.failure or ""
        if "BLOCKED_BY_CLIENT" not in failure:  # blocked ones are reported as leaving the machine
            self.errors.append(f"failed request {request.url}: {failure}")

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status} for {response.url}")

    def unexplained_errors(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(rx, e) for rx, _ in KNOWN_NOISE)]

    def close(self) -> None:
        self.context.close()


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.names.add(value)


@functools.lru_cache(maxsize=None)
def anchors_of(file: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(file.read_text(errors="replace"))
    return frozenset(parser.names)


def broken_internal_links(hrefs: list[str], base: str, root: Path) -> list[str]:
    """Links into the site (``base``) whose file or #anchor does not exist under ``root``."""
    broken = []
    for href in sorted(set(hrefs)):
        if not href.startswith(base):
            continue
        parts = urllib.parse.urlsplit(href)
        rel = urllib.parse.unquote(parts.path)[1:]
        file = root / rel
        if rel == "" or rel.endswith("/"):
            file = file / "index.html"
        if not file.is_file():
            broken.append(f"{href}: no file {file.relative_to(root)}")
            continue
        fragment = urllib.parse.unquote(parts.fragment)
        if fragment and file.suffix == ".html" and fragment not in anchors_of(file):
            broken.append(f"{href}: no anchor #{fragment} in {file.relative_to(root)}")
    return broken
