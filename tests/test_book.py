"""The Jupyter Book report (book/): it builds without warnings from the committed outputs,
and its pages work in a real browser with no network.

- ``test_book_builds_without_warnings``: ``jupyter-book build book -W -n --keep-going`` into a
  temporary folder; exit code 0 and no warning in the log.
- ``test_no_reference_run_missing``: a study page whose executed notebook is not in
  ``outputs/`` shows a "Reference run missing" admonition instead of failing on every glue
  reference; this test fails, naming the runs, while any page shows one.
- ``test_pages_are_self_contained``: no page loads a script, style sheet or image from the
  network (the static check; the browser test checks actual requests).
- ``test_pages_in_headless_chromium``: every page loads in headless Chromium (1400 px wide) with
  all host names unresolvable; every request is to a local file; figures are decoded; maths is
  typeset by the local MathJax; internal links and their anchors resolve.  A screenshot of
  every page goes to ``test-artifacts/book/``.  Skips, with the reason, when ``chromium`` or
  ``chromedriver`` is not installed (Debian: ``apt-get install chromium chromium-driver``;
  ``$CHROME_BIN`` and ``$CHROMEDRIVER`` override the look-up).
- ``test_nothing_wider_than_the_content_column`` (browser): no element sticks out of the article
  column unless it sits in a box that scrolls sideways.
- ``test_figures_are_at_least_500_px_wide`` (browser): every figure is rendered at least 500 px wide.
- ``test_no_raw_values_on_any_page``: no "NaN", ``PosixPath(`` or ``TqdmWarning`` in any page's text.
- ``test_no_duplicate_sidebar_titles``: every sidebar entry has its own title.
- ``test_front_page_leads_with_the_findings``: the front page opens with the glued "What we found"
  box and the headline figure.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
ARTIFACTS = REPO / "test-artifacts" / "book"

# Pages the report must have (docnames); executed notebooks are added from outputs/.
REQUIRED_PAGES = [
    "intro", "method", "data",
    "studies/enhancement", "studies/generation", "studies/data_efficiency",
    "studies/unseen_backgrounds", "studies/robustness", "studies/ablations", "studies/theorem",
    "studies/phase2_check", "studies/dsa_regime", "studies/cross_question", "studies/baselines",
    "comparison", "reproducibility",
]
CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-sync", "--no-first-run", "--metrics-recording-only",
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost',
    "--window-size=1400,1600",
]
LOCAL_SCHEMES = {"file", "data", "about", "blob", "chrome", "devtools"}


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return str(exe)
    found = shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed (pip install -e '.[book]')")
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Build the book once for this module into a temporary folder."""
    out = tmp_path_factory.mktemp("book")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [_jupyter_book(), "build", str(BOOK), "-W", "-n", "--keep-going", "--path-output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    return {"proc": proc, "html": out / "_build" / "html", "seconds": time.perf_counter() - t0,
            "log": proc.stdout + proc.stderr}


def _html_pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "index.html"}
    return sorted(p for p in html.rglob("*.html")
                  if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts)


