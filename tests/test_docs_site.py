"""The built docs site (`site/`, from `mkdocs build --strict`) in headless Chromium.

Serves `site/` on 127.0.0.1, loads the home page, every chapter and the other pages, and fails on
any SEVERE console message (a failed request included: the site must work offline), on a
chapter whose plots do not show, on `# NBVAL_*` markers a reader would see, on a chapter
without its notebook download link, on code or a result table cut off at a 1280-pixel window,
and on chapters and labs that do not link to each other. It also checks, without a browser,
that no committed notebook output shows a path of the machine that ran it. Screenshots go to a temporary folder (printed), or to
`$MINILLM_SCREENSHOTS` when set.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (`make docs` builds the
site first; `.ci/run` installs Chromium).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

SITE = Path(__file__).resolve().parent.parent / "site"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1280,1800"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").exists():
        pytest.fail("site/ is not built: run `mkdocs build --strict` (or `make docs`) first")
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("MINILLM_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("site-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {path}")
    return path


def chapter_pages() -> list[str]:
    return sorted(f"chapters/{p.parent.name}/" for p in SITE.glob("chapters/*/index.html"))


def other_pages() -> list[str]:
    pages = [""]  # the home page
    for sub in ("labs", "benchmarks", "api", "model", "kernels", "serving", "deployment"):
        pages += sorted(f"{p.parent.relative_to(SITE).as_posix()}/"
                        for p in SITE.glob(f"{sub}/**/index.html"))
    return pages


def load(browser, url: str, screenshots: Path, name: str):
    browser.get_log("browser")  # drop what earlier pages left
    browser.get(url)
    browser.execute_script("return document.fonts ? document.fonts.ready : null")
    browser.save_screenshot(str(screenshots / f"{name or 'home'}.png"))
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_committed_outputs_hold_no_machine_paths():
    sys.path.insert(0, str(SITE.parent / "tools"))
    from clean_notebooks import machine_paths

    for path in sorted((SITE.parent / "chapters").glob("*.ipynb")):
        found = machine_paths(json.loads(path.read_text(encoding="utf-8")))
        assert not found, f"{path.name}: outputs show machine paths {found}: re-run " \
                          "tools/clean_notebooks.py on it"


def cut_off(browser, selector: str = ".md-content pre, .md-content table") -> list[str]:
    """Code blocks and tables of the page's content wider than their box (cut off or hidden
    behind a scroll bar)."""
    return browser.execute_script("""
        const out = [];
        for (const el of document.querySelectorAll(arguments[0])) {
            if (el.offsetParent === null) continue;  // not displayed
            if (el.scrollWidth > el.clientWidth + 2)
                out.push(el.tagName + ': ' + el.innerText.split('\\n')[0].slice(0, 60)
                         + ' (' + el.scrollWidth + ' > ' + el.clientWidth + ' px)');
        }
        return out;""", selector)


# Markdown pages scroll a long code line inside `pre > code` and a wide table inside its wrapper.
EVERY_SCROLLER = (".md-content pre, .md-content pre > code, .md-content table, "
                  ".md-content .md-typeset__scrollwrap")


def test_home_page_has_the_roadmap():
    html = (SITE / "index.html").read_text(encoding="utf-8")
    assert 'class="minillm-roadmap"' in html and html.count("<rect") >= 11, "no roadmap figure"
    for chapter in chapter_pages():
        assert f'href="{chapter}"' in html, f"the roadmap does not link {chapter}"


def test_chapters_and_labs_link_both_ways():
    pairs = 0
    for lab in sorted(SITE.glob("labs/lab*/index.html")):
        name = lab.parent.name
        lab_html = lab.read_text(encoding="utf-8")
        for chapter in chapter_pages():
            chapter_html = (SITE / chapter / "index.html").read_text(encoding="utf-8")
            if f'href="../../labs/{name}/"' in chapter_html:
                assert f'href="../../{chapter}"' in lab_html, \
                    f"{chapter} points to {name}, which does not link back"
                pairs += 1
    assert pairs >= 4, f"only {pairs} chapter-lab pairs link to each other"


def test_site_has_the_chapters():
    assert (SITE / "index.html").exists() or pytest.fail("site/ is not built")
    assert len(chapter_pages()) >= 5, chapter_pages()


@pytest.mark.parametrize("page", other_pages() if SITE.exists() else [""])
def test_page_loads_without_console_errors(browser, site_url, screenshots, page):
    errors = load(browser, site_url + page, screenshots, page.strip("/").replace("/", "_"))
    assert not errors, f"{page or 'home'}: console errors {errors}"
    assert browser.find_element("css selector", "h1").text.strip()
    if page.startswith("labs/"):
        assert not cut_off(browser), f"{page}: cut off at 1280 px: {cut_off(browser)}"


@pytest.mark.parametrize("page", chapter_pages() if SITE.exists() else [])
def test_chapter_renders_with_visible_plots(browser, site_url, screenshots, page):
    errors = load(browser, site_url + page, screenshots, page.strip("/").replace("/", "_"))
    assert not errors, f"{page}: console errors {errors}"
    assert browser.find_element("css selector", "h1").text.strip()
    # the notebook's outputs are on the page: code cells and at least one plot
    assert browser.find_elements("css selector", ".jp-CodeCell"), "no notebook cells rendered"
    images = browser.find_elements("css selector", ".jp-OutputArea-output img")
    assert images, f"{page}: no plot images"
    visible = []
    for img in images:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
        width, box = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [arguments[0].naturalWidth, [r.width, r.height]];", img)
        visible.append(width > 0 and box[0] > 0 and box[1] > 0)
    assert any(visible), f"{page}: no plot image is visible"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", images[0])
    browser.save_screenshot(str(screenshots / f"{page.strip('/').replace('/', '_')}_plot.png"))
    text = browser.find_element("tag name", "body").text
    assert "NBVAL_" not in text, f"{page}: a reader sees the notebook tests' NBVAL markers"
    links = browser.find_elements("css selector", ".minillm-download a[download]")
    assert links, f"{page}: no link to download the notebook"
    href = links[0].get_attribute("href").removeprefix(site_url)
    assert (SITE / href).is_file(), f"{page}: the download link {href} leads nowhere"
    assert not cut_off(browser), f"{page}: cut off at 1280 px: {cut_off(browser)}"


def full_page_screenshot(browser, path: Path) -> Path:
    """The whole page in one PNG: the window grown to the page's height for the shot."""
    width, height = browser.get_window_size()["width"], browser.get_window_size()["height"]
    page_height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(page_height + 200, 16000))
    browser.save_screenshot(str(path))
    browser.set_window_size(width, height)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000, \
        f"{path}: not a PNG of a rendered page"
    print(f"screenshot: {path}")
    return path


