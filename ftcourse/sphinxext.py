"""Sphinx extension for the course book: MathJax served from the build, not from a CDN.

MathJax 3 comes from the PyPI package ``django-static-mathjax`` (in the ``book`` extra). The
extension points Sphinx's ``mathjax_path`` at ``_static/mathjax/tex-chtml.js`` and copies the
files MathJax needs there when the build finishes, so math renders offline.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

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


def _configure(app: Any, config: Any) -> None:
    mathjax_source()  # fail early, before any page is built
    config.mathjax_path = "mathjax/tex-chtml.js"


def setup(app: Any) -> dict:
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
