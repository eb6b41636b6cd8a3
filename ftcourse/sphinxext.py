"""Sphinx extension for the course book: offline, accessible, numbered per chapter.

* MathJax 3 comes from the PyPI package ``django-static-mathjax`` (in the ``book`` extra). The
  extension points Sphinx's ``mathjax_path`` at ``_static/mathjax/tex-chtml.js`` and copies the
  files MathJax needs there when the build finishes, so math renders offline.
* A plot's alt text is the description that :func:`ftcourse.plots.figure_png` wrote into the
  PNG (its titles), not the image's file path.
* Exercises are numbered per chapter ("Exercise 3.2"), from the number in the chapter's title.
* The theme starts in "auto" mode (no console error), Thebe's scripts are left out (the book has
  no live-code button: they would load from a CDN, and were included twice), and the
  bibliography's entries get the ARIA role a list needs.
* Chapters link the first use of each glossary term to the glossary, and list the ``ftcourse``
  modules their code imports, linked to the API reference (``book/api``).
* Launch buttons: the Colab and Binder buttons exist only when ``repository.url`` is set in
  ``_config.yml`` (the one setting); the download button always.
* The notebooks' kernels talk over IPC files, as in ``ftcourse run``
  (:func:`ftcourse.cli.local_kernel`): no "Kernel is running over TCP without encryption"
  warning per notebook, no local port open to other users.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

from docutils import nodes

MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "adaptors")


def mathjax_source() -> Path:
    """The installed MathJax ``es5`` folder; a clear error if the package is missing."""
    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec else []
    es5 = Path(locations[0]) / "static" / "mathjax" / "es5" if locations else None
    if es5 is None or not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(
            "MathJax is not installed for the offline book build: "
            "pip install 'django-static-mathjax>=3.2' (part of ftcourse[book]; `make setup`)"
        )
    return es5


def _copy_mathjax(app: Any, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    dest = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / part)


LAUNCH_KEYS = ("colab_url", "binderhub_url", "jupyterhub_url", "thebe")


def launch_options(theme_options: dict) -> dict:
    """``theme_options`` with the launch buttons only where a repository URL is set.

    Colab and Binder open the notebook from the repository, so without one their buttons would
    lead nowhere: they are removed, and so is the repository button. Download stays.
    """
    options = dict(theme_options)
    if (options.get("repository_url") or "").strip():
        return options
    launch = dict(options.get("launch_buttons") or {})
    for key in LAUNCH_KEYS:
        launch.pop(key, None)
    options["launch_buttons"] = launch
    for key in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
        options[key] = False
    return options


def _configure(app: Any, config: Any) -> None:
    mathjax_source()  # fail early, before any page is built
    config.mathjax_path = "mathjax/tex-chtml.js"
    config.html_theme_options = launch_options(config.html_theme_options or {})
    config.html_context = {"default_mode": "auto", **(config.html_context or {})}


def kernels_over_ipc() -> bool:
    """Make myst-nb's executions (through jupyter-cache's ``executenb``) start each kernel with
    :func:`ftcourse.cli.local_kernel`; ``False`` where there is no such hook (nothing changed)."""
    import tempfile

    try:
        from jupyter_cache.executors import utils
    except ImportError:  # pragma: no cover - the book extra is not installed
        return False
    original = getattr(utils, "executenb", None)
    if original is None or getattr(original, "ftcourse_ipc", False):
        return original is not None

    from .cli import local_kernel

    def executenb(nb: Any, cwd: str | None = None, km: Any = None, **kwargs: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="ftcourse-kernel-") as folder:
            return original(nb, cwd=cwd, km=km, **{**local_kernel(folder), **kwargs})

    executenb.ftcourse_ipc = True  # type: ignore[attr-defined]
    utils.executenb = executenb
    return True


def _png_alt(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as png:
            return png.info.get("Description")
    except (OSError, ValueError):
        return None


def _alt_text(app: Any, doctree: Any, docname: str) -> None:
    """Give each PNG plot the alt text stored in it (see :func:`ftcourse.plots.figure_png`)."""
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        if not uri.lower().endswith(".png") or image.get("alt"):
            continue
        path = Path(app.srcdir) / uri
        if not path.is_file():
            path = Path(app.env.relfn2path(uri, docname)[1])
        alt = _png_alt(path) if path.is_file() else None
        if alt:
            image["alt"] = alt


CHAPTER_NUMBER = re.compile(r"^([A-Z]?\d+)\.\s")


def _number_exercises(app: Any, env: Any) -> list[str]:
    """Number exercises per chapter: chapter 3's first exercise is "Exercise 3.1".

    Runs after Sphinx has numbered them across the book (``env-get-updated``); the chapter's
    number is the one its title starts with. Pages without one keep Sphinx's numbers.
    """
    changed = []
    for docname, numbers in env.toc_fignumbers.items():
        exercises = numbers.get("exercise")
        title = env.titles.get(docname)
        match = CHAPTER_NUMBER.match(title.astext()) if title is not None else None
        if not exercises or match is None:
            continue
        chapter = int(match.group(1)) if match.group(1).isdigit() else match.group(1)
        ordered = sorted(exercises, key=lambda label: exercises[label])
        numbers["exercise"] = {label: (chapter, i) for i, label in enumerate(ordered, start=1)}
        changed.append(docname)
    return changed


API_PAGE = "book/api"
GLOSSARY_PAGE = "book/glossary"
IMPORTS = re.compile(
    r"^[ \t]*from ftcourse(\.[\w.]+)? import (?:\(([^)]*)\)|([\w, \t]+))", re.MULTILINE
)
NO_LINKS_INSIDE = (
    nodes.reference,
    nodes.literal,
    nodes.literal_block,
    nodes.title,
    nodes.rubric,
    nodes.math,
    nodes.math_block,
    nodes.raw,
    nodes.term,
    nodes.caption,
)


def imported_modules(code: str) -> list[str]:
    """The ``ftcourse`` modules that ``from ftcourse... import ...`` lines in ``code`` name."""
    found = []
    for match in IMPORTS.finditer(code):
        package = "ftcourse" + (match.group(1) or "")
        names = re.sub(r"#.*|\bas\s+\w+", "", match.group(2) or match.group(3))
        for name in re.split(r"[,\s]+", names):
            if not name or name == "as":
                continue
            candidate = f"{package}.{name}"
            module = candidate if _is_module(candidate) else package
            if module not in found:
                found.append(module)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _helpers_line(app: Any, doctree: Any, docname: str) -> None:
    """After a chapter's title: its ``ftcourse`` modules, linked to the API reference."""
    if docname == API_PAGE or API_PAGE not in app.env.all_docs:
        return
    code = "\n".join(
        block.astext()
        for block in doctree.findall(nodes.literal_block)
        if any("cell_input" in a.get("classes", []) for a in _ancestors(block))
    )
    modules = imported_modules(code)
    section = doctree.next_node(nodes.section)
    if not modules or section is None:
        return
    uri = app.builder.get_relative_uri(docname, API_PAGE)
    line = nodes.paragraph(classes=["ftcourse-helpers"])
    line += nodes.strong(text="ftcourse helpers in this chapter: ")
    for i, module in enumerate(modules):
        if i:
            line += nodes.Text(", ")
        link = nodes.reference("", "", internal=True, refuri=f"{uri}#module-{module}")
        link += nodes.literal(text=module)
        line += link
    line += nodes.Text(" (API reference).")
    section.insert(1, line)