class _Refs(HTMLParser):
    """Collects resource URLs (src, link href), anchors (a href) and element ids of a page."""

    def __init__(self):
        super().__init__()
        self.resources, self.links, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.resources.append(a["src"])
        if tag == "link" and a.get("href") and (a.get("rel") or "") in ("stylesheet", "preload", "icon"):
            self.resources.append(a["href"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _refs(page: Path) -> _Refs:
    r = _Refs()
    r.feed(page.read_text(encoding="utf-8"))
    return r


def _visible_text(page: Path) -> str:
    """The page's text with tags removed and entities decoded."""
    return html_lib.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme == "" or scheme in LOCAL_SCHEMES


def test_book_builds_without_warnings(built):
    proc = built["proc"]
    assert proc.returncode == 0, f"jupyter-book build failed ({proc.returncode}):\n{built['log'][-6000:]}"
    warnings = [line for line in built["log"].splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)]
    assert not warnings, "the book build logged warnings:\n" + "\n".join(warnings)
    html = built["html"]
    for doc in REQUIRED_PAGES:
        assert (html / f"{doc}.html").exists(), f"page {doc} was not built"
    for nb in sorted((REPO / "outputs").glob("*/*.ipynb")):
        if nb.name.endswith(".failed.ipynb"):
            continue
        page = html / "outputs" / nb.parent.name / f"{nb.stem}.html"
        assert page.exists(), f"executed notebook {nb.relative_to(REPO)} is not rendered in the book"
    # A figure glued without an image (the notebook's matplotlib formatter gave only
    # text/plain) shows up as its repr: the study notebook must register PNG output
    # (matplotlib_inline.backend_inline.set_matplotlib_formats("png")).
    textual = [f"{p.relative_to(html)}: {m}" for p in _html_pages(html)
               for m in re.findall(r"<Figure size [\d.]+x[\d.]+ with \d+ Axes>|<seaborn\.axisgrid\.\w+ object at \w+>",
                                   _visible_text(p))]
    assert not textual, "figures rendered as text, not images:\n" + "\n".join(textual)
    # Glue resolved: numbers were pasted and no raw role/directive text survived.
    theorem = (html / "studies" / "theorem.html").read_text(encoding="utf-8")
    assert theorem.count('class="pasted-text"') >= 20
    assert "{glue" not in theorem
    assert re.search(r'<img [^>]*src="\.\./_images/[0-9a-f]{64}\.png"', theorem), "no glued figure on the theorem page"
    print(f"book built in {built['seconds']:.1f} s")


def test_no_reference_run_missing(built):
    assert built["proc"].returncode == 0
    missing = []
    for page in _html_pages(built["html"]):
        for m in re.finditer(r"<code[^>]*><span class=\"pre\">(outputs/[^<]+\.ipynb)</span></code> is not in the repository yet",
                             page.read_text(encoding="utf-8")):
            missing.append(f"{page.relative_to(built['html'])}: {m.group(1)}")
    assert not missing, ("reference runs missing from outputs/ (run scripts/run_outputs.py for them):\n"
                         + "\n".join(missing))


def test_pages_are_self_contained(built):
    assert built["proc"].returncode == 0
    html = built["html"]
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "offline MathJax was not copied"
    remote = []
    for page in _html_pages(html):
        text = page.read_text(encoding="utf-8")
        remote += [f"{page.relative_to(html)}: {u}" for u in _refs(page).resources if not _is_local(u)]
        if "$$" in text or "\\(" in text:
            assert 'src="' in text and "_static/mathjax/tex-chtml.js" in text, f"{page.name}: MathJax is not local"
    assert not remote, "pages load resources from the network:\n" + "\n".join(remote)


def _chrome_paths() -> tuple[str | None, str | None]:
    """Browser and driver: $CHROME_BIN / $CHROMEDRIVER, else the first found on PATH."""
    browser = os.environ.get("CHROME_BIN") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


#: Text that must never appear on a page: a missing value, a raw Path repr, a progress-bar warning.
FORBIDDEN_TEXT = {"NaN": r"\bNaN\b", "PosixPath": r"PosixPath\(", "TqdmWarning": r"TqdmWarning"}
#: Window width of the browser checks (the issue's reading width) and the smallest figure on a page.
WINDOW_WIDTH = 1400
MIN_FIGURE_PX = 500

# Elements in the article wider than the article, not inside a box that scrolls sideways
# (outermost offenders only).
_OVERFLOW_JS = """
const art = document.querySelector('article.bd-article') || document.querySelector('main');
if (!art) return ['no article element'];
const ar = art.getBoundingClientRect();
const scrolls = el => { const o = getComputedStyle(el).overflowX; return o === 'auto' || o === 'scroll'; };
const out = [];
const bad = new Set();
for (const el of art.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;
  if (r.right <= ar.right + 2 && r.left >= ar.left - 2) continue;
  let p = el.parentElement, inside = false;
  while (p && p !== art) { if (scrolls(p) || bad.has(p)) { inside = true; break; } p = p.parentElement; }
  if (inside) continue;
  bad.add(el);
  const text = (el.textContent || '').trim().slice(0, 60).replace(/\\s+/g, ' ');
  out.push(`${el.tagName.toLowerCase()}${el.className ? '.' + String(el.className).split(' ')[0] : ''} `
           + `${Math.round(r.width)} px > column ${Math.round(ar.width)} px: "${text}"`);
}
return out;
"""
# Boxes in the article that scroll sideways because their content is wider (the reader sees a clipped table).
_SCROLLED_JS = """
const art = document.querySelector('article.bd-article') || document.querySelector('main');
if (!art) return [];
const out = [];
for (const el of art.querySelectorAll('*')) {
  const o = getComputedStyle(el).overflowX;
  if ((o === 'auto' || o === 'scroll') && el.scrollWidth > el.clientWidth)
    out.push(`${el.tagName.toLowerCase()}.${String(el.className).split(' ')[0]} ${el.scrollWidth} px in `
             + `${el.clientWidth} px: "${(el.textContent || '').trim().slice(0, 60).replace(/\\s+/g, ' ')}"`);
}
return out;
"""
# Figures in the article narrower than MIN_FIGURE_PX as rendered (icons and logos are outside the article).
_FIGURES_JS = """
const art = document.querySelector('article.bd-article') || document.querySelector('main');
return Array.from(art ? art.querySelectorAll('img') : []).map(i => [i.getAttribute('src'),
  Math.round(i.getBoundingClientRect().width), i.naturalWidth]);
"""


@pytest.fixture(scope="module")
def browsed(built) -> dict:
    """Every page loaded once in headless Chromium at WINDOW_WIDTH px, with all host names unresolvable.

    Returns ``{"problems": [...], "overflow": {page: [...]}, "figures": {page: [(src, px, natural px)]}}`` and
    saves a full-page screenshot of every page in ``test-artifacts/book/``.
    """
    browser, driver = _chrome_paths()
    if not browser or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver on PATH "
                    "(Debian: apt-get install -y chromium chromium-driver); not found")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    assert built["proc"].returncode == 0, "the book did not build"
    html = built["html"]
    pages = _html_pages(html)
    assert len(pages) >= len(REQUIRED_PAGES)

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    overflow: dict[str, list] = {}
    scrolled: dict[str, list] = {}
    figures: dict[str, list] = {}
    try:
        drv.set_page_load_timeout(60)
        drv.set_window_size(WINDOW_WIDTH, 1600)
        # The overflow check finds a wide element, and accepts it inside a box that scrolls.
        probe = ARTIFACTS / "_overflow_probe.html"
        probe.write_text('<html><body><main><article class="bd-article" style="width:600px">'
                         '<div id="wide" style="width:2000px">x</div>'
                         '<div style="overflow-x:auto"><div style="width:2000px">y</div></div>'
                         '</article></main></body></html>', encoding="utf-8")
        drv.get(probe.as_uri())
        found = drv.execute_script(_OVERFLOW_JS)
        probe.unlink()
        assert len(found) == 1 and found[0].startswith("div 2000 px"), f"overflow check is broken: {found}"
        for page in pages:
            rel = page.relative_to(html).as_posix()
            drv.get(page.as_uri())
            # Wait for MathJax (when the page has maths) to finish typesetting.
            has_math = drv.execute_script("return document.querySelectorAll('.math').length") > 0
            if has_math:
                t_end = time.time() + 30
                done = False
                while time.time() < t_end:
                    done = drv.execute_script(
                        "return !!(window.MathJax && MathJax.startup && MathJax.startup.promise && "
                        "document.querySelectorAll('mjx-container').length > 0)")
                    if done:
                        drv.execute_script("return MathJax.startup.promise.then(() => true)")
                        break
                    time.sleep(0.2)
                n_math = drv.execute_script("return document.querySelectorAll('.math').length")
                n_mjx = drv.execute_script("return document.querySelectorAll('mjx-container').length")
                merr = drv.execute_script("return document.querySelectorAll('mjx-merror').length")
                if not done or n_mjx < n_math:
                    problems.append(f"{rel}: maths not typeset ({n_mjx} MathJax outputs for {n_math} formulas)")
                if merr:
                    problems.append(f"{rel}: {merr} MathJax errors")
            # Figures: every image decoded.
            broken = drv.execute_script(
                "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.getAttribute('src'))")
            if broken:
                problems.append(f"{rel}: images not loaded: {broken}")
            title = drv.execute_script("return (document.querySelector('main h1') || {}).textContent || ''")
            if not title.strip():
                problems.append(f"{rel}: no page heading (page did not render)")
            # Network: every request the page made is local.
            for entry in drv.get_log("performance"):
                msg = json.loads(entry["message"])["message"]
                if msg.get("method") == "Network.requestWillBeSent":
                    url = msg["params"]["request"]["url"]
                    if not _is_local(url):
                        problems.append(f"{rel}: request leaves the machine: {url}")
            for entry in drv.get_log("browser"):
                if entry.get("level") == "SEVERE":
                    problems.append(f"{rel}: console error: {entry.get('message')}")
            overflow[rel] = drv.execute_script(_OVERFLOW_JS)
            scrolled[rel] = drv.execute_script(_SCROLLED_JS)
            figures[rel] = drv.execute_script(_FIGURES_JS)
            # Screenshot of the whole page.
            height = drv.execute_script("return Math.min(document.documentElement.scrollHeight, 12000)")
            drv.set_window_size(WINDOW_WIDTH, max(800, int(height)))
            drv.save_screenshot(str(ARTIFACTS / (rel.replace("/", "__").removesuffix(".html") + ".png")))
            drv.set_window_size(WINDOW_WIDTH, 1600)
    finally:
        drv.quit()
    return {"problems": problems, "overflow": overflow, "scrolled": scrolled, "figures": figures, "pages": pages}


