"""Drive the built course website in headless Chromium and collect what a reader would meet.

Used by ``tests/test_site.py`` (part of ``make test``). :func:`build_smoke_site` builds the book
in the ``smoke`` profile into ``_build/site-smoke``; :class:`Site` serves a built site on
127.0.0.1 and :meth:`Site.audit` loads one page and records console errors, failed or
off-machine requests, images, math, links, code-block widths, plot text sizes and axe-core
violations.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SITE = ROOT / "_build" / "site-smoke"
CHROMIUM_ENV = "FTCOURSE_CHROMIUM"
CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "/usr/lib/chromium/chrome",
    "/usr/lib/chromium-headless-shell/chrome-headless-shell",
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
)
INSTALL_HINT = (
    "no Chromium found for the browser tests: run `make setup` as root (it runs "
    "`apt-get install chromium`), or install Chromium yourself and set "
    f"{CHROMIUM_ENV}=/path/to/chromium"
)
# The inputs of the smoke site; a change to any of them rebuilds it.
SITE_INPUTS = ("_config.yml", "_toc.yml", "book", "notebooks", "ftcourse", "benchmarks/results")


def find_chromium() -> str:
    """The Chromium executable Playwright drives (``$FTCOURSE_CHROMIUM`` first)."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"{CHROMIUM_ENV}={given} is not a file. {INSTALL_HINT}")
        return given
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(INSTALL_HINT)


