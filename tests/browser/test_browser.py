"""The built book as a reader opens it: every page of the HTML book in headless Chromium.

Each page of the built book (``BOOK_HTML``, default ``_build/html``) is opened from disk
(``file://``, as a reader opens ``_build/html/index.html``) in headless Chromium with every host
name unresolvable, so the test sees what a reader without internet sees. For each page it
asserts that

- math is typeset: every ``math`` element Sphinx wrote holds MathJax output (``mjx-container``),
  MathJax reported no TeX error, and no raw ``\\(``, ``\\[``, ``$$``, ``\\begin{`` or ``$x_i$``
  is left in the visible text (code excluded);
- every image loaded (``naturalWidth > 0``);
- every internal link resolves: the target file exists inside the book and a ``#fragment`` is an
  ``id`` (or anchor ``name``) of the target page;
- on a chapter page, equations, figures and theorems are numbered in that chapter: (3.4),
  "Figure 3.1", "Proposition 3.2";
- the page requested nothing from the network and the browser logged no error (``SEVERE``);
- every character of the visible text has a glyph in the page's fonts or the system's fallback
  fonts: no "tofu" (the empty box a browser draws for a character no font has, e.g. an emoji
  on a machine without an emoji font). Each distinct non-ASCII character is drawn on a canvas in
  its element's font and compared, pixel by pixel, with characters no font can have (unassigned
  code points), which the browser draws as that same box;
- at a 1280 px wide window, code and printed outputs fit the text column (long lines wrap) and
  no other preformatted block is cut off (it fits or scrolls).

A full-page screenshot of every page goes to ``BOOK_SCREENSHOTS`` (default ``_build/screenshots``)
for review. The downloadable notebook of each chapter (the theme's ``.ipynb`` button) must be a
valid notebook with outputs.

The test needs Chromium and its WebDriver (Debian: ``apt-get install chromium chromium-driver``);
without them it skips with that hint, except under CI (``CI=true``), where it fails. Run it with
``make browser-test`` after ``make book``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html")).resolve()
SHOTS = Path(os.environ.get("BOOK_SCREENSHOTS", HTML.parent / "screenshots")).resolve()
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
WIDTH, HEIGHT = 1280, 900
PAGE_TIMEOUT_S = 60
NOT_PAGES = {"_static", "_sources", "_images", "reports", "_panels_static"}
RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$", "\\begin{")
# inline TeX left between single dollars: "$\\|A\\|_2$", "$x_i$", "$N^{-1/2}$"
RAW_DOLLAR_TEX = re.compile(r"\$[^$\n]{0,80}?[\\^_{}][^$\n]{0,80}?\$")
NO_BOOK = f"no built book at {HTML} (run `make book` first, or set BOOK_HTML)"
INSTALL_HINT = (
    "Chromium and its WebDriver are needed: on Debian/Ubuntu "
    "`sudo apt-get install chromium chromium-driver` (or `make browser-test` as root, which "
    "installs them); elsewhere install Chromium or Chrome with a matching chromedriver and set "
    "CHROMIUM=/path/to/chrome CHROMEDRIVER=/path/to/chromedriver."
)


def _unavailable(reason: str) -> None:
    """Skip on a reader's machine, fail under CI: CI must run the browser test."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser test may not skip)")
    pytest.skip(reason)


def _pages() -> list[Path]:
    if not (HTML / "index.html").is_file():
        return []
    return sorted(
        p
        for p in HTML.rglob("*.html")
        if not NOT_PAGES.intersection(p.relative_to(HTML).parts[:-1])
    )


PAGES = _pages()


def _page_id(page: Path | None) -> str:
    return "no-book" if page is None else page.relative_to(HTML).as_posix()