@pytest.mark.slow
def test_pages_in_headless_chromium(built, browsed):
    """Pages load, maths is typeset, images decode, nothing leaves the machine, internal links resolve."""
    html = built["html"]
    problems = list(browsed["problems"])
    pages = browsed["pages"]
    # Internal links: the target file exists and so does the anchor.
    ids: dict[Path, set[str]] = {}
    for page in pages:
        for href in _refs(page).links:
            if not _is_local(href) or href.startswith(("mailto:", "javascript:")):
                continue
            path, frag = urldefrag(href)
            target = (page.parent / unquote(path)).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{page.relative_to(html)}: broken link {href}")
                continue
            if frag and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _refs(target).ids
                if unquote(frag) not in ids[target]:
                    problems.append(f"{page.relative_to(html)}: link {href} names a missing anchor")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_nothing_wider_than_the_content_column(browsed):
    """At a 1400 px window no element sticks out of the article column (wide tables and code must scroll or wrap)."""
    bad = {page: items for page, items in browsed["overflow"].items() if items}
    assert not bad, "elements wider than the content column:\n" + "\n".join(
        f"{page}: {len(items)}: " + "; ".join(items[:3]) for page, items in sorted(bad.items()))


@pytest.mark.slow
def test_report_pages_need_no_sideways_scrolling(browsed):
    """The report's own pages (not the executed notebooks under outputs/) show every table whole at 1400 px."""
    bad = {page: items for page, items in browsed["scrolled"].items() if items and not page.startswith("outputs/")}
    assert not bad, "tables or code that scroll sideways on report pages:\n" + "\n".join(
        f"{page}: " + "; ".join(items[:3]) for page, items in sorted(bad.items()))


