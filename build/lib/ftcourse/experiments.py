"""Fair comparisons: every arm tuned on validation, the test set used once.

An *arm* is one way of training: fine-tune, train from scratch, freeze some blocks, BitFit...
:func:`run_arm` runs one arm over several seeds the way the course's method requires
(``book/contributing.md``, "How an experiment is run"):

1. each seed draws its own training and validation split;
2. the arm's learning rate is chosen from a small grid **on the validation split**, on the
   first seed (``tune="first"``, the default), on every seed (``tune="each"``) or over all
   seeds (``tune="over"``: the best mean validation accuracy);
3. its length is chosen on validation too: :func:`ftcourse.train.fit_steps` trains within a
   step budget, stops early when validation stops improving and keeps the best checkpoint;
4. only then is the test set used, once, for the chosen model.

A :class:`Trial` keeps what a reader needs to judge the result: the learning rate chosen, the
steps and training seconds used, validation and test accuracy, the trainable parameters, the
validation curve and the grid's evidence. :func:`paired` and :func:`steps_to_target` turn two
arms' trials into the statements a chapter makes ("wins in 5 of 5 seeds", "a mean difference
of 0.06, more than two standard errors", "reaches 0.80 in 40 steps instead of 300").
Introduced in chapter 0; used by every comparison of the course.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from .memory import count_parameters
from .train import Curve, correct, evaluate, fit_steps, seed_everything

# A model factory gets the seed's training split (sparse masks need it) and returns the model
# ready to train, or (model, extra) where ``extra`` is stored in ``Trial.extra``.
MakeModel = Callable[[Dataset], "nn.Module | tuple[nn.Module, dict[str, Any]]"]
Splits = Callable[[int], tuple[Dataset, Dataset]]
Prepare = Callable[
    [nn.Module, Dataset, Dataset, Dataset], tuple[nn.Module, Dataset, Dataset, Dataset]
]


@dataclass(frozen=True)
class Budget:
    """How long an arm may train: at most ``max_steps``, validated every ``eval_every`` steps,
    stopped after ``patience`` steps without improvement (``None``: never)."""

    max_steps: int
    eval_every: int = 10
    patience: int | None = None
    batch_size: int = 32

    @classmethod
    def from_profile(cls, cfg: Mapping[str, Any], prefix: str = "") -> Budget:
        """Read ``<prefix>max_steps``, ``eval_every``, ``patience``, ``batch_size`` from a
        chapter's settings (missing keys keep their defaults)."""
        keys = ("max_steps", "eval_every", "patience", "batch_size")
        return cls(**{k: cfg[prefix + k] for k in keys if prefix + k in cfg})

    def fit_kwargs(self) -> dict[str, Any]:
        """The budget as keyword arguments of :func:`ftcourse.train.fit_steps`."""
        return asdict(self)


@dataclass
class Trial:
    """One arm on one seed, tuned on validation and tested once."""

    arm: str
    seed: int
    lr: float
    steps: int  # the best checkpoint's step: the length chosen on validation
    steps_run: int  # steps actually trained (the best step plus the patience)
    seconds: float  # training seconds up to the best step
    val_acc: float
    test_acc: float
    trainable: int
    curve: Curve
    grid: dict[float, float] = field(default_factory=dict)  # lr -> best val acc (tuned seeds)
    extra: dict[str, Any] = field(default_factory=dict)
    # per-test-item correctness (accuracy tasks): intervals include the test sample's luck
    correct: np.ndarray | None = None

    @property
    def hit_budget(self) -> bool:
        """Whether the best checkpoint is the last step trained (was it still improving?)."""
        return self.steps == self.steps_run


