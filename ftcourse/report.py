"""Measurements a notebook makes, and the checks that tie the prose to them.

Every notebook calls :func:`start` in its setup cell, :func:`record` for each number it
measures, and in its closing "What we measured" section two kinds of statement:

* :func:`check` for an **invariant**: an exact, machine-independent fact (equal to peft's
  output, frozen weights bit-identical, an accounting identity). A broken invariant is a bug:
  it fails the notebook and the book build.
* :func:`finding` for a **finding**: the outcome of a statistical comparison in this run (arm
  A ahead of arm B, a difference within a bound). Its outcome is printed and recorded, and
  never fails anything: a learner's CPU rounds differently from ours, and a few seeds can land
  either way. The claim itself is settled by the chapter's stored reference study
  (:mod:`ftcourse.studies`), which ``tests/test_studies.py`` checks.

When ``$FTCOURSE_REPORT_DIR`` is set, the metrics land in ``$FTCOURSE_REPORT_DIR/<notebook>.json``::

    {"notebook": "00_quickstart", "profile": "cpu", "seconds": 95.2, "metrics": {...}}

The file is rewritten after every call, so a notebook that fails half-way still leaves what it
measured. Benchmarks and tests read these files; metric names are part of the contract.
Introduced in chapter 0.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Any

REPORT_DIR_ENV = "FTCOURSE_REPORT_DIR"


class ClaimFailed(AssertionError):
    """A claim of the text does not hold for this run's measurements."""


class _Run:
    def __init__(self, notebook: str, profile: str) -> None:
        self.notebook = notebook
        self.profile = profile
        self.started = time.perf_counter()
        self.metrics: dict[str, Any] = {}
        self.claims: list[tuple[str, str, bool, str]] = []  # claim, measured, holds, kind


_run: _Run | None = None


def start(notebook: str, profile: str) -> None:
    """Begin a report for ``notebook`` (its file stem, e.g. ``"00_quickstart"``)."""
    global _run
    if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
        raise ValueError(f"notebook must be a file stem like '00_quickstart', not {notebook!r}")
    _run = _Run(notebook, profile)
    _write()


def _current() -> _Run:
    if _run is None:
        raise RuntimeError("call ftcourse.report.start(notebook, profile) before record()")
    return _run


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors/arrays become lists or floats; NaN is refused; dicts need
    string keys (e.g. accuracy per task)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a recorded dict needs string keys")
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric value {value!r} is not finite")
        return value
    raise TypeError(f"cannot record a {type(value).__name__}; use numbers, strings, lists or dicts")


def record(name: str, value: Any) -> None:
    """Record metric ``name`` for the current notebook; a number is also glued (:func:`glue`).

    Returns ``None``, so a cell ending in ``record(...)`` prints nothing.
    """
    run = _current()
    run.metrics[name] = _jsonable(value)
    _write()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        glue(name, value)


def glue(name: str, value: Any) -> None:
    """Make ``value`` citable from the notebook's Markdown, so prose numbers come from the run.

    Numbers are cited as ``{glue:text}`name:.3f```; strings are treated as Markdown and cited
    as ``{glue:md}`name```. Nothing is displayed in the notebook. Without ``myst_nb`` (the
    ``book`` extra) this does nothing. Introduced in chapter 0.
    """
    try:
        from IPython.display import Markdown
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - the book extra is not installed
        return
    if isinstance(value, str):
        value = Markdown(value)
    elif hasattr(value, "item"):
        value = value.item()
    _glue(name, value, display=False)


def elapsed() -> float:
    """Seconds since :func:`start` of the current notebook run."""
    return time.perf_counter() - _current().started


def metrics() -> dict[str, Any]:
    """The metrics recorded so far in this notebook run."""
    return dict(_current().metrics)


def check(claim: str, holds: bool, measured: str = "") -> None:
    """State an **invariant** beside what this run measured; a broken one fails the run.

    Prints ``✓``/``✗`` with the claim and returns nothing (a cell that ends with a check
    shows no echoed value). In the ``cpu`` and ``gpu`` profiles an invariant that
    does not hold raises :class:`ClaimFailed`, which fails the notebook and the book build; in
    ``smoke`` (tiny sizes) it only prints. Use it for exact facts only (equalities,
    identities, bit-identical weights); a statistical comparison is a :func:`finding`.
    Taught in chapter 0.
    """
    run = _current()
    holds = bool(holds)
    run.claims.append((claim, measured, holds, "invariant"))
    print(f"{'✓' if holds else '✗'} {claim}" + (f"  [{measured}]" if measured else ""))
    _write()
    if not holds and run.profile != "smoke":
        raise ClaimFailed(f"claim does not hold in profile {run.profile!r}: {claim} ({measured})")


def finding(claim: str, holds: bool, measured: str = "") -> None:
    """State a **finding**: whether this run's statistics support ``claim``. Never raises.

    Prints a generated line, ``"● this run supports: <claim> [<measured>]"`` or
    ``"○ this run does not support: <claim> [...]"``, and records it in the report (kind
    ``finding``). Whether the claim is *true* is settled by the chapter's reference study,
    not by one run. Taught in chapter 0.
    """
    run = _current()
    holds = bool(holds)
    run.claims.append((claim, measured, holds, "finding"))
    line = f"{'● this run supports' if holds else '○ this run does not support'}: {claim}" + (
        f"  [{measured}]" if measured else ""
    )
    print(line)
    _write()


def report_path() -> Path | None:
    """Where the current report is written (``None`` when ``$FTCOURSE_REPORT_DIR`` is unset)."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder or _run is None:
        return None
    return Path(folder) / f"{_run.notebook}.json"


def _write() -> None:
    path = report_path()
    if path is None:
        return
    run = _current()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "notebook": run.notebook,
        "profile": run.profile,
        "seconds": round(time.perf_counter() - run.started, 2),
        "metrics": run.metrics,
        "claims": [{"claim": c, "measured": m, "holds": h, "kind": k} for c, m, h, k in run.claims],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def read(path: str | Path) -> dict:
    """Read a report file and check it has the contract's keys."""
    payload = json.loads(Path(path).read_text())
    missing = {"notebook", "profile", "seconds", "metrics"} - set(payload)
    if missing:
        raise ValueError(f"{path} is not an ftcourse report: missing {sorted(missing)}")
    return payload
