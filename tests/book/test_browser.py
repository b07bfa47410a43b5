"""The rendered book in a real browser: every page of _toc.yml, as a reader without a kernel sees it.

The built HTML (``_build/html``) is served on 127.0.0.1 and opened in headless Chromium at 1280 px,
driven by Playwright. The pages load RequireJS, the widget manager and MathJax from jsDelivr; those
requests are answered from the same npm packages installed under ``.browser/`` (``make browserdeps``),
so the page runs offline, with the integrity hashes of ``_config.yml`` checked by the browser. Any other
request leaving the machine is blocked and reported. Besides errors, links and widgets, each page is
checked for what the eye sees: no code input or output scrolls sideways, and no figure is shrunk
below 80% of its drawn width. A screenshot of each page goes to ``artifacts/browser/``.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bookpages import CHROMIUM_FLAGS, NPM, WIDTH, Tab, broken_internal_links, find_chromium

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "artifacts" / "browser"
IN_CI = os.environ.get("CI", "").lower() == "true"

def toc_pages() -> list[str]:
    """Every document of _toc.yml (root, chapters, parts, sections), in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(str(node["file"]))
            for key in ("chapters", "parts", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    pages.append(str(toc["root"]))
    walk(toc)
    return [p.removesuffix(".md").removesuffix(".ipynb") for p in pages]


PAGES = toc_pages()


def source_of(page: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / f"{page}{suffix}").exists():
            return ROOT / f"{page}{suffix}"
    raise FileNotFoundError(f"no .ipynb or .md source for {page} of _toc.yml")


def slug(page: str) -> str:
    return page.replace("/", "__")


# -- fixtures ---------------------------------------------------------------------------------------

def _build_is_current() -> bool:
    config = [ROOT / "_config.yml", ROOT / "_toc.yml", *(ROOT / "_static").glob("*")]
    config_time = max(path.stat().st_mtime for path in config)
    for page in PAGES:
        out = HTML / f"{page}.html"
        if not out.exists() or out.stat().st_mtime < max(config_time, source_of(page).stat().st_mtime):
            return False
    return True


@pytest.fixture(scope="module")
def built_book() -> Path:
    """``_build/html``, built from the stored outputs when missing or older than a source page."""
    HTML.parent.mkdir(exist_ok=True)
    with open(HTML.parent / ".build.lock", "w") as lock:  # the other test worker may be building it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _build_is_current():
            jb = Path(sys.executable).with_name("jupyter-book")
            result = subprocess.run([str(jb), "build", ".", "-W", "-n", "--keep-going"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"book build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return HTML


@pytest.fixture(scope="module")
def server(built_book: Path):
    """A thread-based static server on a free port of 127.0.0.1; yields its base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_book)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _missing_tools() -> list[str]:
    missing = []
    if find_chromium() is None:
        missing.append("Debian's chromium")
    if not (NPM.is_dir() and (ROOT / ".browser" / "installed").exists()):
        missing.append("the widget JavaScript under .browser/")
    return missing


@pytest.fixture(scope="module")
def browser():
    missing = _missing_tools()
    if missing:
        reason = f"{' and '.join(missing)} not installed: run `make browserdeps` (root, Debian and npm registries)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser, server: str):
    t = Tab(browser, server)
    yield t
    t.close()


def open_page(tab: Tab, page: str) -> None:
    """Navigate and wait for what the page renders after load: MathJax and the embedded widgets."""
    tab.page.goto(tab.base + f"{page}.html", wait_until="load")
    tab.page.evaluate("window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true")
    tab.page.evaluate("document.fonts.ready.then(() => true)")
    views = tab.page.evaluate(
        "document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]').length")
    if views:
        try:
            tab.page.wait_for_function(f"document.querySelectorAll('.widget-subarea').length >= {views}",
                                       timeout=20_000)
        except PlaywrightTimeout:
            pass  # reported by the check below with the browser's own errors


# -- checks -----------------------------------------------------------------------------------------

def colab_expected(page: str) -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = urllib.parse.urlsplit(config["repository"]["url"]).path.strip("/").removesuffix(".git")
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{repo}/blob/{config['repository'].get('branch', 'main')}/{page}.ipynb"


PAGE_FACTS = """(() => {
  const text = (el) => el.innerText || el.textContent || '';
  const allowed = (el) => el.closest('.tag_raises-exception') !== null;
  const errors = [...document.querySelectorAll('.output.traceback, .output.error')]
      .filter((el) => !allowed(el)).map((el) => text(el).slice(0, 300));
  const stderr = [...document.querySelectorAll('.output.stderr')].filter((el) => !allowed(el))
      .map(text).filter((t) => /Traceback|Error|Warning/.test(t)).map((t) => t.slice(0, 300));
  const body = text(document.body);
  return {
    errors, stderr,
    traceback_in_text: [...document.querySelectorAll('.cell_output, .output')].filter((el) => !allowed(el))
        .some((el) => text(el).includes('Traceback (most recent call last)')),
    widget_error: /Error (rendering|displaying) widget/.test(body),
    links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
    colab: [...new Set([...document.querySelectorAll('a[href*="colab.research.google.com"]')].map((a) => a.href))],
    download: [...document.querySelectorAll('a.btn-download-source-button')].map((a) => a.href),
    math: document.querySelectorAll('.math').length,
    math_unrendered: [...document.querySelectorAll('.math')].filter((m) => !m.querySelector('mjx-container')).length,
    math_errors: document.querySelectorAll('mjx-merror').length,
    widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
    widgets_rendered: document.querySelectorAll('.widget-subarea').length,
  };
})()"""

IMAGES = """(async () => {
  const imgs = [...document.images];
  imgs.forEach((img) => { img.loading = 'eager'; });
  const settle = (img) => Promise.race([img.decode().catch(() => null),
                                        new Promise((r) => setTimeout(r, 10000))]);
  await Promise.all(imgs.map(settle));
  return {count: imgs.length,
          broken: imgs.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src.slice(0, 120))};
})()"""


# What the eye sees at the window's width: code and printed output that scroll sideways (cut off at the
# column's edge), and figures drawn wider than the column and shrunk to fit (small text).
LAYOUT = """(() => {
  const text = (el) => (el.innerText || el.textContent || '').trim().split('\\n')[0].slice(0, 60);
  const boxes = [...document.querySelectorAll('div.cell_input pre, div.cell_output pre')]
      .filter((el) => el.getClientRects().length > 0);
  const wide = boxes.filter((el) => el.scrollWidth > el.clientWidth + 1)
      .map((el) => `${el.closest('.cell_input') ? 'code' : 'output'} ${el.scrollWidth} > ${el.clientWidth} px: ${text(el)}`);
  const figures = [...document.querySelectorAll('div.cell_output img')]
      .filter((img) => img.naturalWidth > 0 && img.getClientRects().length > 0);
  const shrunk = figures.filter((img) => img.clientWidth < 0.8 * img.naturalWidth)
      .map((img) => `${img.clientWidth} px shown of ${img.naturalWidth} drawn`);
  const searches = [...document.querySelectorAll('.search-button-field')]
      .filter((el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden').length;
  const [page, site] = document.title.split(' \u2014 ');
  return {boxes: boxes.length, wide, figures: figures.length, shrunk, searches, doubled_title: page === site};
})()"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_cleanly_in_a_browser(tab: Tab, page: str):
    started = time.monotonic()
    open_page(tab, page)
    facts = tab.page.evaluate(PAGE_FACTS)
    images = tab.page.evaluate(IMAGES)
    layout = tab.page.evaluate(LAYOUT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(ARTIFACTS / f"{slug(page)}.png"))

    problems = []
    problems += [f"error output: {e}" for e in facts["errors"]]
    problems += [f"stderr output with an error or warning: {e}" for e in facts["stderr"]]
    if facts["traceback_in_text"]:
        problems.append("a traceback is shown in a cell output")
    if facts["widget_error"]:
        problems.append("a widget failed to render")
    if facts["widgets_rendered"] < facts["widget_views"]:
        problems.append(f"{facts['widget_views']} widget views embedded, {facts['widgets_rendered']} rendered")
    problems += [f"image did not load: {src}" for src in images["broken"]]
    if facts["math_unrendered"] or facts["math_errors"]:
        problems.append(f"math: {facts['math_unrendered']} of {facts['math']} not typeset, "
                        f"{facts['math_errors']} TeX errors")
    problems += [f"broken link {b}" for b in broken_internal_links(facts["links"], tab.base, HTML)]
    problems += [f"scrolls sideways at {WIDTH} px: {w}" for w in layout["wide"]]
    problems += [f"figure shrunk below 80% of its width: {f}" for f in layout["shrunk"]]
    if layout["searches"] != 1:
        problems.append(f"{layout['searches']} search fields shown, expected one")
    if layout["doubled_title"]:
        problems.append("the page title repeats the book's title")

    source = source_of(page)
    if source.suffix == ".ipynb":
        expected = colab_expected(page)
        if facts["colab"] != [expected]:
            problems.append(f"Colab links {facts['colab']}, expected exactly [{expected}]")
        tab.page.click(".dropdown-launch-buttons > button")
        if not tab.page.locator(f'a[href="{expected}"]').first.is_visible():
            problems.append("the launch button does not show the Colab link when clicked")
        tab.page.click(".dropdown-launch-buttons > button")
        want = tab.base + f"_sources/{page}.ipynb"
        if facts["download"] != [want]:
            problems.append(f"download links {facts['download']}, expected [{want}]")
        elif (HTML / f"_sources/{page}.ipynb").read_bytes() != source.read_bytes():
            problems.append(f"the downloadable _sources/{page}.ipynb differs from {page}.ipynb")
        tab.page.click(".dropdown-download-buttons > button")
        if not tab.page.locator("a.btn-download-source-button").first.is_visible():
            problems.append("the download button does not show the .ipynb link when clicked")
    elif facts["colab"]:
        problems.append(f"a Colab link on a page with no notebook: {facts['colab']}")

    problems += [f"request left the machine: {u}" for u in tab.offline]
    problems += [f"browser error: {e}" for e in tab.unexplained_errors()]
    assert not problems, f"{page} ({images['count']} images, {layout['boxes']} code and output blocks, " \
        f"{time.monotonic() - started:.1f} s):\n  " + \
        "\n  ".join(problems)


# -- sliders ----------------------------------------------------------------------------------------

def widget_state(page: str) -> dict:
    """The widget state embedded in the built page (empty when the page has none)."""
    text = (HTML / f"{page}.html").read_text()
    m = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))["state"] if m else {}


def slider_pages() -> list[str]:
    """Pages whose notebook shows a slider (its stored widget state has one)."""
    pages = []
    for page in PAGES:
        source = source_of(page)
        if source.suffix == ".ipynb":
            state = json.loads(source.read_text()).get("metadata", {}).get("widgets", {})
            if "IntSliderModel" in json.dumps(state):
                pages.append(page)
    return pages


def test_notebooks_with_a_slider_embed_it_in_their_page(built_book: Path):
    """A notebook that calls precomputed_slider must store widget state, or the page shows no control."""
    for page in PAGES:
        source = source_of(page)
        if source.suffix == ".ipynb" and "precomputed_slider(" in source.read_text():
            assert page in slider_pages(), f"{source.name} calls precomputed_slider but stores no slider state"
            models = {m["model_name"] for m in widget_state(page).values()}
            assert {"IntSliderModel", "StackModel"} <= models, f"{page}.html embeds {sorted(models)}"


SLIDERS = """[...document.querySelectorAll('.widget-slider')].map((s, i) => {
  s.dataset.testIndex = i;
  return {index: i, in_widget: s.closest('.widget-subarea') !== null};
})"""

# What a slider's widget shows apart from its controls: the visible images and text of the views.
SHOWN = """((i) => {
  const s = document.querySelector(`.widget-slider[data-test-index="${i}"]`);
  const area = s.closest('.widget-subarea');
  const controls = '.widget-slider, .widget-dropdown, .widget-readout, .widget-label, select';
  const shown = (el) => !el.closest(controls) && el.getClientRects().length > 0;
  const imgs = [...area.querySelectorAll('img')].filter(shown);
  const texts = [...area.querySelectorAll('*')].filter((el) => el.children.length === 0 && shown(el))
      .map((el) => el.textContent.trim()).filter(Boolean);
  const target = imgs.length ? imgs : [area];
  target[0].scrollIntoView({block: 'center', behavior: 'instant'});
  const rects = target.map((el) => el.getBoundingClientRect());
  const x0 = Math.min(...rects.map((r) => r.left)), y0 = Math.min(...rects.map((r) => r.top));
  const x1 = Math.max(...rects.map((r) => r.right)), y1 = Math.max(...rects.map((r) => r.bottom));
  const select = s.parentElement.querySelector('select');
  return {
    shown: imgs.map((img) => img.src).join(' ') + '|' + texts.join(' '),
    images: imgs.length,
    images_ok: imgs.every((img) => img.complete && img.naturalWidth > 0),
    value: s.querySelector('[role="slider"]').getAttribute('aria-valuenow'),
    max: s.querySelector('[role="slider"]').getAttribute('aria-valuemax'),
    readout: select ? select.selectedIndex : null,
    clip: {x: Math.max(x0, 0), y: Math.max(y0, 0), width: x1 - Math.max(x0, 0),
           height: Math.min(y1, window.innerHeight) - Math.max(y0, 0)},  // in the viewport, once scrolled to
  };
})"""

HANDLE = """((i) => {
  const s = document.querySelector(`.widget-slider[data-test-index="${i}"]`);
  s.scrollIntoView({block: 'center', behavior: 'instant'});
  const h = s.querySelector('.noUi-handle'), hr = h.getBoundingClientRect();
  const t = s.querySelector('.noUi-base').getBoundingClientRect();
  const x = hr.x + hr.width / 2, y = hr.y + hr.height / 2;
  return {point: [x, y, t.x + t.width + 20], hits: h.contains(document.elementFromPoint(x, y))};
})"""


def handle_position(tab: Tab, i: int, timeout: float = 10.0) -> list[float]:
    """Where slider i's handle is, once the layout has settled so that a press there lands on it: the handle
    is on top at that point and two readings 0.2 s apart agree (images loading above would move it)."""
    deadline, previous = time.monotonic() + timeout, None
    while True:
        where = tab.page.evaluate(f"{HANDLE}({i})")
        if where["hits"] and where["point"] == previous:
            return where["point"]
        previous = where["point"] if where["hits"] else None
        assert time.monotonic() < deadline, f"slider {i}: its handle stays covered or moving"
        time.sleep(0.2)


@pytest.mark.parametrize("page", slider_pages())
def test_moving_a_slider_changes_what_is_shown(tab: Tab, page: str):
    open_page(tab, page)
    sliders = tab.page.evaluate(SLIDERS)
    assert sliders, f"{page}: the notebook stores a slider but the page renders none"
    for slider in sliders:
        assert slider["in_widget"], f"{page}: slider {slider['index']} is not inside a rendered widget"
        i = slider["index"]
        before = tab.page.evaluate(f"{SHOWN}({i})")
        picture_before = tab.page.screenshot(clip=before["clip"])
        for _attempt in range(3):  # a drag that lands while the page still lays out is tried again
            x, y, end = handle_position(tab, i)
            tab.page.mouse.move(x, y)
            tab.page.mouse.down()
            tab.page.mouse.move(end, y, steps=8)  # drag the handle to the far right
            tab.page.mouse.up()
            try:
                tab.page.wait_for_function(f"((v) => v.shown !== {json.dumps(before['shown'])} && v.images_ok && "
                                           f"v.value === v.max)({SHOWN}({i}))", timeout=10_000)
                break
            except PlaywrightTimeout:
                pass
        after = tab.page.evaluate(f"{SHOWN}({i})")
        picture_after = tab.page.screenshot(clip=after["clip"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{slug(page)}__slider{i}_moved.png").write_bytes(picture_after)

        assert float(after["value"]) == float(after["max"]) != float(before["value"]), \
            f"{page}: slider {i} did not move to its end ({before['value']} -> {after['value']} of {after['max']})"
        assert after["shown"] != before["shown"], f"{page}: slider {i} moved but the view did not change"
        if after["images"]:
            assert picture_after != picture_before, f"{page}: slider {i} moved but the picture stayed the same"
        assert after["images_ok"], f"{page}: the view shown at the slider's end has an image that did not load"
        if after["readout"] is not None:
            assert after["readout"] == float(after["value"]), f"{page}: the readout does not follow slider {i}"
    assert not tab.offline, f"requests left the machine: {tab.offline}"
    assert not tab.unexplained_errors(), f"browser errors: {tab.unexplained_errors()}"