class _Anchors(HTMLParser):
    """Collects every ``id`` and anchor ``name`` of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


@cache
def _anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def _find(env: str, names: list[str], extra: list[str]) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in extra if Path(p).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium at 1280 x 900 with no name resolution (an offline reader)."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed: `.venv/bin/pip install -e '.[test]'`")
    chrome = _find("CHROMIUM", ["chromium", "chromium-browser", "google-chrome"], [])
    driver = _find("CHROMEDRIVER", ["chromedriver"], ["/usr/lib/chromium/chromedriver"])
    if chrome is None or driver is None:
        _unavailable(f"Chromium or chromedriver not found. {INSTALL_HINT}")
    # Selenium Manager must never download a driver
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        # every host name fails to resolve: the page must not need the network
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(arg)
    options.set_capability(
        "goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"}
    )
    try:
        # an explicit driver path keeps Selenium Manager from downloading anything
        drv = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except (WebDriverException, OSError) as exc:  # a broken install: as a missing one
        _unavailable(f"Chromium did not start ({exc}). {INSTALL_HINT}")
    drv.set_page_load_timeout(PAGE_TIMEOUT_S)
    drv.set_script_timeout(PAGE_TIMEOUT_S)
    yield drv
    drv.quit()


# One call after the page loaded: wait for MathJax's first typeset, then report the page.
_INSPECT = r"""
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
const ready = (mj && mj.startup && mj.startup.promise) ? mj.startup.promise : Promise.resolve();
ready.then(() => 'ok', (e) => 'MathJax startup failed: ' + e).then((mathjax) => {
  const math = Array.from(document.querySelectorAll('.math'))
    .filter((e) => !e.closest('mjx-container'));
  const untypeset = math.filter((e) => !e.querySelector('mjx-container'))
    .map((e) => e.textContent.trim().slice(0, 80));
  const texErrors = Array.from(document.querySelectorAll('mjx-merror'))
    .map((e) => e.getAttribute('data-mjx-error') || e.textContent);
  const images = Array.from(document.images).map((i) => ({
    src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const links = Array.from(document.querySelectorAll('a[href]')).map((a) => a.href);
  const resources = Array.from(document.querySelectorAll('script[src], link[href], img[src]'))
    .filter((e) => e.tagName !== 'LINK' || /stylesheet|preload|icon|modulepreload/.test(e.rel))
    .map((e) => e.src || e.href);
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight')
    .forEach((e) => e.remove());
  const cut = Array.from(document.querySelectorAll('pre')).filter((p) => {
    if (p.offsetParent === null || p.scrollWidth <= p.clientWidth + 1) return false;
    const style = getComputedStyle(p);
    const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
    return !(scrolls(p) || style.whiteSpace.startsWith('pre-wrap')
             || (p.parentElement && scrolls(p.parentElement)));
  }).map((p) => p.textContent.split('\n').reduce((a, b) => a.length >= b.length ? a : b));
  const wide = Array.from(document.querySelectorAll('div.highlight pre, div.cell_output pre'))
    .filter((p) => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1).length;
  const chapter = (document.querySelector('h1 .section-number') || {}).textContent || '';
  const numbers = Array.from(document.querySelectorAll('.eqno, .caption-number'))
    .map((e) => e.textContent.trim());
  done({chapter: chapter.trim(), numbers, mathjax, hasMathJax: !!(mj && mj.startup), mathCount: math.length, untypeset,
        texErrors, images, links, resources, text: body.textContent, cut, wide});
});
"""


# After the fonts loaded: each distinct non-ASCII character of the visible text (math, code
# blocks' own fonts included; whitespace, marks and format characters excepted) drawn on a canvas
# in its element's font; it is missing when it draws exactly as an unassigned code point does.
_GLYPHS = r"""
const done = arguments[arguments.length - 1];
(document.fonts ? document.fonts.ready : Promise.resolve()).then(() => {
  const SKIP = 'script, style, noscript, textarea, mjx-container, svg, math';
  const IGNORE = /[\p{Z}\p{Cc}\p{Cf}\p{M}]/u;
  const canvas = document.createElement('canvas');
  canvas.width = 96; canvas.height = 64;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const draw = (font, ch) => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = font; ctx.textBaseline = 'middle'; ctx.fillStyle = '#000';
    ctx.fillText(ch, 8, 32);
    return {width: ctx.measureText(ch).width,
            pixels: ctx.getImageData(0, 0, canvas.width, canvas.height).data};
  };
  const same = (a, b) => {
    if (Math.abs(a.width - b.width) > 0.01) return false;
    for (let i = 3; i < a.pixels.length; i += 4) if (a.pixels[i] !== b.pixels[i]) return false;
    return true;
  };
  const refs = new Map(), checked = new Map(), missing = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest(SKIP) || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const font = `${style.fontStyle} ${style.fontWeight} 40px ${style.fontFamily}`;
    for (const ch of node.data) {
      if (ch.codePointAt(0) < 0x80 || IGNORE.test(ch)) continue;
      const key = font + '\u0000' + ch;
      if (checked.has(key)) continue;
      if (!refs.has(font)) refs.set(font, [draw(font, '\u0378'), draw(font, '\u{10FFFD}')]);
      const tofu = refs.get(font).some((ref) => same(draw(font, ch), ref));
      checked.set(key, tofu);
      if (tofu) missing.push({
        code: 'U+' + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0'),
        char: ch, font: style.fontFamily, context: node.data.trim().slice(0, 60)});
    }
  }
  done({checked: checked.size, missing});
});
"""


def _missing_glyphs(drv) -> list[str]:
    """The characters of the open page that its fonts cannot draw (tofu), described."""
    report = drv.execute_async_script(_GLYPHS)
    return [
        f"{m['code']} {m['char']!r} in {m['context']!r} (font {m['font']})"
        for m in report["missing"]
    ]


def _screenshot(drv, page: Path) -> None:
    """The whole page at the window's width: the viewport is made as tall as the page."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    metrics = drv.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    height = max(HEIGHT, min(int(size["height"]), 60000))
    drv.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        shot = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    name = page.relative_to(HTML).with_suffix("").as_posix().replace("/", "__") + ".png"
    (SHOTS / name).write_bytes(base64.b64decode(shot["data"]))


def _network_requests(drv) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if urlsplit(url).scheme in {"http", "https", "ws", "wss"}:
                urls.append(url)
    return urls


def _broken_link(href: str) -> str | None:
    """Why an internal link does not resolve, or None when it does (external links pass)."""
    parts = urlsplit(href)
    if parts.scheme != "file":
        return None
    target = Path(unquote(parts.path))
    if target.is_dir():
        target = target / "index.html"
    try:
        target.resolve().relative_to(HTML)
    except ValueError:
        return f"{href}: points outside the book"
    if not target.is_file():
        return f"{href}: no such file"
    fragment = unquote(parts.fragment)
    if (
        fragment
        and target.suffix == ".html"
        and fragment not in _anchors(target.resolve())
    ):
        return f"{href}: no id '{fragment}' in {target.relative_to(HTML)}"
    return None


def _redirect(page: Path) -> str | None:
    """The target of a ``<meta http-equiv="refresh">`` page (``index.html``), else None."""
    match = re.search(
        r'<meta[^>]+http-equiv="refresh"[^>]+content="\d+;\s*url=([^"]+)"',
        page.read_text(encoding="utf-8", errors="replace"),
        re.IGNORECASE,
    )
    return match.group(1) if match else None


def test_book_is_built():
    if not PAGES:
        _unavailable(NO_BOOK)
    assert (HTML / "book" / "intro.html").is_file()


@pytest.mark.parametrize("page", PAGES or [None], ids=_page_id)
def test_page(browser, page):
    if page is None:
        _unavailable(NO_BOOK)
    target = _redirect(page)
    # a redirect (index.html): its target must exist; it is tested as its own page
    if target is not None:
        problem = _broken_link((page.parent / unquote(target)).resolve().as_uri())
        assert problem is None, (
            f"{_page_id(page)} redirects to a missing page: {problem}"
        )
        return
    drv = browser
    drv.get_log("browser")  # drain entries of earlier pages
    drv.get_log("performance")
    drv.get(page.as_uri())
    report = drv.execute_async_script(_INSPECT)
    tofu = _missing_glyphs(drv)
    _screenshot(drv, page)
    console = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    network = _network_requests(drv)

    problems = []
    if report["mathjax"] != "ok":
        problems.append(report["mathjax"])
    if report["mathCount"] and not report["hasMathJax"]:
        problems.append(f"{report['mathCount']} math elements but MathJax did not load")
    if report["untypeset"]:
        n = len(report["untypeset"])
        problems.append(
            f"{n} math elements not typeset, e.g. {report['untypeset'][:3]}"
        )
    if report["texErrors"]:
        problems.append(f"MathJax TeX errors: {report['texErrors'][:5]}")
    raw = [tok for tok in RAW_TEX if tok in report["text"]]
    if raw:
        text = report["text"]
        at = text.find(raw[0])
        context = " ".join(text[max(0, at - 60) : at + 60].split())
        problems.append(f"raw TeX {raw} left in the visible text, e.g. ...{context}...")
    dollar = RAW_DOLLAR_TEX.search(report["text"])
    if dollar:
        problems.append(f"raw inline TeX left in the visible text: {dollar.group(0)}")
    broken_images = [i["src"] for i in report["images"] if not i["ok"]]
    if broken_images:
        problems.append(
            f"{len(broken_images)} images did not load: {broken_images[:5]}"
        )
    bad_links = sorted({b for h in report["links"] if (b := _broken_link(h))})
    if bad_links:
        problems.append(
            f"{len(bad_links)} internal links do not resolve: {bad_links[:8]}"
        )
    remote = sorted(
        {r for r in report["resources"] if urlsplit(r).scheme in {"http", "https"}}
        | set(network)
    )
    if remote:
        problems.append(f"the page needs the network: {remote[:8]}")
    if console:
        problems.append(f"console errors: {console[:8]}")
    if tofu:
        problems.append(
            f"{len(tofu)} characters no font of the page can draw (tofu): {tofu[:8]}"
        )
    chapter = report["chapter"].rstrip(".")
    # a numbered chapter: its equations, figures and theorems carry its number
    if chapter:
        own = re.compile(rf"\b\(?{chapter}\.\d")
        stray = [n for n in report["numbers"] if not own.search(n)]
        if stray:
            problems.append(f"numbers not of chapter {chapter}: {stray[:5]}")
    if report["wide"]:
        problems.append(
            f"{report['wide']} code blocks or outputs wider than the column at {WIDTH} px"
        )
    if report["cut"]:
        problems.append(
            f"code cut off at {WIDTH} px (no wrap, no scroll): {report['cut'][:3]}"
        )
    assert not problems, f"{_page_id(page)}:\n  " + "\n  ".join(problems)


def test_notebook_downloads():
    """Each chapter's .ipynb (the theme's download button) is a notebook with outputs."""
    if not PAGES:
        _unavailable(NO_BOOK)
    chapters = [p for p in PAGES if p.parent.name == "chapters"]
    assert chapters, "no chapter pages in the built book"
    for page in chapters:
        rel = page.relative_to(HTML).with_suffix(".ipynb")
        nb_path = HTML / "_sources" / rel
        assert nb_path.is_file(), f"{rel}: no downloadable notebook at {nb_path}"
        assert f'href="../_sources/{rel.as_posix()}"' in page.read_text(
            encoding="utf-8"
        ), f"{page.name}: no .ipynb download link"
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        assert nb.get("nbformat") == 4 and nb["metadata"].get("kernelspec"), rel
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and any(c.get("outputs") for c in code), (
            f"{rel}: no executed outputs"
        )


def test_glyph_check_catches_tofu(browser, tmp_path):
    """The tofu check on a small page: characters that no font has are caught, others pass.

    U+0378 is unassigned and U+F0000 a private-use character no system font maps: both are
    tofu anywhere. The emoji U+2705 and U+274C (MyST-NB's execution-status symbols) are tofu on
    a machine without an emoji font (fc-list tells); the execution-status table must not use
    them. Math symbols, accents and typographic punctuation have glyphs in DejaVu.
    """
    page = tmp_path / "glyphs.html"
    page.write_text(
        '<!doctype html><html><head><meta charset="utf-8"><style>body{font-family:'
        ' -apple-system, "Segoe UI", Roboto, sans-serif}</style></head><body>'
        "<p>fine: \u2264 \u2265 \u00b1 \u2208 \u2213 \u00e9 \u2014 \u201cq\u201d \u03b1</p>"
        "<p>unassigned \u0378 private \U000f0000</p>"
        "<table><tr><td>\u2705</td><td>\u274c</td></tr></table>"
        "<p style='display:none'>hidden \u0379</p></body></html>",
        encoding="utf-8",
    )
    browser.get(page.as_uri())
    found = {m.split()[0] for m in _missing_glyphs(browser)}
    assert {"U+0378", "U+F0000"} <= found, found
    assert not found & {"U+2264", "U+2265", "U+00B1", "U+2208", "U+00E9", "U+03B1"}, (
        found
    )
    assert "U+0379" not in found, "hidden text is not drawn, so not checked"
    fc_list = shutil.which("fc-list")
    if fc_list:
        for code in ("2705", "274C"):
            covered = subprocess.run(
                [fc_list, f":charset={code.lower()}", "family"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            assert (f"U+{code}" in found) == (not covered), (code, covered, found)
