"""The first and last cell of every notebook: set-up, then the run's own runtime.

:func:`start` replaces the twenty lines of set-up each notebook used to repeat: it resolves
the profile and the device, starts the report, reads the chapter's settings, resolves the
``MODEL`` parameter (``None`` means the profile's default), prints what this run uses (versions,
CPU, precision) and glues the measured runtime line that the notebook's first cell cites.
:func:`finish` glues how long this very run took, on which machine. Introduced in chapter 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import __version__, bench, plots, precision, report, train
from .precision import resolve_device
from .profiles import Profile, get_profile


@dataclass
class Chapter:
    """What a notebook's set-up cell produces."""

    notebook: str
    profile: Profile
    cfg: dict[str, Any]
    device: torch.device
    model: str | None


_current: Chapter | None = None


def start(
    notebook: str,
    profile: str,
    device: str = "auto",
    section: str | None = None,
    model: str | None = None,
) -> Chapter:
    """Set up a notebook run: profile, device, report, settings and model.

    Args:
        notebook: the notebook's file stem (``"00_quickstart"``), the name of its report.
        section: the prefix of the chapter's settings in the profile table (``"quickstart"``).
        model: the notebook's ``MODEL`` parameter; ``None`` takes ``<section>.model`` from the
            profile (recorded as the metric ``model``).
    """
    global _current
    prof = get_profile(profile)
    dev = resolve_device(device)
    cfg = prof.section(section) if section else {}
    if model and cfg.get("model"):
        check_model_kind(notebook, model, cfg["model"])
    model = model or cfg.get("model")
    if not train.show_progress():
        _quiet_libraries()
    _import_libraries()
    report.start(notebook, prof.name)  # the clock of the profile's budget starts here
    cpu = precision.cpu_info()
    where = f"{dev}" if dev.type != "cpu" else f"{cpu.model}, {cpu.threads} threads"
    print(
        f"ftcourse {__version__}, torch {torch.__version__}; profile {prof.name!r}; "
        f"device {where}; training in {precision.describe(dev)}"
        + (f"; model {model}" if model else "")
    )
    plots.use_book_style()
    report.glue("runtime", bench.runtime_line(notebook))
    if model:
        report.record("model", model)
    _current = Chapter(notebook, prof, cfg, dev, model)
    return _current


def check_model_kind(notebook: str, model: str, default: str) -> None:
    """``ValueError`` when ``model`` is not of the kind of the chapter's ``default`` model: a
    vision chapter given a language model (or the reverse) says so before any work."""
    from . import models

    wanted, given = models.kind(default), models.kind(model)
    if given is not None and wanted is not None and given != wanted:
        names = {"vision": "an image model", "lm": "a language model"}
        choices = [n for n in models.ZOO if models.kind(n) == wanted]
        raise ValueError(
            f"{notebook} trains {names[wanted]}, and MODEL={model!r} is {names[given]}: "
            f"choose one of {', '.join(choices)} (or a folder or hub id of that kind)"
        )


def _import_libraries() -> None:
    """Import, before the clock starts, what loading any zoo model imports on first use.

    A profile's budget times the notebook's work; Python's imports take the same 3-6 s in
    every profile (torchvision alone 2 s on a slow CPU), and transformers defers its model and
    tokenizer modules (and, through its image utilities, torchvision) until a model is loaded.
    """
    import torchvision  # noqa: F401  (timm and transformers' image utilities import it)
    from transformers.models.auto import tokenization_auto  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401  (tiny-lm, SmolLM2)

    try:  # report.glue's first call imports nbformat, jsonschema... (the book extra)
        import myst_nb.ext.glue  # noqa: F401
    except ImportError:  # pragma: no cover - glue then does nothing
        pass


def _quiet_libraries() -> None:
    """No progress bars from transformers or the Hub (``$FTCOURSE_PROGRESS=0``).

    In Jupyter their bars are widgets, and a page with a widget loads its JavaScript from CDNs.
    """
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def finish() -> None:
    """Glue ``this_run`` (seconds, profile, machine) for the first cell and print it.

    Returns ``None``, so the notebook's last cell shows no bare number.
    """
    if _current is None:
        raise RuntimeError("call ftcourse.chapter.start(...) first")
    seconds = report.elapsed()
    dev = _current.device
    machine = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"{precision.cpu_info().model} ({precision.cpu_info().threads} threads)"
    )
    report.glue(
        "this_run",
        f"{seconds:.0f} s in the `{_current.profile.name}` profile on {machine}, "
        f"{precision.describe(dev)}",
    )
    print(f"this run: {seconds:.1f} s")
