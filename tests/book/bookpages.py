"""The book's pages as a reader's browser gets them, offline.

A ``Tab`` answers the pages' requests to jsDelivr from the npm packages under ``.browser/`` (installed by
``make browserdeps``), blocks and records every other request that would leave the machine, and records the
browser's errors. Beside it: acting like a reader (click) and checking links against the built files.
"""
from __future__ import annotations

import base64
import functools
import html.parser
import json
import mimetypes
import re
import urllib.parse
from pathlib import Path

from cdp import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
NPM = ROOT / ".browser" / "npm"
CDN = "https://cdn.jsdelivr.net/npm/"

# Console errors that come from the book's toolchain, not from the book, each with why it is harmless.
# Anything else the browser reports as an error fails the test.
KNOWN_NOISE = [
    (r"Identifier 'THEBE_JS_URL' has already been declared",
     "jupyter-book 1 emits sphinx-thebe's configuration script twice; thebe is not used"),
    (r"reading 'Queue'",
     "html-manager 1.0 typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue) while the page "
     "runs MathJax 3; the label text is set before that call"),
    (r"@jupyter-widgets/html-manager/dist/[0-9a-f]{20}\.(woff2?|ttf|eot|svg)",
     "html-manager resolves its Font Awesome files against the page instead of the CDN; the book's widgets "
     "show no icons"),
    (r"/favicon\.ico", "the browser asks for /favicon.ico; the book has none"),
    (r"Got invalid theme mode", "pydata-sphinx-theme's message on a first visit with no stored theme"),
]


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
    """A fresh tab per page, so nothing of the previous page leaks into the checks."""

    def __init__(self, browser: Browser, base: str):
        self.browser, self.base = browser, base
        self.errors: list[str] = []      # exceptions, console errors, failed loads
        self.offline: list[str] = []     # requests that would have left the machine
        self.page = Page(browser)
        self.session = self.page.session
        for event, handler in (("Fetch.requestPaused", self._on_request),
                               ("Runtime.exceptionThrown", self._on_exception),
                               ("Runtime.consoleAPICalled", self._on_console),
                               ("Log.entryAdded", self._on_log)):
            browser.on(event, handler)
        self.page.call("Log.enable")
        self.page.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})

    def _mine(self, session: str | None) -> bool:
        return session == self.session

    def _on_request(self, params: dict, session: str | None) -> None:
        if not self._mine(session):
            return
        url, rid = params["request"]["url"], params["requestId"]
        if url.startswith(self.base):
            self.browser.send("Fetch.continueRequest", {"requestId": rid}, session)
            return
        if url.startswith(CDN):
            file, why = _package_file(url)
            if file is not None:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                headers = [{"name": "Content-Type", "value": kind},
                           {"name": "Access-Control-Allow-Origin", "value": "*"}]
                self.browser.send("Fetch.fulfillRequest", {
                    "requestId": rid, "responseCode": 200, "responseHeaders": headers,
                    "body": base64.b64encode(file.read_bytes()).decode()}, session)
                return
            self.offline.append(f"{url}: {why}")
        else:
            self.offline.append(url)
        self.browser.send("Fetch.failRequest", {"requestId": rid, "errorReason": "BlockedByClient"}, session)

    def _on_exception(self, params: dict, session: str | None) -> None:
        if self._mine(session):
            details = params["exceptionDetails"]
            self.errors.append("exception: " + (details.get("exception", {}).get("description") or details["text"]))

    def _on_console(self, params: dict, session: str | None) -> None:
        if self._mine(session) and params["type"] == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.errors.append(f"console.error: {args}")

    def _on_log(self, params: dict, session: str | None) -> None:
        entry = params["entry"]
        if self._mine(session) and entry["level"] == "error" and "ERR_BLOCKED_BY_CLIENT" not in entry["text"]:
            self.errors.append(f"{entry['text']} ({entry.get('url', '')})")

    def unexplained_errors(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(rx, e) for rx, _ in KNOWN_NOISE)]

    def close(self) -> None:
        for event, handler in (("Fetch.requestPaused", self._on_request),
                               ("Runtime.exceptionThrown", self._on_exception),
                               ("Runtime.consoleAPICalled", self._on_console),
                               ("Log.entryAdded", self._on_log)):
            self.browser.off(event, handler)
        self.page.close()


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


def click(tab: Tab, selector: str) -> None:
    box = tab.page.evaluate(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
        el.scrollIntoView({{block: 'center', behavior: 'instant'}}); const r = el.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
    for kind in ("mousePressed", "mouseReleased"):
        tab.page.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "buttons": 1 if kind == "mousePressed" else 0,
                                                   "clickCount": 1})


def visible_link(tab: Tab, selector: str) -> bool:
    return bool(tab.page.evaluate(f"""(() => {{ const a = document.querySelector({json.dumps(selector)});
        if (!a) return false; const r = a.getBoundingClientRect();
        return r.width > 0 && r.height > 0 && getComputedStyle(a).visibility !== 'hidden'; }})()"""))
