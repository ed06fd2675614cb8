"""The report in a real browser: Debian's headless Chromium, driven by Playwright.

The default audit's out/report.html is opened over file:// and must load without console
errors, page errors or failed requests, ask for nothing but itself and data: URIs (it is
self-contained), show every image, have a `<nav>` whose links land on their sections below a
sticky header, have `<table class="sortable">` tables that sort on a header click and are
server-rendered (present with their rows when JavaScript is off), and print without errors.
Screenshots (top of the page at 1280x900 in light and dark colour schemes, the full page) and
a PDF print are kept in $AUDITOR_TEST_ARTIFACTS, else test-artifacts/ at the repository root.

The browser is the system's Chromium (`apt-get install chromium` on Debian), never one that
Playwright downloads. Without it, or without the playwright package, these tests skip; with
CI set (CI=true, as .ci/run sets it) they fail instead, so CI never skips them silently.

Each check is a function returning a list of problems; test_checks_catch_a_broken_page runs
them on a small hand-written page with one of each defect, and test_checks_pass_a_conforming_page
on one that meets the contract, so every check can fail and can pass.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 900}
# Flags known to work on Debian's chromium in a closed network: without the background-
# networking ones Chromium's own connections (updates, sync, Google lookups) fail at start.
# Playwright adds --headless and a fresh temporary --user-data-dir for each launch.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAND_MAX_TOP = 200  # px: a section a nav link lands on starts this close to the viewport's top

# slow: a browser, and the default audit for most of them. One xdist group with every other user of the default
# audit (test_cli_run, test_readme_ci_example, test_report), so that one worker runs it, not two.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("default_run")]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so the browser test may not be skipped)", pytrace=False)
    pytest.skip(reason)


def chromium_executable() -> str | None:
    found = os.environ.get("AUDITOR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and os.access(found, os.X_OK) else None


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_executable()
    if executable is None:
        _unavailable("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as pw:
        # a chromium that is present but does not start is a failure, not a skip
        b = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("AUDITOR_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def report_url(default_run) -> str:
    return (default_run / "report.html").resolve().as_uri()


# ---------------------------------------------------------------- opening a page, recording


class Log:
    """Everything a page did that a self-contained, error-free report must not do."""

    def __init__(self, url: str):
        self.url = url.split("#")[0]
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.failed: list[str] = []

    def allowed(self, url: str) -> bool:
        return url.split("#")[0] == self.url or url.startswith("data:")

    def problems(self) -> list[str]:
        out = [f"console error: {m}" for m in self.console_errors]
        out += [f"page error: {m}" for m in self.page_errors]
        out += [f"request outside the report: {u}" for u in self.requests if not self.allowed(u)]
        out += [f"failed request: {f}" for f in self.failed]
        return out


# Recorded before any page script runs: whether the page listens for beforeprint.
_WATCH_BEFOREPRINT = """
window.__beforeprintListeners = 0;
const _add = EventTarget.prototype.addEventListener;
EventTarget.prototype.addEventListener = function (type, ...rest) {
  if (type === 'beforeprint' && this === window) window.__beforeprintListeners++;
  return _add.call(this, type, ...rest);
};
"""


def open_page(browser, url: str, **context_options):
    """A new context and page at `url`, every console message, error and request recorded;
    any request other than the page itself and data: URIs is recorded and aborted."""
    context = browser.new_context(viewport=VIEWPORT, **context_options)
    context.set_default_timeout(30_000)
    log = Log(url)

    def route(r):
        if log.allowed(r.request.url):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on(
        "console",
        lambda m: m.type == "error" and log.console_errors.append(f"{m.text} ({m.location.get('url', '')[:80]})"),
    )
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.on("request", lambda r: log.requests.append(r.url))
    page.on("requestfailed", lambda r: log.failed.append(f"{r.url[:120]}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and log.failed.append(f"{r.url[:120]}: HTTP {r.status}"))
    if context_options.get("java_script_enabled", True):
        page.add_init_script(_WATCH_BEFOREPRINT)
    page.goto(url, wait_until="load")
    return page, log


@pytest.fixture
def opened(browser, report_url):
    """open(**context_options) -> (page, log) for the default report; contexts closed after."""
    contexts = []

    def open_(**options):
        page, log = open_page(browser, report_url, **options)
        contexts.append(page.context)
        return page, log

    yield open_
    for c in contexts:
        c.close()


def settle(page, timeout: float = 3.0) -> None:
    """Wait until scrolling stops (smooth scrolling takes a few hundred ms)."""
    last, still, end = None, 0, time.monotonic() + timeout
    while time.monotonic() < end and still < 3:
        y = page.evaluate("new Promise(r => requestAnimationFrame(() => r(window.scrollY)))")
        still = still + 1 if y == last else 0
        last = y
        time.sleep(0.05)


# --------------------------------------------------------------------------------- the checks


def image_problems(page) -> list[str]:
    """Every <img> loaded: complete, with a natural width. Closed <details> are opened and
    lazy images scrolled to first, so that each image is given its chance to load."""
    page.evaluate("""() => {
        document.querySelectorAll('details').forEach(d => d.open = true);
        document.querySelectorAll('img').forEach(i => { if (!i.complete) i.scrollIntoView(); });
    }""")
    try:
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=10_000)
    except Exception:
        pass  # reported below, image by image
    page.evaluate("window.scrollTo(0, 0)")
    bad = page.evaluate("""() => [...document.images]
        .filter(i => !i.complete || i.naturalWidth === 0)
        .map(i => `${i.alt || '(no alt)'} <- ${(i.currentSrc || i.src || i.getAttribute('src') || '').slice(0, 80)}`)""")
    return [f"image did not load: {b}" for b in bad]


_LANDING = """(id) => {
    const el = document.getElementById(id);
    const r = el.getBoundingClientRect();
    const se = document.scrollingElement || document.documentElement;
    const atBottom = Math.ceil(window.scrollY + window.innerHeight) >= se.scrollHeight - 2;
    // what is drawn over the target's top-left corner: a fixed or sticky bar hiding it?
    const x = Math.min(Math.max(r.left + 8, 0), window.innerWidth - 1);
    const y = Math.min(Math.max(r.top + 4, 0), window.innerHeight - 1);
    let hit = document.elementFromPoint(x, y), cover = null;
    for (let n = hit; n && n !== document.body && !cover; n = n.parentElement) {
        const pos = getComputedStyle(n).position;
        if ((pos === 'fixed' || pos === 'sticky') && !n.contains(el)) cover = n;
    }
    return {top: r.top, innerHeight: window.innerHeight, atBottom, scrollY: window.scrollY,
            hash: location.hash,
            cover: cover ? cover.tagName.toLowerCase() + (cover.id ? '#' + cover.id : '') : null};
}"""


def nav_problems(page, limit: int = 40) -> list[str]:
    """Every in-page link resolves; every link in <nav> is an in-page link and, clicked, brings
    its target to the top of the viewport (0..200 px), not hidden under a fixed or sticky bar;
    where the page is scrolled to its end and cannot bring the target higher, the target
    must at least be in view."""
    problems = []
    dangling = page.evaluate("""() => [...document.querySelectorAll('a[href^="#"]')]
        .map(a => a.getAttribute('href')).filter(h => h.length > 1)
        .filter(h => !document.getElementById(decodeURIComponent(h.slice(1))))""")
    problems += [f"link to a missing element: {h}" for h in sorted(set(dangling))]
    if page.locator("nav").count() == 0:
        return problems + ["no <nav> element"]
    links = page.locator("nav a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    if not hrefs:
        return problems + ["<nav> has no links"]
    for i, href in enumerate(hrefs[:limit]):
        if not href.startswith("#") or len(href) < 2:
            problems.append(f"nav link {href!r} is not a link to a section of the report")
            continue
        target = unquote(href[1:])
        if not page.evaluate("id => !!document.getElementById(id)", target):
            continue  # reported above as a dangling link
        page.evaluate("window.scrollTo({top: 0, left: 0, behavior: 'instant'})")
        settle(page)
        links.nth(i).click()
        settle(page)
        at = page.evaluate(_LANDING, target)
        where = f"nav link {href}: section top at {at['top']:.0f} px (scrollY {at['scrollY']:.0f})"
        if at["cover"]:
            problems.append(f"{where}, hidden under <{at['cover']}>")
        elif at["atBottom"]:
            if not (-1 <= at["top"] < at["innerHeight"] - 10):
                problems.append(f"{where}, out of view at the end of the page")
        elif not (-1 <= at["top"] <= LAND_MAX_TOP):
            problems.append(f"{where}, expected 0..{LAND_MAX_TOP} px from the top")
    return problems


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?\s*(%|s|ms|px|x|×)?$", re.IGNORECASE)


def _number(text: str) -> float | None:
    t = (text or "").strip().replace("\u2212", "-").replace(",", "").replace("\u2009", "").replace("\u00a0", " ")
    if not _NUMBER.match(t):
        return None
    try:
        v = float(re.match(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", t, re.IGNORECASE).group(0))
    except (ValueError, AttributeError):
        return None
    return v if math.isfinite(v) else None


_TABLE = """(t) => {
    const head = t.tHead, body = t.tBodies[0];
    const headerRow = head && head.rows.length ? head.rows[head.rows.length - 1] : null;
    const rows = body ? [...body.rows] : [];
    return {
        thead: !!head, tbody: !!body,
        headers: headerRow ? [...headerRow.cells].map(c => c.textContent.trim()) : [],
        colspans: headerRow ? [...headerRow.cells].some(c => c.colSpan > 1) : false,
        rows: rows.map(r => [...r.cells].map(c => c.dataset.sort ?? c.dataset.value ?? c.textContent.trim())),
        ids: rows.map(r => r.innerHTML),
    };
}"""


def table_problems(page, limit: int = 12) -> list[str]:
    """Each <table class="sortable"> has <thead> and <tbody>; clicking the header of a column
    of differing numbers reorders the body rows (once, or on the second click if they were
    already in that order), keeps every row, leaves the column sorted, and sets aria-sort on
    that header to the direction it is sorted in."""
    tables = page.locator("table.sortable")
    if tables.count() == 0:
        return ['no <table class="sortable">']
    problems, exercised = [], 0
    for i in range(tables.count()):
        table = tables.nth(i)
        info = table.evaluate(_TABLE)
        name = f"sortable table {i + 1} ({' | '.join(info['headers'])[:60]})"
        if not info["thead"] or not info["tbody"]:
            problems.append(f"{name}: needs <thead> and <tbody>")
            continue
        if not info["rows"]:
            problems.append(f"{name}: no body rows")
            continue
        width = len(info["headers"])
        if (
            exercised >= limit
            or info["colspans"]
            or len(info["rows"]) < 2
            or any(len(r) != width for r in info["rows"])
        ):
            continue
        column = None
        for c in range(width):
            values = [_number(r[c]) for r in info["rows"]]
            if all(v is not None for v in values) and len(set(values)) > 1:
                column = c
                break
        if column is None:
            continue
        # a table folded into a closed <details> is sorted the way a reader would: opened first
        table.evaluate(
            "t => { for (let d = t.closest('details'); d; d = d.parentElement && d.parentElement.closest('details')) d.open = true; }"
        )
        header = table.locator("thead tr").last.locator("th, td").nth(column)
        if not header.is_visible():
            problems.append(f"{name}: header {info['headers'][column]!r} is not visible, even with its <details> open")
            continue
        exercised += 1
        before = info["ids"]
        after = before
        for _ in range(2):
            header.click(timeout=5_000)
            after = table.evaluate(_TABLE)
            if after["ids"] != before:
                break
        label = f"{name}, column {info['headers'][column]!r}"
        if after["ids"] == before:
            problems.append(f"{label}: clicking the header did not reorder the rows")
            continue
        if sorted(after["ids"]) != sorted(before):
            problems.append(f"{label}: sorting lost or changed rows")
            continue
        values = [_number(r[column]) for r in after["rows"]]
        up = all(a <= b for a, b in zip(values, values[1:]))
        down = all(a >= b for a, b in zip(values, values[1:]))
        aria = header.get_attribute("aria-sort")
        if not (up or down):
            problems.append(f"{label}: rows are not in order after the click: {values[:8]}")
        elif aria not in ("ascending", "descending"):
            problems.append(f"{label}: aria-sort on the header is {aria!r}, expected ascending or descending")
        elif (aria == "ascending" and not up) or (aria == "descending" and not down):
            problems.append(f"{label}: aria-sort={aria} but the rows run the other way")
    if not exercised and not problems:
        problems.append("no sortable table has a column of differing numbers to sort by")
    return problems


def no_problems(problems: list[str]) -> bool:
    """For `assert no_problems(...)`: prints every problem, one a line, when there are some."""
    assert not problems, f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)
    return True


def table_counts(page) -> dict:
    return page.evaluate("""() => ({
        sortable: [...document.querySelectorAll('table.sortable')].map(t => t.tBodies[0] ? t.tBodies[0].rows.length : 0),
        nav: document.querySelectorAll('nav a').length,
        sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
    })""")


# ------------------------------------------------------------------------ on the real report


def test_loads_clean_and_self_contained(opened):
    """No console error, no page error, no failed request, nothing fetched but the file itself
    and data: URIs."""
    page, log = opened()
    page.wait_for_timeout(300)  # late timers and errors
    assert any(u.split("#")[0] == log.url for u in log.requests), (
        f"the report's own request was not seen: {log.requests[:5]}"
    )
    assert no_problems(log.problems())


def test_every_image_loaded(opened):
    page, log = opened()
    assert page.locator("img").count() > 0, "the default report shows no images"
    assert no_problems(image_problems(page))
    assert no_problems(log.problems())


def test_nav_links_land_on_their_sections(opened):
    page, log = opened()
    assert no_problems(nav_problems(page))
    assert no_problems(log.problems())


def test_sortable_tables_sort_on_click(opened):
    page, log = opened()
    assert no_problems(table_problems(page))
    assert no_problems(log.problems())


def test_tables_and_nav_are_server_rendered(opened):
    """With JavaScript off the same sortable tables, rows and nav links are there."""
    page, log = opened()
    with_js = table_counts(page)
    page_nojs, log_nojs = opened(java_script_enabled=False)
    without_js = table_counts(page_nojs)
    assert with_js["sortable"], 'no <table class="sortable"> in the report'
    assert all(with_js["sortable"]), f"a sortable table has no body rows: {with_js['sortable']}"
    assert without_js == with_js
    assert no_problems(log_nojs.problems())


def test_prints_cleanly(opened, artifacts):
    """Print media renders without errors; if the page prepares for printing (a beforeprint
    handler), every <details> is open afterwards. The PDF is kept as an artifact."""
    page, log = opened()
    page.emulate_media(media="print")
    page.wait_for_timeout(200)
    listens = page.evaluate("window.__beforeprintListeners > 0 || typeof window.onbeforeprint === 'function'")
    if listens:
        page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
        closed = page.evaluate("[...document.querySelectorAll('details')].filter(d => !d.open).length")
        assert closed == 0, f"{closed} <details> still closed for print after beforeprint"
    pdf = page.pdf(path=str(artifacts / "report-print.pdf"), print_background=True)
    assert len(pdf) > 10_000
    assert no_problems(log.problems())


def test_screenshots(opened, artifacts):
    """The top of the page at 1280x900 in the light and dark colour schemes, and the full
    page, kept as artifacts for a reviewer; the dark scheme must load as cleanly."""
    light, log_light = opened(color_scheme="light")
    light.screenshot(path=str(artifacts / "report-top-light.png"))
    light.screenshot(path=str(artifacts / "report-full.png"), full_page=True)
    dark, log_dark = opened(color_scheme="dark")
    dark.screenshot(path=str(artifacts / "report-top-dark.png"))
    for name in ("report-top-light.png", "report-top-dark.png", "report-full.png"):
        assert (artifacts / name).stat().st_size > 5_000, name
    assert no_problems(log_light.problems() + log_dark.problems())


# ---------------------------------------------------------------- the checks themselves

_PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
    "hKmMIQAAAABJRU5ErkJggg=="
)
_FILLER = "<p>" + "Lorem ipsum dolor sit amet. " * 60 + "</p>"
_SORT_JS = """
document.querySelectorAll('table.sortable thead th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
  const rows = [...body.rows].sort((a, b) => (parseFloat(a.cells[col].textContent) - parseFloat(b.cells[col].textContent)) * (dir === 'ascending' ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
  th.closest('tr').querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', dir);
}));
"""


def _page_html(good: bool) -> str:
    sections = "".join(f'<section id="s{i}"><h2>Section {i}</h2>{_FILLER}</section>' for i in range(1, 5))
    table = (
        '<table class="sortable"><thead><tr><th>name</th><th>score</th></tr></thead><tbody>'
        "<tr><td>a</td><td>0.5</td></tr><tr><td>b</td><td>0.25</td></tr><tr><td>c</td><td>0.75</td></tr>"
        "</tbody></table>"
    )
    style = "nav { position: sticky; top: 0; height: 48px; background: #eee; z-index: 1 }" + (
        " section { scroll-margin-top: 56px }" if good else ""
    )  # broken: sections land under the nav
    links = "".join(f'<a href="#s{i}">{i}</a> ' for i in range(1, 5))
    if good:
        return (
            f"<!doctype html><style>{style}</style><nav id='nav'>{links}</nav>"
            f"<img alt='pixel' src='{_PIXEL}'>{table}{sections}<script>{_SORT_JS}</script>"
        )
    return (
        f"<!doctype html><style>{style}</style><nav id='nav'>{links}<a href='#nowhere'>x</a></nav>"
        f"<img alt='remote' src='https://example.com/x.png'><img alt='missing' src='missing.png'>"
        f"<img alt='corrupt' src='data:image/png;base64,AAAA'>"
        f"{table}{sections}<script>null.boom();</script>"
    )  # no sorting script: the click does nothing


def test_checks_pass_a_conforming_page(browser, tmp_path):
    path = tmp_path / "good.html"
    path.write_text(_page_html(good=True))
    page, log = open_page(browser, path.as_uri())
    try:
        assert image_problems(page) == []
        assert nav_problems(page) == []
        assert table_problems(page) == []
        assert log.problems() == []
    finally:
        page.context.close()


def test_checks_catch_a_broken_page(browser, tmp_path):
    path = tmp_path / "broken.html"
    path.write_text(_page_html(good=False))
    page, log = open_page(browser, path.as_uri())
    try:
        images = " / ".join(image_problems(page))
        nav = " / ".join(nav_problems(page))
        tables = " / ".join(table_problems(page))
        loaded = " / ".join(log.problems())
    finally:
        page.context.close()
    for alt in ("remote", "missing", "corrupt"):
        assert f"image did not load: {alt}" in images
    assert "link to a missing element: #nowhere" in nav
    assert "hidden under <nav#nav>" in nav  # no scroll-margin: sections land under the sticky nav
    assert "did not reorder" in tables
    assert "page error" in loaded and "boom" in loaded
    assert "request outside the report: https://example.com/x.png" in loaded
    assert "missing.png" in loaded  # another local file is not self-contained either
    assert "failed request" in loaded


# ------------------------------------------------------------------------ on a compare page


def test_compare_page_loads_clean_and_sorts(browser, default_run, tmp_path, audit, artifacts):
    """`audit compare` of the default run with a second, smaller run: the same checks as the report."""
    other = tmp_path / "other"
    r = audit(
        "run", "--probes", "filters,augment", "--set", "augment.shifts=contrast,fog", "--limit", "40", "--out", other
    )
    assert r.code == 0, r
    page_path = tmp_path / "compare.html"
    r = audit("compare", default_run, other, "--out", page_path)
    assert r.code == 0, r
    page, log = open_page(browser, page_path.as_uri())
    try:
        assert page.locator("table.sortable").count() > 0 and page.locator("td.better").count() > 0
        assert no_problems(nav_problems(page))
        assert no_problems(table_problems(page))
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(artifacts / "compare-top.png"))
        assert no_problems(log.problems())
    finally:
        page.context.close()