def _build(make_model: MakeModel, train_set: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    built = make_model(train_set)
    return built if isinstance(built, tuple) else (built, {})


def run_arm(
    arm: str,
    make_model: MakeModel,
    splits: Splits,
    test_set: Dataset,
    *,
    seeds: Sequence[int],
    lrs: Sequence[float],
    budget: Budget,
    tune: str = "first",
    device: Any = "cpu",
    fit_kwargs: Mapping[str, Any] | None = None,
    measure: Callable[[nn.Module], dict[str, Any]] | None = None,
    prepare: Prepare | None = None,
    progress: bool = False,
    fit: Callable[..., Curve] = fit_steps,
    score: Callable[[nn.Module, Any, Any], float] = evaluate,
) -> list[Trial]:
    """Run one arm on every seed: lr from ``lrs`` and length chosen on validation, tested once.

    Args:
        make_model: builds the model for one run from the seed's training split; it runs after
            ``seed_everything(seed)``, so a new head is initialised the same way for every lr.
        splits: ``seed -> (train_set, val_set)``.
        tune: ``"first"`` chooses the learning rate on the first seed's validation split and
            reuses it (the length is still chosen per seed); ``"each"`` tunes every seed;
            ``"over"`` runs every rate on every seed and keeps, for all seeds, the rate with
            the best mean validation accuracy (``Trial.grid`` then holds those means).
        fit_kwargs: extra arguments for :func:`ftcourse.train.fit_steps` (``weight_decay``...).
        measure: called with the chosen model after testing; what it returns is added to
            ``Trial.extra`` (e.g. the source-task accuracy after fine-tuning, chapter 2).
        prepare: ``(model, train, val, test) -> (module, train, val, test)``, called after
            ``make_model``: what to train and on which data, e.g. only the trainable top of
            a partly frozen model on precomputed features (chapter 3). ``measure`` still
            gets the model.
        fit: the training function, called like :func:`ftcourse.train.fit_steps` (model,
            train set, ``lr``, ``val_set``, the budget...) and returning a
            :class:`~ftcourse.train.Curve`; e.g. :func:`ftcourse.lm.sft` for generative tasks.
        score: ``(model, test_set, device) -> float``, the test metric (accuracy by default;
            exact match of generated answers for :func:`ftcourse.lm.sft`).
    Returns:
        one :class:`Trial` per seed. Taught in chapter 0.
    """
    if tune not in ("first", "each", "over"):
        raise ValueError(f"tune must be 'first', 'each' or 'over', not {tune!r}")
    if not seeds or not lrs:
        raise ValueError("seeds and lrs must not be empty")

    def train_one(seed: int, lr: float, train_set: Dataset, val_set: Dataset) -> tuple:
        generator = seed_everything(seed)
        model, extra = _build(make_model, train_set)
        module, train, val, test = (
            prepare(model, train_set, val_set, test_set)
            if prepare
            else (model, train_set, val_set, test_set)
        )
        curve = fit(
            module,
            train,
            lr=lr,
            val_set=val,
            **budget.fit_kwargs(),
            generator=generator,
            device=device,
            progress=f"{arm} seed {seed} lr {lr:g}" if progress else False,
            **(fit_kwargs or {}),
        )
        return curve, model, module, test, extra

    def trial(seed: int, run: tuple, grid: dict[float, float]) -> Trial:
        curve, model, module, test, extra = run
        right = correct(module, test, device).numpy() if score is evaluate else None
        return Trial(
            arm=arm,
            seed=seed,
            lr=curve.lr,
            steps=curve.best_step,
            steps_run=curve.steps_run,
            seconds=curve.best_seconds,
            val_acc=curve.best_val_acc,
            test_acc=float(right.mean()) if right is not None else score(module, test, device),
            trainable=count_parameters(model, trainable_only=True),
            curve=curve,
            grid=grid if len(grid) > 1 else {},
            extra={**extra, **(measure(model) if measure else {})},
            correct=right,
        )

    def key(curve: Curve) -> tuple[float, int]:  # better validation, then fewer steps
        return curve.best_val_acc, -curve.best_step

    if tune == "over":
        # every rate on every seed; the rate with the best mean validation accuracy wins
        runs = {seed: {lr: train_one(seed, lr, *splits(seed)) for lr in lrs} for seed in seeds}
        mean_val = {lr: float(np.mean([runs[s][lr][0].best_val_acc for s in seeds])) for lr in lrs}
        chosen = max(sorted(lrs), key=lambda lr: mean_val[lr])
        return [trial(seed, runs[seed][chosen], mean_val) for seed in seeds]
    trials, chosen_lr = [], None
    for i, seed in enumerate(seeds):
        train_set, val_set = splits(seed)
        grid_lrs = list(lrs) if (tune == "each" or i == 0) else [chosen_lr]
        best: tuple | None = None
        grid: dict[float, float] = {}
        for lr in grid_lrs:
            run = train_one(seed, lr, train_set, val_set)
            grid[lr] = run[0].best_val_acc
            if best is None or key(run[0]) > key(best[0]):
                best = run
        chosen_lr = best[0].lr
        trials.append(trial(seed, best, grid))
    return trials


def pretrained_vs_scratch(model: str, num_classes: int) -> dict[str, MakeModel]:
    """The two arms of chapters 0 and 1: ``model``'s pretrained weights with a new head, and
    the same architecture with random weights (:func:`ftcourse.models.build`)."""
    from . import models

    return {
        "fine-tune": lambda train: models.load(model, num_classes=num_classes).model,
        "scratch": lambda train: models.build(model, num_classes),
    }


def grid_search(
    arms: Mapping[str, MakeModel],
    splits: Splits,
    *,
    seeds: Sequence[int],
    lrs: Sequence[float],
    budget: Budget,
    device: Any = "cpu",
    fit: Callable[..., Curve] = fit_steps,
    **keys: Any,
) -> list[dict[str, Any]]:
    """Validation accuracy of every arm x learning rate x seed: the evidence for a choice.

    Returns one row per run (``arm``, ``lr``, ``seed``, ``val_acc``, ``best_step`` and the
    ``keys`` given, e.g. ``labels_per_class=5``); no test set is involved. ``fit`` trains as
    in :func:`run_arm`. Used by ``benchmarks/select_lr.py`` to choose once what a notebook
    then reuses (:func:`chosen_lr`).
    """
    rows = []
    for arm, make_model in arms.items():
        for seed in seeds:
            train_set, val_set = splits(seed)
            for lr in lrs:
                generator = seed_everything(seed)
                model, _ = _build(make_model, train_set)
                curve = fit(
                    model,
                    train_set,
                    lr=lr,
                    val_set=val_set,
                    **budget.fit_kwargs(),
                    generator=generator,
                    device=device,
                    progress=False,
                )
                rows.append(
                    {
                        **keys,
                        "arm": arm,
                        "lr": lr,
                        "seed": seed,
                        "val_acc": curve.best_val_acc,
                        "best_step": curve.best_step,
                    }
                )
    return rows


def chosen_lr(rows: Sequence[Mapping[str, Any]], **where: Any) -> float:
    """The learning rate with the best mean validation accuracy over seeds among ``rows``
    matching ``where`` (e.g. ``arm="scratch", labels_per_class=5``); ties go to the smaller."""
    means: dict[float, list[float]] = {}
    for row in rows:
        if all(str(row[k]) == str(v) for k, v in where.items()):
            means.setdefault(float(row["lr"]), []).append(float(row["val_acc"]))
    if not means:
        raise KeyError(f"no grid-search rows match {where}")
    return max(sorted(means), key=lambda lr: np.mean(means[lr]))


# --------------------------------------------------------------------------- statistics


def values(trials: Sequence[Trial], key: str = "test_acc") -> np.ndarray:
    """One number per seed: a :class:`Trial` attribute (or an ``extra`` entry)."""
    return np.array(
        [getattr(t, key) if hasattr(t, key) else t.extra[key] for t in trials], dtype=float
    )


def mean_std(trials: Sequence[Trial], key: str = "test_acc") -> tuple[float, float]:
    """Mean and standard deviation (ddof=1; 0 for one seed) over seeds."""
    v = values(trials, key)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


@dataclass(frozen=True)
class Paired:
    """Arm A minus arm B, seed by seed (the same seeds draw the same data for both)."""

    mean: float  # mean difference
    se: float  # its standard error (0 for one seed: no spread can be estimated)
    wins: int  # seeds where A > B
    n: int

    @property
    def clear(self) -> bool:
        """A is better by more than two standard errors (never with fewer than 3 seeds)."""
        return self.n >= 3 and self.mean > 2 * self.se

    def __str__(self) -> str:
        return f"{self.mean:+.3f} ± {self.se:.3f} (1 s.e.), higher in {self.wins} of {self.n} seeds"


def verdict(d: Paired, a: str, b: str) -> str:
    """One honest sentence about a paired comparison: who is better, and whether it is clear.

    ``"A beats B clearly (+0.120 ± 0.020 ...)"``, ``"B beats A clearly (...)"`` or ``"no clear
    difference between A and B (...)"``; clear means more than two standard errors over at
    least three seeds (:attr:`Paired.clear`). Used by the notebooks' "What we saw" texts.
    """
    if d.clear:
        return f"{a} beats {b} clearly ({d})"
    flipped = Paired(-d.mean, d.se, d.n - d.wins, d.n)
    if flipped.clear:
        return f"{b} beats {a} clearly ({flipped})"
    return f"no clear difference between {a} and {b} ({d})"


def paired(a: Sequence[Trial] | np.ndarray, b: Sequence[Trial] | np.ndarray) -> Paired:
    """Compare two arms seed by seed on test accuracy (or two aligned arrays of numbers)."""
    va = a if isinstance(a, np.ndarray) else values(a)
    vb = b if isinstance(b, np.ndarray) else values(b)
    if len(va) != len(vb) or len(va) == 0:
        raise ValueError(f"need the same, non-zero number of seeds, not {len(va)} and {len(vb)}")
    diff = np.asarray(va, float) - np.asarray(vb, float)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return Paired(float(diff.mean()), se, int((diff > 0).sum()), len(diff))


def steps_to_target(
    a: Sequence[Trial], b: Sequence[Trial], fraction: float = 0.95
) -> dict[str, list[float] | list[int]]:
    """Steps and training seconds each arm needs to reach the same validation accuracy.

    Per seed the target is ``fraction`` of the lower of the two arms' best validation
    accuracies, a level both reach; asking for the best itself would time the noise of a
    plateau. Returns lists aligned with the seeds: ``target``, ``steps_a``, ``steps_b``,
    ``seconds_a``, ``seconds_b``.
    """
    keys = ("target", "steps_a", "steps_b", "seconds_a", "seconds_b")
    out: dict[str, list] = {k: [] for k in keys}
    for ta, tb in zip(a, b, strict=True):
        target = fraction * min(ta.val_acc, tb.val_acc)
        (sa, ca), (sb, cb) = ta.curve.reached(target), tb.curve.reached(target)
        for key, v in zip(keys, (target, sa, sb, ca, cb), strict=True):
            out[key].append(v)
    return out


def at_grid_edge(trials: Sequence[Trial], lrs: Sequence[float]) -> str | None:
    """``"largest"``/``"smallest"`` when the chosen learning rate is at the grid's edge."""
    if len(lrs) < 2:
        return None
    chosen = trials[0].lr
    return "largest" if chosen == max(lrs) else "smallest" if chosen == min(lrs) else None


def table(arms: Mapping[str, Sequence[Trial]], total_params: int | None = None) -> str:
    """A Markdown table: test accuracy (mean ± std), lr, steps, seconds, trainable parameters."""
    rows = [
        "| arm | test accuracy | lr (chosen on validation) | steps used | train seconds "
        "| trainable |",
        "|---|---|---|---|---|---|",
    ]
    for name, trials in arms.items():
        m, s = mean_std(trials)
        lrs = sorted({t.lr for t in trials})
        steps = values(trials, "steps")
        trainable = int(np.median(values(trials, "trainable")))
        frac = f" ({trainable / total_params:.2%})" if total_params else ""
        rows.append(
            f"| {name} | {m:.3f} ± {s:.3f} | {', '.join(f'{lr:g}' for lr in lrs)} | "
            f"{steps.mean():.0f} ({steps.min():.0f}–{steps.max():.0f}) | "
            f"{values(trials, 'seconds').mean():.1f} | {trainable:,}{frac} |"
        )
    return "\n".join(rows)


def time_per_step(
    models: Mapping[str, nn.Module], x: Any, y: Any, rounds: int, device: Any = "cpu"
) -> dict[str, float]:
    """Median seconds per training step of each classifier on the same batch ``(x, y)``.

    Each model gets AdamW on its trainable parameters and one warm-up step; then the models
    take one step each in turn, ``rounds`` times (alternating, so that a slow moment of a
    shared machine hits every arm alike), under the precision the arms trained in (bf16
    autocast only where the hardware has it). Chapters 4 and 5 compare methods with it.
    """
    import time

    import torch

    from .precision import autocast

    steps = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6, foreach=True)
        model.train()

        def one(model=model, optimizer=optimizer) -> None:
            with autocast(device):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        one()  # warm-up: AdamW creates its state, kernels are chosen
        steps[name] = one
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, one in steps.items():
            start = time.perf_counter()
            one()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
