"""Every row of chapter 9's errata table links to the section that shows the correct statement, and every
such link lands on an anchor that exists in the built book."""
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
ERRATA_PAGE = HTML / "book" / "09_applications_faq.html"


class _Page(HTMLParser):
    """The ids a page defines, and the errata table's links: row label ("E1") -> hrefs in that row."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None
        self._first_cell: str | None = None
        self._in_cell = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "tr":
            self._row, self._first_cell = [], None
        elif tag in ("td", "th"):
            self._in_cell += 1
        elif tag == "a" and self._row is not None and attrs.get("href"):
            self._row.append(attrs["href"])

    def handle_data(self, data):
        if self._row is not None and self._in_cell and self._first_cell is None and data.strip():
            self._first_cell = data.strip()

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell -= 1
        elif tag == "tr" and self._row is not None:
            if self._first_cell and re.fullmatch(r"E\d+", self._first_cell):
                self.rows[self._first_cell] = self._row
            self._row = None


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def errata() -> _Page:
    if not ERRATA_PAGE.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("the book is not built: run `make bookcheck` first")
        pytest.skip("the book is not built (make bookcheck)")
    return parse(ERRATA_PAGE)


def test_every_erratum_links_to_the_section_that_shows_it(errata):
    assert sorted(errata.rows, key=lambda e: int(e[1:])) == [f"E{i}" for i in range(1, 19)]
    for erratum, hrefs in errata.rows.items():
        internal = [h for h in hrefs if not h.startswith(("http:", "https:"))]
        anchored = [h for h in internal if "#" in h and not h.split("#", 1)[1].startswith("id")]
        # the references page stands for "cite only what exists" (E18); the rest point into a chapter
        assert anchored or erratum == "E18", f"{erratum} links only to whole pages: {internal}"


def test_every_errata_link_resolves(errata):
    pages: dict[Path, _Page] = {}
    for erratum, hrefs in errata.rows.items():
        for href in hrefs:
            if href.startswith(("http:", "https:", "mailto:")):
                continue
            target, _, fragment = href.partition("#")
            path = (ERRATA_PAGE.parent / target).resolve() if target else ERRATA_PAGE
            assert path.is_file(), f"{erratum}: {href} names a page that is not built"
            if fragment and not fragment.startswith("id"):  # citation anchors are checked by the build
                page = pages.setdefault(path, parse(path))
                assert fragment in page.ids, f"{erratum}: {href} has no anchor #{fragment} in {path.name}"
