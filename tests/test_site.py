"""The course website as a reader meets it: every page of ``_toc.yml`` in headless Chromium.

The book is built in the ``smoke`` profile into ``_build/site-smoke`` (a few minutes; reused while
the notebooks, the package and the book's sources are unchanged), served on 127.0.0.1 and read
by Playwright. ``FTCOURSE_SITE=_build/html`` tests an existing build instead (the ``cpu`` book of
``make book``). Chromium comes from Debian (``apt-get install chromium``, run by ``make setup``
as root) or from ``$FTCOURSE_CHROMIUM``; without it these tests fail with one line saying so.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import sitecheck

PAGES = sitecheck.toc_pages()
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]
SCREENSHOTS = sitecheck.ROOT / "_build" / "screenshots"


@pytest.fixture(scope="session")
def site_html() -> Path:
    given = os.environ.get("FTCOURSE_SITE")
    return Path(given).resolve() if given else sitecheck.build_smoke_site()


@pytest.fixture(scope="session")
def site(site_html):
    try:
        chromium = sitecheck.find_chromium()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    served = sitecheck.Site(site_html, chromium)
    yield served
    served.close()


@pytest.fixture(scope="session")
def audits(site):
    cache: dict[str, sitecheck.Audit] = {}

    def audit(page: str) -> sitecheck.Audit:
        if page not in cache:
            cache[page] = site.audit(page)
        return cache[page]

    return audit


def test_every_toc_page_was_built(site_html):
    missing = [p for p in PAGES if not (site_html / p).is_file()]
    assert not missing, f"pages of _toc.yml missing from the build: {missing}"


@pytest.mark.parametrize("page", PAGES)
def test_page_reads_cleanly(page, audits, site_html):
    """No console error, no failed or off-machine request, images, math, links, code, axe."""
    found = sitecheck.problems(audits(page), site_html)
    failed = {check: items[:5] for check, items in found.items() if items}
    assert not failed, f"{page}: {failed}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_shows_code_outputs_and_described_plots(page, audits):
    audit = audits(page)
    assert audit.code_blocks > 0 and audit.outputs > 0, (audit.code_blocks, audit.outputs)
    for image in audit.images:
        assert image["alt"].startswith("Figure"), image


def test_dark_theme_renders(site):
    tab, seen = site.open(CHAPTERS[0], dark=True)
    theme = tab.evaluate("document.documentElement.dataset.theme")
    background = tab.evaluate("getComputedStyle(document.body).backgroundColor")
    tab.context.close()
    assert theme == "dark", theme
    rgb = [int(v) for v in re.findall(r"\d+", background)[:3]]
    assert sum(rgb) / 3 < 60, f"dark theme background is {background}"
    assert not seen["console"] and not seen["errors"], seen


@pytest.mark.parametrize(
    ("query", "expected"),
    [("LoRA", "notebooks/05_lora.html"), ("catastrophic forgetting", "notebooks/02_full")],
)
def test_search_finds_the_chapters(site, query, expected):
    tab, seen = site.open(f"search.html?q={query.replace(' ', '+')}")
    tab.wait_for_selector("#search-results ul.search li", timeout=20_000)
    links = tab.eval_on_selector_all("#search-results ul.search li a", "a => a.map(x => x.href)")
    tab.context.close()
    assert any(expected in link for link in links), links[:10]


def test_screenshots(site):
    """Intro, a chapter and the glossary as PNGs under _build/screenshots/, to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in [
        ("intro", "book/intro.html"),
        ("chapter", "notebooks/05_lora.html"),
        ("glossary", "book/glossary.html"),
    ]:
        tab, _ = site.open(page)
        tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
        tab.context.close()
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_a_broken_page_fails_the_checks(site, site_html, tmp_path):
    """The checks can fail: a copy of a chapter with a missing image and bad TeX is caught."""
    copy = tmp_path / "html"
    shutil.copytree(site_html, copy)
    page = copy / CHAPTERS[0]
    head, article = page.read_text().split("<article", 1)
    missing = r'\1../_images/missing.png"'
    article, images = re.subn(r'(<img[^>]*src=")[^"]+"', missing, article, count=1)
    assert images == 1, "the chapter chosen for this test has no image"
    # a TeX error (a fraction without its second argument) and raw TeX outside any math
    tex_error = '<span class="math notranslate nohighlight">\\(\\frac{1}\\)</span>'
    article = article.replace(">", f"><p>$$\\frac{{1}}{{0$$ and {tex_error}</p>", 1)
    page.write_text(head + "<article" + article)
    broken = sitecheck.Site(copy, browser=site.browser)
    try:
        found = sitecheck.problems(broken.audit(CHAPTERS[0]), copy)
    finally:
        broken.close()
    summary = {check: len(items) for check, items in found.items()}
    assert found["broken images"], summary
    assert found["failed requests"], summary
    assert found["raw TeX left untypeset"], summary
    assert found["TeX errors"], summary
