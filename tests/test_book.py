"""The Jupyter Book report (book/): it builds without warnings from the committed outputs,
and its pages work in a real browser with no network.

- ``test_book_builds_without_warnings``: ``jupyter-book build book -W -n --keep-going`` into a
  temporary folder; exit code 0 and no warning in the log.
- ``test_no_reference_run_missing``: a study page whose executed notebook is not in
  ``outputs/`` shows a "Reference run missing" admonition instead of failing on every glue
  reference; this test fails, naming the runs, while any page shows one.
- ``test_pages_are_self_contained``: no page loads a script, style sheet or image from the
  network (the static check; the browser test checks actual requests).
- ``test_pages_in_headless_chromium``: every page loads in headless Chromium with all host
  names unresolvable; every request is to a local file; figures are decoded; maths is
  typeset by the local MathJax; internal links and their anchors resolve.  A screenshot of
  every page goes to ``test-artifacts/book/``.  Skips, with the reason, when ``chromium`` or
  ``chromedriver`` is not installed (Debian: ``apt-get install chromium chromium-driver``;
  ``$CHROME_BIN`` and ``$CHROMEDRIVER`` override the look-up).
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
    "comparison", "reproducibility",
]
CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-sync", "--no-first-run", "--metrics-recording-only",
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost',
    "--window-size=1280,1600",
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


@pytest.mark.slow
def test_pages_in_headless_chromium(built):
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
    try:
        drv.set_page_load_timeout(60)
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
            # Screenshot of the whole page.
            height = drv.execute_script("return Math.min(document.documentElement.scrollHeight, 12000)")
            drv.set_window_size(1280, max(800, int(height)))
            drv.save_screenshot(str(ARTIFACTS / (rel.replace("/", "__").removesuffix(".html") + ".png")))
            drv.set_window_size(1280, 1600)
    finally:
        drv.quit()

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