def _term_patterns(app: Any) -> list[tuple[re.Pattern, str, str]]:
    """(pattern, page, anchor) for each glossary term, longest first."""
    objects = app.env.domaindata.get("std", {}).get("objects", {})
    patterns = []
    for (kind, name), (page, anchor) in objects.items():
        if kind != "term":
            continue
        for phrase in re.split(r",\s*", re.sub(r"\s*\(.*\)", "", name)):
            phrase = phrase.strip()
            if len(phrase) < 3:
                continue
            exact = any(c.isupper() for c in phrase[1:])
            flags = 0 if exact else re.IGNORECASE
            pattern = re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", flags)
            patterns.append((pattern, page, anchor))
    return sorted(patterns, key=lambda item: -len(item[0].pattern))


def _link_terms(app: Any, doctree: Any, docname: str) -> None:
    """Link the first use of each glossary term in a page's prose to its glossary entry."""
    if docname == GLOSSARY_PAGE or not docname.startswith("notebooks/"):
        return
    patterns = getattr(app, "_ftcourse_terms", None)
    if patterns is None:  # once per build: every page is read by now (doctree-resolved)
        patterns = app._ftcourse_terms = _term_patterns(app)
    linked: set[str] = set()
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if not isinstance(parent, (nodes.paragraph, nodes.emphasis, nodes.strong)):
            continue
        if any(isinstance(a, NO_LINKS_INSIDE) for a in _ancestors(text)):
            continue
        _link_in(app, text, docname, patterns, linked)


def _ancestors(node: Any):
    node = node.parent
    while isinstance(node, nodes.Element):
        yield node
        node = node.parent


def _link_in(app: Any, text: Any, docname: str, patterns: list, linked: set[str]) -> None:
    value = str(text)
    for pattern, page, anchor in patterns:
        if anchor in linked:
            continue
        match = pattern.search(value)
        if match is None:
            continue
        linked.add(anchor)
        uri = app.builder.get_relative_uri(docname, page) + "#" + anchor
        link = nodes.reference("", match.group(0), internal=True, refuri=uri, classes=["term-link"])
        link["reftitle"] = "glossary"
        before, after = nodes.Text(value[: match.start()]), nodes.Text(value[match.end() :])
        parent = text.parent
        index = parent.index(text)
        parent.replace(text, before)
        parent.insert(index + 1, link)
        parent.insert(index + 2, after)
        _link_in(app, before, docname, patterns, linked)
        _link_in(app, after, docname, patterns, linked)
        return


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Leave out Thebe's scripts (never used here; once was doubled) and fix list roles."""
    thebe = bool((app.config.html_theme_options.get("launch_buttons") or {}).get("thebe"))
    kept, seen = [], set()
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body", "")
        name = str(getattr(script, "filename", script) or "")
        if not thebe and ("thebe" in name or "THEBE_JS_URL" in body):
            continue
        if (name, body) in seen:
            continue
        seen.add((name, body))
        kept.append(script)
    context["script_files"] = kept
    if not thebe:
        context["css_files"] = [
            css
            for css in context.get("css_files", [])
            if "thebe" not in str(getattr(css, "filename", css))
        ]
    if "body" in context:
        # sphinxcontrib-bibtex writes role="list" with doc-biblioentry children: axe-core's
        # aria-required-children (critical) wants listitems.
        context["body"] = context["body"].replace('role="doc-biblioentry"', 'role="listitem"')


def setup(app: Any) -> dict:
    kernels_over_ipc()
    app.connect("config-inited", _configure)
    app.connect("doctree-resolved", _alt_text)
    app.connect("doctree-resolved", _helpers_line)
    app.connect("doctree-resolved", _link_terms)
    app.connect("env-get-updated", _number_exercises, priority=900)
    app.connect("html-page-context", _page_context, priority=900)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