def toc_pages(root: Path = ROOT) -> list[str]:
    """Every page of ``_toc.yml``, relative to the site root (``notebooks/05_lora.html``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = ["index.html", f"{toc['root']}.html"]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            pages.append(f"{chapter['file']}.html")
            pages += [f"{s['file']}.html" for s in chapter.get("sections", [])]
    return pages


def _inputs_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for name in SITE_INPUTS:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or ".ipynb_checkpoints" in file.parts:
                continue
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build_smoke_site(root: Path = ROOT, out: Path = SMOKE_SITE, force: bool = False) -> Path:
    """Build the book in the ``smoke`` profile into ``out``; return the HTML folder.

    The build has its own execution cache, so it never mixes ``smoke`` outputs into the ``cpu``
    book of ``make book``. An unchanged source tree (same hash of :data:`SITE_INPUTS`) reuses the
    last build.
    """
    html = out / "_build" / "html"
    stamp = out / "inputs.sha256"
    key = _inputs_hash(root)
    if not force and html.is_dir() and stamp.is_file() and stamp.read_text() == key:
        return html
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["execute"]["cache"] = str(out / "jupyter_cache")
    (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(
        os.environ,
        FTCOURSE_PROFILE="smoke",
        FTCOURSE_PROGRESS="0",
        TQDM_DISABLE="1",
        FTCOURSE_REPORT_DIR=str(out / "reports"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FTCOURSE_OFFLINE="1",
    )
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(root), "--config", str(out / "_config.yml")]
    cmd += ["--path-output", str(out), "-W", "-n", "--keep-going", "-q"]
    log = out / "build.log"
    with log.open("w") as handle:
        result = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"the smoke book build failed (log: {log}):\n{tail}")
    stamp.write_text(key)
    return html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclasses.dataclass
class Audit:
    """What one page showed a reader."""

    page: str
    console_errors: list[str]
    page_errors: list[str]
    failed_requests: list[str]
    offsite_requests: list[str]
    images: list[dict]
    math_elements: int
    raw_tex: list[str]
    tex_errors: list[str]
    internal_links: list[str]
    code_blocks: int
    outputs: int
    wide_blocks: list[dict]
    plots: list[dict]
    bare_outputs: list[str]
    axe: list[dict]


AUDIT_JS = """
() => {
  const vis = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const images = [...document.querySelectorAll('article img')].map(img => ({
    src: img.currentSrc || img.src, alt: img.getAttribute('alt') || '',
    natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
    complete: img.complete}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const blocks = [...document.querySelectorAll('article pre')].filter(vis).map(pre => ({
    text: pre.innerText.split('\\n').sort((a, b) => b.length - a.length)[0].slice(0, 100),
    scroll: pre.scrollWidth, client: pre.clientWidth}));
  const walker = document.createTreeWalker(document.querySelector('article') || document.body,
    NodeFilter.SHOW_TEXT);
  const tex = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (p.closest('pre, code, script, style, mjx-container, .MathJax')) continue;
    const m = n.textContent.match(/\\$\\$|\\\\\\(|\\\\\\[|\\\\begin\\{|\\\\frac|\\\\mathrm/);
    if (m) tex.push(n.textContent.trim().slice(0, 80));
  }
  return {images, links, blocks,
    math: document.querySelectorAll('mjx-container').length,
    texErrors: [...document.querySelectorAll('mjx-merror')]
      .map(e => e.getAttribute('data-mjx-error') || e.textContent),
    code: document.querySelectorAll('article div.cell_input, article div.highlight').length,
    outputs: document.querySelectorAll('article div.cell_output').length, tex,
    bare: [...document.querySelectorAll('article div.cell_output div.output')]
      .map(o => o.innerText.trim())
      .filter(t => /^(-?[0-9.]+(e[-+]?[0-9]+)?|True|False|None)$/.test(t))};
}
"""


class Site:
    """A built site served on 127.0.0.1 and a headless Chromium to read it with."""

    def __init__(self, html: Path, chromium: str | None = None, browser=None) -> None:
        """Serve ``html``; read it with ``browser`` (another Site's) or a new Chromium."""
        from playwright.sync_api import sync_playwright

        self.html = html
        handler = functools.partial(_QuietHandler, directory=str(html))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._pw = None
        if browser is not None:
            self.browser = browser
            return
        self._pw = sync_playwright().start()
        # Every host but this one resolves to nothing: a request off the machine fails here as
        # it would offline, and the "request" listener records it.
        self.browser = self._pw.chromium.launch(
            executable_path=chromium or find_chromium(),
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )

    def close(self) -> None:
        if self._pw is not None:
            self.browser.close()
            self._pw.stop()
        self.server.shutdown()

    def open(self, page: str, width: int = 1280, dark: bool = False):
        """A new browser page showing ``page`` (and the lists its listeners fill)."""
        context = self.browser.new_context(
            viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light"
        )
        if dark:
            context.add_init_script("localStorage.setItem('theme', 'dark')")
        tab = context.new_page()
        seen: dict[str, list[str]] = {"console": [], "errors": [], "failed": [], "offsite": []}
        tab.on(
            "console",
            lambda m: (
                seen["console"].append(f"{m.text} ({m.location.get('url', '')})")
                if m.type == "error"
                else None
            ),
        )
        tab.on("pageerror", lambda e: seen["errors"].append(str(e)))
        tab.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} ({r.failure})"))

        def _response(response):
            if response.status >= 400:
                seen["failed"].append(f"{response.url} (HTTP {response.status})")

        tab.on("response", _response)

        def _request(request):
            url = request.url
            if not url.startswith(("data:", "blob:")) and urlparse(url).hostname != "127.0.0.1":
                seen["offsite"].append(url)

        tab.on("request", _request)
        tab.goto(urljoin(self.base, page), wait_until="load")
        tab.wait_for_load_state("networkidle")
        if tab.query_selector("mjx-container, .math") is not None:
            # MathJax loads deferred; wait until it exists, then until its typesetting is done
            tab.wait_for_function("() => window.MathJax && MathJax.startup", timeout=20_000)
            tab.evaluate(
                "() => MathJax.startup.promise ? MathJax.startup.promise.then(() => true) : true"
            )
        return tab, seen

    def audit(self, page: str) -> Audit:
        """Load ``page`` at 1280 px and record everything the tests check."""
        from axe_playwright_python.sync_playwright import Axe

        tab, seen = self.open(page)
        found = tab.evaluate(AUDIT_JS)
        plots = [_plot_text(self.html, image, self.base) for image in found["images"]]
        seen = {key: list(values) for key, values in seen.items()}  # what the page did itself
        # axe-core's "preload" fetches stylesheets again and resolves their @imports against the
        # page, not the sheet (a 404 no reader would see); the rules run without it.
        axe = Axe().run(tab, options={"resultTypes": ["violations"], "preload": False})
        axe = axe.response.get("violations", [])
        tab.context.close()
        return Audit(
            page=page,
            console_errors=seen["console"],
            page_errors=seen["errors"],
            failed_requests=seen["failed"],
            offsite_requests=seen["offsite"],
            images=found["images"],
            math_elements=found["math"],
            raw_tex=found["tex"],
            tex_errors=found["texErrors"],
            internal_links=[u for u in found["links"] if u.startswith(self.base)],
            code_blocks=found["code"],
            outputs=found["outputs"],
            wide_blocks=[b for b in found["blocks"] if b["scroll"] > b["client"] + 1],
            plots=[p for p in plots if p is not None],
            bare_outputs=found["bare"],
            axe=[
                {
                    "id": v["id"],
                    "impact": v["impact"],
                    "help": v["help"],
                    "nodes": [n["target"] for n in v["nodes"]][:3],
                }
                for v in axe
            ],
        )


def problems(audit: Audit, html: Path, min_font_px: float = 11.0) -> dict[str, list]:
    """Every check of the browser tests on one page: check name -> what failed (empty: passed)."""
    return {
        "console errors": audit.console_errors,
        "uncaught exceptions": audit.page_errors,
        "failed requests": audit.failed_requests,
        "requests off the machine": audit.offsite_requests,
        "broken images": [i["src"] for i in audit.images if not i["natural"]],
        "images without a description": [
            i["src"] for i in audit.images if not i["alt"].strip() or "_images/" in i["alt"]
        ],
        "raw TeX left untypeset": audit.raw_tex,
        "TeX errors": audit.tex_errors,
        "broken internal links": broken_links(audit.internal_links, html),
        "code wider than its column": [b["text"] for b in audit.wide_blocks],
        "plots without font metadata": [p["src"] for p in audit.plots if p["shown_px"] is None],
        f"plot text under {min_font_px:g} px": [
            f"{p['src']}: {p['shown_px']:.1f} px"
            for p in audit.plots
            if p["shown_px"] is not None and p["shown_px"] < min_font_px
        ],
        "bare values after cells": audit.bare_outputs,
        "serious or critical axe violations": [
            v for v in audit.axe if v["impact"] in ("serious", "critical")
        ],
    }


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\sid="([^"]+)"', path.read_text(errors="replace")))


def broken_links(urls: list[str], html: Path) -> list[str]:
    """Same-site links whose file, or whose ``#anchor`` in that file, does not exist."""
    broken = []
    for url in sorted(set(urls)):
        parsed = urlparse(url)
        path = html / unquote(parsed.path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(url)
        elif (
            parsed.fragment
            and path.suffix == ".html"
            and unquote(parsed.fragment) not in _ids(path)
        ):
            broken.append(url)
    return broken


def _plot_text(html: Path, image: dict, base: str) -> dict | None:
    """The smallest text of a course plot as displayed, from the PNG's own metadata."""
    from PIL import Image

    if not image["src"].startswith(base):
        return None
    path = html / urlparse(image["src"]).path.lstrip("/")
    if path.suffix.lower() != ".png" or not path.is_file():
        return None
    with Image.open(path) as png:
        smallest = png.info.get("ftcourse:min_font_px")
    if smallest is None or not image["natural"]:
        return {"src": image["src"], "min_font_px": None, "shown_px": None}
    shown = float(smallest) * image["shown"] / image["natural"]
    return {"src": image["src"], "min_font_px": float(smallest), "shown_px": shown}
