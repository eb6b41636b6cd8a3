"""The few plot types the book uses: learning curves over seeds, mean ± spread, bars.

Each function draws on a matplotlib ``Axes`` (a new figure when none is given) and returns it.
:func:`save` also writes the figure as PNG beside the notebook's report, so figures can be
looked at outside Jupyter. Introduced in chapter 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .report import REPORT_DIR_ENV
from .train import History


def _axes(ax: plt.Axes | None, title: str | None) -> plt.Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def learning_curves(
    runs: Mapping[str, Sequence[History]],
    metric: str = "val_acc",
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Mean curve of ``metric`` per label with a min-max band over the runs (seeds)."""
    ax = _axes(ax, title)
    for label, histories in runs.items():
        values = np.array([getattr(h, metric) for h in histories], dtype=float)
        epochs = histories[0].epoch
        mean = values.mean(axis=0)
        (line,) = ax.plot(epochs, mean, label=f"{label} (n={len(histories)})")
        if len(histories) > 1:
            ax.fill_between(
                epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend()
    return ax


def mean_spread(
    x: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ax: plt.Axes | None = None,
    title: str | None = None,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
) -> plt.Axes:
    """Lines of mean ± standard deviation, e.g. accuracy against labels per class."""
    ax = _axes(ax, title)
    for label, (mean, std) in series.items():
        mean, std = np.asarray(mean, float), np.asarray(std, float)
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def bars(
    values: Mapping[str, float],
    ax: plt.Axes | None = None,
    title: str | None = None,
    ylabel: str = "",
    errors: Mapping[str, float] | None = None,
) -> plt.Axes:
    """One bar per label, the value printed on top."""
    ax = _axes(ax, title)
    labels = list(values)
    heights = [values[k] for k in labels]
    yerr = [errors[k] for k in labels] if errors else None
    drawn = ax.bar(labels, heights, yerr=yerr, capsize=4, color="C0")
    ax.bar_label(drawn, fmt="%.3f", padding=3)
    ax.set_ylabel(ylabel)
    return ax


def save(fig: plt.Figure, name: str) -> Path | None:
    """Save ``fig`` as ``$FTCOURSE_REPORT_DIR/figures/<name>.png`` when that variable is set."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
