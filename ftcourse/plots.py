"""The few plot types the book uses: learning curves over seeds, mean ± spread, bars.

Each function draws on a matplotlib ``Axes`` (a new figure when none is given) and returns it.
:func:`save` also writes the figure as PNG beside the notebook's report, so figures can be
looked at outside Jupyter. :func:`use_book_style` (called by :func:`ftcourse.chapter.start`)
sets a colour-blind-safe palette and makes every figure a notebook shows carry its alt text and
its smallest font size in the PNG (:func:`figure_png`); the book and its browser tests read
them. Introduced in chapter 0.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.text import Text

from .report import REPORT_DIR_ENV
from .train import History

# Okabe & Ito's colour-blind-safe palette (blue, orange, green, vermillion, reddish purple, sky
# blue, black, yellow): told apart under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
#: The book's style. 11 pt text at 100 dpi is 15 px in the PNG, so a figure up to ~9 inches
#: wide still shows its text at >= 11 px in the book's column (the browser tests check it).
BOOK_STYLE = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "font.size": 11,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
# PNG text keys that :func:`figure_png` writes: the alt text and the smallest font in pixels.
ALT_KEY = "Description"
MIN_FONT_KEY = "ftcourse:min_font_px"


def alt_text(fig: Figure) -> str:
    """A description of ``fig`` from its titles: the suptitle, then each panel's title.

    A panel without a title is described by its axis labels. Used as the figure's alt text.
    """
    parts = []
    suptitle = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    if suptitle:
        parts.append(suptitle.strip().rstrip("."))
    panels = []
    for ax in fig.axes:
        title = ax.get_title() or ax.get_title("left") or ax.get_title("right")
        if title:
            panels.append(title.strip())
        elif ax.get_xlabel() and ax.get_ylabel():
            panels.append(f"{ax.get_ylabel()} against {ax.get_xlabel()}")
        elif ax.get_xlabel() or ax.get_ylabel():
            panels.append(ax.get_ylabel() or ax.get_xlabel())
    if panels and len(panels) > 1:
        parts.append("Panels: " + "; ".join(panels))
    elif panels and not parts:
        parts.append(panels[0])
    text = ". ".join(parts).replace("\n", " ").replace("$", "")
    return f"Figure: {text}." if text else "Figure without a title."


def smallest_font_px(fig: Figure) -> float | None:
    """The smallest visible text of ``fig`` in pixels of its PNG (at ``fig.dpi``)."""
    fig.draw_without_rendering()
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and t.get_figure() is not None
    ]
    return min(sizes) * fig.dpi / 72 if sizes else None


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes with its alt text and smallest font size in the PNG's text chunks."""
    metadata = {ALT_KEY: alt_text(fig)}
    smallest = smallest_font_px(fig)
    if smallest is not None:
        metadata[MIN_FONT_KEY] = f"{smallest:.2f}"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE`; in Jupyter, show figures through :func:`figure_png`."""
    plt.rcParams.update(BOOK_STYLE)
    try:
        import matplotlib_inline.backend_inline  # noqa: F401  (sets up inline figures first)
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - outside Jupyter
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png)


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


def intervals(
    values: Mapping[str, Mapping[str, tuple[float, float, float]]],
    ax: plt.Axes | None = None,
    title: str | None = None,
    xlabel: str = "test accuracy",
) -> plt.Axes:
    """Means with their 95 % intervals, one row per label and one colour per series:
    ``values[label][series] = (mean, low, high)`` (e.g. series = a study's numeric regimes,
    or "this run" and "reference study"). Used by chapter 0 and the reference studies."""
    ax = _axes(ax, title)
    labels = list(values)
    series = list(dict.fromkeys(k for v in values.values() for k in v))
    height = 0.8 / max(len(series), 1)
    for j, name in enumerate(series):
        for i, label in enumerate(labels):
            if name not in values[label]:
                continue
            mean, low, high = values[label][name]
            y = i + (j - (len(series) - 1) / 2) * height
            ax.errorbar(
                mean,
                y,
                xerr=[[mean - low], [high - mean]],
                fmt="o",
                color=f"C{j}",
                capsize=3,
                label=name if i == 0 or name not in values[labels[0]] else None,
            )
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    if len(series) > 1:
        ax.legend(loc="best")
    return ax


def lr_choice(
    rows: Sequence[Mapping[str, Any]],
    arms: Sequence[str],
    budgets: Sequence[Any],
    chosen: Mapping[str, Sequence[float | None]],
    title: str,
    key: str = "labels_per_class",
    panel_title: str = "{} labels per class",
) -> plt.Figure:
    """The evidence for stored learning rates: mean validation accuracy against the rate, one
    panel per value of ``key`` in ``budgets`` (label budgets by default; chapters 4 and 5:
    tasks), one line per arm, the chosen rate circled. ``rows`` are
    ``benchmarks/select_lr.py``'s CSV rows; ``chosen[arm]`` is aligned with ``budgets`` (an
    arm with no rows in a panel is left out of it). Used by chapters 4, 5 and 8."""
    fig, axes = plt.subplots(1, len(budgets), figsize=(9, 3.4), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], budgets, strict=True):
        for i, arm in enumerate(arms):
            sel = [r for r in rows if r["arm"] == arm and str(r[key]) == str(panel)]
            if not sel:
                continue
            lrs = sorted({float(r["lr"]) for r in sel})
            means = [
                np.mean([float(r["val_acc"]) for r in sel if float(r["lr"]) == lr]) for lr in lrs
            ]
            ax.plot(lrs, means, "o-", color=f"C{i % 10}", label=arm)
            lr = chosen[arm][list(budgets).index(panel)]
            if lr is not None:
                ax.plot([lr], [means[lrs.index(lr)]], "o", ms=13, mfc="none", color=f"C{i % 10}")
        ax.set_xscale("log")
        ax.set_title(panel_title.format(panel))
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy\n(mean over seeds)")
    ncol = min(len(arms), 5)
    rows_of_legend = -(-len(arms) // ncol)
    fig.legend(*_legend_entries(axes[0]), loc="lower center", ncol=ncol, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 + 0.05 * rows_of_legend, 1, 1))
    return fig


def _legend_entries(axes: Sequence[plt.Axes]) -> tuple[list, list]:
    """Each label once, across panels."""
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=False):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    return handles, labels


def study_vs_live(
    study: Any,
    regime: str,
    tuning_seeds: Sequence[int],
    families: Mapping[str, Mapping[str, Mapping[str, Any]]],
    lines: Mapping[str, Mapping[str, Any]],
    total: int,
    live: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    title: str = "",
) -> plt.Figure:
    """Test accuracy against the trainable fraction: a stored study's arms with their 95 %
    intervals, one curve per family of sizes (``families[family][size label] = selection``),
    the arms of ``lines`` (full fine-tuning, the head alone) as a level with its interval,
    and this run's means as open squares (``live[family] = [(fraction, accuracy), ...]``).
    ``total`` is the parameter count the fractions divide by (the stored ``trainable``
    column). Used by chapters 4 and 5."""
    from . import studies

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (family, arms) in enumerate(families.items()):
        xs, ms, lows, highs = [], [], [], []
        for label, where in arms.items():
            arm = study.arm(regime, tuning_seeds, **where)
            mean, low, high = studies.accuracy_interval(arm.correct)
            xs.append(float(np.median(arm.values("trainable"))) / total)
            ms.append(mean)
            lows.append(mean - low)
            highs.append(high - mean)
            ax.annotate(label, (xs[-1], mean), textcoords="offset points", xytext=(5, 5),
                        color=f"C{i}")  # fmt: skip
        ax.errorbar(xs, ms, yerr=[lows, highs], fmt="o-", color=f"C{i}", capsize=3,
                    label=f"{family}, study")  # fmt: skip
        if live and family in live:
            lx, ly = zip(*live[family], strict=True)
            ax.plot(lx, ly, "s:", mfc="none", color=f"C{i}", label=f"{family}, this run")
    for j, (name, where) in enumerate(lines.items()):
        arm = study.arm(regime, tuning_seeds, **where)
        mean, low, high = studies.accuracy_interval(arm.correct)
        colour = f"C{len(families) + j + 1}"
        ax.axhspan(low, high, color=colour, alpha=0.15)
        fraction = float(np.median(arm.values("trainable"))) / total
        ax.axhline(mean, color=colour, ls="--", label=f"{name} ({fraction:.1%} trained), study")
    ax.set_xscale("log")
    ax.set(xlabel="trainable fraction of the classifier's parameters", ylabel="test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    return fig


def trials_vs_trainable(
    families: Mapping[str, Sequence[tuple[str, Sequence[Any]]]],
    levels: Mapping[str, Sequence[Any]],
    total: int,
    points: Mapping[str, Sequence[Any]] | None = None,
    ax: plt.Axes | None = None,
    title: str = "",
) -> plt.Axes:
    """This run's test accuracy (mean ± std over seeds) against the trainable fraction (the
    median ``trainable`` over seeds / ``total``), from lists of
    :class:`ftcourse.experiments.Trial`: one annotated line per family of sizes
    (``families[name] = [(size label, trials), ...]``), one marker per arm of ``points``, and
    a dashed level with its ± std band per arm of ``levels`` (full fine-tuning, the head
    alone). Chapters 4 and 5."""
    from .experiments import mean_std, values

    ax = _axes(ax, title)

    def at(trials: Sequence[Any]) -> tuple[float, float, float]:
        return (float(np.median(values(trials, "trainable"))) / total, *mean_std(trials))

    colour = 0
    for name, sized in families.items():
        xs, ms, sds = zip(*(at(trials) for _, trials in sized), strict=True)
        ax.errorbar(xs, ms, yerr=sds, fmt="o-", color=f"C{colour}", capsize=3, label=name)
        for (label, _), x, m in zip(sized, xs, ms, strict=True):
            ax.annotate(label, (x, m), textcoords="offset points", xytext=(4, 4),
                        fontsize=10, color=f"C{colour}")  # fmt: skip
        colour += 1
    for (name, trials), marker in zip((points or {}).items(), "sDv^", strict=False):
        x, m, sd = at(trials)
        ax.errorbar([x], [m], yerr=[sd], fmt=marker, color=f"C{colour}", capsize=3, label=name)
        colour += 1
    for name, trials in levels.items():
        x, m, sd = at(trials)
        ax.axhspan(m - sd, m + sd, color=f"C{colour}", alpha=0.15)
        ax.axhline(m, color=f"C{colour}", ls="--", label=f"{name} ({x:.1%} trained)")
        colour += 1
    ax.set_xscale("log")
    ax.set(xlabel="trainable fraction of the classifier's parameters", ylabel="test accuracy")
    return ax


def _gap_errorbar(ax: plt.Axes, xs: Sequence[float], ds: Sequence[Any], i: int, label: str) -> None:
    """Differences (``mean``, ``low``, ``high``) at ``xs`` with their intervals, colour ``C{i}``."""
    ax.errorbar(
        xs,
        [d.mean for d in ds],
        yerr=[[d.mean - d.low for d in ds], [d.high - d.mean for d in ds]],
        fmt="o-",
        capsize=3,
        color=f"C{i}",
        label=label,
    )


def size_trend(
    families: Mapping[str, Sequence[Any]],
    ax: plt.Axes | None = None,
    title: str = "",
    margin: float = 0.02,
) -> plt.Axes:
    """Each PEFT family minus full fine-tuning (test accuracy, 95 % interval) against the
    model's parameter count, one line per family (``families[family]`` = points with
    ``parameters``, ``difference`` and ``budget_bound``, as
    :func:`ftcourse.chapters.smollm2.trend` returns; an open marker: most runs of that arm
    were still improving at the budget's last step). The band is ``± margin``, what the
    chapters call a negligible difference. Chapters 4-5."""
    ax = _axes(ax, title)
    for i, (family, points) in enumerate(families.items()):
        if not points:
            continue
        _gap_errorbar(ax, [p.parameters for p in points], [p.difference for p in points], i, family)
        bound = [(p.parameters, p.difference.mean) for p in points if p.budget_bound]
        if bound:  # open markers: most runs still improving at the budget's last step
            ax.plot(*zip(*bound, strict=True), "o", mfc="white", color=f"C{i}", zorder=3)
    ax.axhline(0, color="black", lw=1)
    ax.axhspan(-margin, margin, color="grey", alpha=0.15, label=f"within ±{margin:g}")
    ax.set_xscale("log")
    ax.set(xlabel="parameters of the model", ylabel="test accuracy minus full fine-tuning")
    ax.legend(fontsize=9, loc="best")
    return ax


def rank_curve(
    curves: Mapping[str, Sequence[tuple[int, Any]]],
    ax: plt.Axes | None = None,
    title: str = "",
    margin: float = 0.02,
) -> plt.Axes:
    """LoRA at each rank minus full fine-tuning (95 % intervals), one line per model size
    (``curves[model]`` = ``[(rank, point), ...]``, as
    :func:`ftcourse.chapters.smollm2.rank_curves` returns). Chapter 5."""
    ax = _axes(ax, title)
    for i, (model, points) in enumerate(curves.items()):
        _gap_errorbar(ax, [r for r, _ in points], [p.difference for _, p in points], i, model)
    ax.axhline(0, color="black", lw=1)
    ax.axhspan(-margin, margin, color="grey", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="LoRA rank (query + value)", ylabel="test accuracy minus full fine-tuning")
    ax.legend(fontsize=9, loc="best")
    return ax


def memory_parts(
    rows: Mapping[str, Mapping[str, Any]],
    parts: Sequence[str] = ("weights", "gradients", "optimizer", "activations"),
    ax: plt.Axes | None = None,
    title: str = "",
) -> plt.Axes:
    """One stacked bar per arm: where the memory of a training step goes, in GiB
    (``rows[arm][part]`` in bytes), with the measured peak as a black tick above (the peak
    also holds temporaries no part shows). Chapters 4-5."""
    ax = _axes(ax, title)
    labels = list(rows)
    bottom = np.zeros(len(labels))
    for i, part in enumerate(parts):
        heights = np.array([rows[a][part] for a in labels], float) / 2**30
        ax.bar(labels, heights, bottom=bottom, color=f"C{i}", label=part)
        bottom += heights
    peaks = [rows[a]["peak"] / 2**30 for a in labels]
    ax.scatter(labels, peaks, marker="_", s=400, color="black", zorder=3, label="peak")
    ax.set_ylabel("GiB")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=9, loc="best")
    return ax


def save(fig: plt.Figure, name: str) -> Path | None:
    """Save ``fig`` as ``$FTCOURSE_REPORT_DIR/figures/<name>.png`` when that variable is set."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(fig))
    return path