@pytest.mark.parametrize("chapter,lab", [("chapters/05_batching/", "labs/lab04_scheduler/")])
def test_a_part_two_chapter_and_its_lab_as_a_reader_sees_them(browser, site_url, screenshots,
                                                               chapter, lab):
    """Issue 15's site fixes, checked on the rendered pages and kept as screenshots: no NBVAL
    marker, the notebook's download link, the chapter -> lab link followed in the browser and the
    lab -> chapter link back, nothing cut off at 1280 px."""
    name = chapter.strip("/").replace("/", "_")
    assert not load(browser, site_url + chapter, screenshots, name)
    assert "NBVAL_" not in browser.find_element("tag name", "body").text, \
        f"{chapter}: a reader sees NBVAL markers"
    download = browser.find_element("css selector", ".minillm-download a[download]")
    assert download.is_displayed(), f"{chapter}: the download link is hidden"
    assert (SITE / download.get_attribute("href").removeprefix(site_url)).is_file()
    assert not cut_off(browser, EVERY_SCROLLER), \
        f"{chapter}: cut off at 1280 px: {cut_off(browser, EVERY_SCROLLER)}"
    full_page_screenshot(browser, screenshots / f"{name}_full.png")
    to_lab = browser.find_element("css selector", f'.md-content a[href$="{lab}"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", to_lab)
    browser.save_screenshot(str(screenshots / f"{name}_lab_link.png"))
    print(f"screenshot: {screenshots / f'{name}_lab_link.png'}")
    to_lab.click()
    assert browser.current_url == site_url + lab, \
        f"{chapter}'s lab link leads to {browser.current_url}, not {lab}"
    lab_name = lab.strip("/").replace("/", "_")
    assert browser.find_element("css selector", "h1").text.startswith("Lab "), \
        f"{lab}: no lab title"
    tables = browser.find_elements("css selector", ".md-content table")
    assert tables and all(t.is_displayed() for t in tables), f"{lab}: the task table is missing"
    assert not cut_off(browser, EVERY_SCROLLER), \
        f"{lab}: cut off at 1280 px: {cut_off(browser, EVERY_SCROLLER)}"
    back = browser.find_elements("css selector", f'.md-content a[href$="{chapter}"]')
    assert back and back[0].is_displayed(), f"{lab} does not link back to {chapter}"
    full_page_screenshot(browser, screenshots / f"{lab_name}_full.png")