@pytest.mark.slow
def test_figures_are_at_least_500_px_wide(browsed):
    """Every figure in a page's article is shown at least MIN_FIGURE_PX px wide (no shrunken plots)."""
    bad = {page: [f"{src} {w} px (natural {nat} px)" for src, w, nat in figs if w < MIN_FIGURE_PX]
           for page, figs in browsed["figures"].items()}
    bad = {p: v for p, v in bad.items() if v}
    assert not bad, f"figures narrower than {MIN_FIGURE_PX} px:\n" + "\n".join(
        f"{page}: " + "; ".join(v) for page, v in sorted(bad.items()))


def test_no_raw_values_on_any_page(built):
    """No page shows "NaN", a ``PosixPath(...)`` repr or a ``TqdmWarning`` (tables go through dsalib.report)."""
    assert built["proc"].returncode == 0
    found = []
    for page in _html_pages(built["html"]):
        text = _visible_text(page)
        rel = page.relative_to(built["html"])
        for name, pattern in FORBIDDEN_TEXT.items():
            n = len(re.findall(pattern, text))
            if n:
                found.append(f"{rel}: {name} ×{n}")
    assert not found, "raw values on pages:\n" + "\n".join(found)


class _Sidebar(HTMLParser):
    """Link texts of the primary sidebar's table of contents."""

    def __init__(self):
        super().__init__()
        self.depth, self.in_link, self.titles, self._buf = 0, False, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.depth:
            self.depth += tag not in ("br", "img", "input", "meta", "link", "hr")
            if tag == "a":
                self.in_link, self._buf = True, []
        elif tag == "nav" and "bd-docs-nav" in (a.get("class") or ""):
            self.depth = 1

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag == "a" and self.in_link:
            self.titles.append(" ".join("".join(self._buf).split()))
            self.in_link = False
        self.depth -= 1

    def handle_data(self, data):
        if self.in_link:
            self._buf.append(data)


def test_no_duplicate_sidebar_titles(built):
    """Every entry of the sidebar has its own title (executed notebooks of one study name their run)."""
    assert built["proc"].returncode == 0
    sidebar = _Sidebar()
    sidebar.feed((built["html"] / "intro.html").read_text(encoding="utf-8"))
    assert len(sidebar.titles) >= len(REQUIRED_PAGES) - 1, f"sidebar not found: {sidebar.titles}"
    dupes = sorted({t for t in sidebar.titles if sidebar.titles.count(t) > 1})
    assert not dupes, "sidebar titles used more than once:\n" + "\n".join(dupes)


def test_front_page_leads_with_the_findings(built):
    """The front page opens with the "What we found" box, filled from the summary notebook, and its figure."""
    assert built["proc"].returncode == 0
    page = (built["html"] / "intro.html").read_text(encoding="utf-8")
    intro = page[page.index("<article"):]  # the page's own content, after the sidebars
    box = intro.find("What we found")
    assert box != -1, "no 'What we found' box on the front page"
    assert box < intro.find('id="two-tasks"'), "the findings box is not at the top of the front page"
    assert intro.count('class="pasted-text"') >= 15, "the findings box is not glued from outputs/summary"
    assert re.search(r'<img [^>]*src="_images/[0-9a-f]{64}\.png"', intro), "no headline figure on the front page"
