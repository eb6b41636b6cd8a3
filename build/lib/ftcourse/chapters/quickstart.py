"""Chapter 0 (quickstart): fine-tune a pretrained model or train it from scratch?

The task: Fashion-MNIST classes 5-9 (sandals, shirts, sneakers, bags, ankle boots), a few
labelled images per class, a validation split for every choice, the test split once. The
arms: a zoo model fine-tuned from its pretrained weights, the same architecture trained from
scratch (each with its own learning rate and length chosen on validation), scratch trained
the first edition's untuned way, and linear probes on frozen features.

The notebook's live run and the reference study (``ftcourse study 00``) both use
:func:`task` and :func:`arms`. The study runs them for two models: **tiny-cnn** (pretrained
by the course on 30,000 images of five other garments) and **efficientnet-lite0** (ImageNet,
at 96×96 pixels to fit a CPU), which is where the source's claim can hold on a CPU.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import data, models, studies
from ..train import correct, evaluate, features, fit, fit_steps, linear_probe, seed_everything

STUDY = "00"
TARGET_CLASSES = (5, 6, 7, 8, 9)
KEYS = ("model", "arm", "labels_per_class", "seed", "lr")


@dataclass(frozen=True)
class Task:
    """The few-label task: a pool to draw from, a fixed test set, and the split per seed."""

    pool: torch.utils.data.TensorDataset
    test_set: torch.utils.data.Dataset
    labels_per_class: int
    val_per_class: int

    def splits(self, seed: int) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """The seed's labelled training images and its validation images (disjoint)."""
        return data.few_label_split(self.pool, self.labels_per_class, self.val_per_class, seed=seed)


def task(labels_per_class: int, val_per_class: int, test_size: int) -> Task:
    """Fashion-MNIST classes 5-9: the training split is the pool, a fixed random subset of
    the test split (``test_size`` images, the same for every arm) the test set."""
    pool = data.image_task("fashion-mnist", TARGET_CLASSES, "train")
    test = data.random_subset(data.image_task("fashion-mnist", TARGET_CLASSES, "test"), test_size)
    return Task(pool, test, labels_per_class, val_per_class)


def load_model(model: str, pretrained: bool, resolution: int | None = None) -> torch.nn.Module:
    """``model`` with a fresh 5-way head, pretrained or random; ``resolution`` resizes the
    input adapter of a model that has one (efficientnet-lite0 at 96×96 instead of 224×224)."""
    k = len(TARGET_CLASSES)
    net = models.load(model, num_classes=k).model if pretrained else models.build(model, k)
    if resolution is not None and hasattr(net, "input_adapter"):
        net.input_adapter.size = (resolution, resolution)
    return net


def arms(model: str, resolution: int | None = None) -> dict[str, Callable[[Any], torch.nn.Module]]:
    """The two trained arms: ``fine-tune`` (pretrained weights, new head) and ``scratch``."""
    return {
        "fine-tune": lambda train: load_model(model, True, resolution),
        "scratch": lambda train: load_model(model, False, resolution),
    }


# --------------------------------------------------------------------------- the study

# What the reference study runs. Budgets are long enough that few runs end at their last
# step (the study reports the rate); grids are extended by the plan until every choice is
# interior. The untuned arm is the first edition's recipe: lr 3e-3 for 30 epochs.
LABELS_PER_CLASS = 10
VAL_PER_CLASS = 40
TEST_SIZE = 2000
TUNING_SEEDS = (0, 1, 2)


SETTINGS: dict[tuple[str, str], studies.Setting] = {
    ("tiny-cnn", "fine-tune"): studies.Setting(
        (1e-2, 3e-2, 1e-1, 3e-1), 400, 20, 32, tuple(range(10))
    ),
    ("tiny-cnn", "scratch"): studies.Setting(
        (1e-2, 3e-2, 1e-1, 3e-1), 400, 20, 32, tuple(range(10))
    ),
    ("tiny-cnn", "untuned"): studies.Setting((3e-3,), 30, 0, 32, tuple(range(10))),
    ("tiny-cnn", "probe"): studies.Setting((0.0,), 0, 0, 0, tuple(range(10))),
    ("efficientnet-lite0", "probe"): studies.Setting((0.0,), 0, 0, 0, tuple(range(10))),
    # 6 seeds: each run costs a minute or more on one core, and the differences are large
    ("efficientnet-lite0", "fine-tune"): studies.Setting(
        (3e-4, 1e-3, 3e-3), 100, 10, 16, tuple(range(6)), 96
    ),
    ("efficientnet-lite0", "scratch"): studies.Setting(
        (3e-3, 1e-2, 3e-2), 300, 20, 16, tuple(range(6)), 96
    ),
    # did the budget decide? scratch again with twice the steps, at the rate it chose
    ("efficientnet-lite0", "scratch-long"): studies.Setting(
        (), 600, 20, 16, (0, 1, 2), 96, rate_of="scratch"
    ),
}


# Each arm of the study as (which rows, how it trains): what plan() and the tests read.
GROUPS = [
    ({"model": model, "arm": arm, "labels_per_class": LABELS_PER_CLASS}, setting)
    for (model, arm), setting in SETTINGS.items()
]


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs the study still needs (:func:`ftcourse.studies.plan_tuned`): each arm's grid
    on the tuning seeds, extended until the choice is interior, then every seed at the
    chosen rate."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


_cache: dict[str, Any] = {}


def _study_task() -> Task:
    if "task" not in _cache:
        _cache["task"] = task(LABELS_PER_CLASS, VAL_PER_CLASS, TEST_SIZE)
    return _cache["task"]


def _probe(model: str, seed: int, device: Any) -> dict[str, Any]:
    """A logistic-regression probe on ``model``'s frozen features (at its own resolution)."""
    t = _study_task()
    net = models.load(model).model.to(device)
    if ("feats", model) not in _cache:
        _cache[("feats", model)] = features(net, t.test_set, device)
    test_feats = _cache[("feats", model)]
    train, val = t.splits(seed)
    right = linear_probe(features(net, train, device), test_feats, per_item=True)
    val_acc = linear_probe(features(net, train, device), features(net, val, device))
    return _result(val_acc, 0, 0, 0, 0.0, right)


def _result(val_acc, best_step, steps_run, max_steps, seconds, right) -> dict[str, Any]:
    right = np.asarray(right, dtype=bool)
    return {
        "val_acc": round(float(val_acc), 4),
        "best_step": best_step,
        "steps_run": steps_run,
        "max_steps": max_steps,
        "hit_budget": bool(max_steps and best_step == max_steps),
        "train_seconds": round(float(seconds), 2),
        "test_acc": round(float(right.mean()), 4),
        "test_correct": studies.pack(right),
    }


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run of the study (its arm's entry in ``SETTINGS``)."""
    model, arm, seed, lr = spec["model"], spec["arm"], int(spec["seed"]), float(spec["lr"])
    s = SETTINGS[(model, arm)]
    if arm == "probe":
        return _probe(model, seed, device)
    t = _study_task()
    train, val = t.splits(seed)
    generator = seed_everything(seed)
    net = load_model(model, arm == "fine-tune", s.resolution)  # scratch, untuned: random
    if arm == "untuned":
        history = fit(
            net,
            train,
            num_epochs=s.max_steps,
            lr=lr,
            batch_size=s.batch_size,
            generator=generator,
            device=device,
            progress=False,
        )
        steps = s.max_steps * -(-len(train) // s.batch_size)
        return _result(
            evaluate(net, val, device),
            steps,
            steps,
            steps,
            history.seconds,
            correct(net, t.test_set, device).numpy(),
        )
    curve = fit_steps(
        net,
        train,
        lr=lr,
        max_steps=s.max_steps,
        val_set=val,
        eval_every=s.eval_every,
        batch_size=s.batch_size,
        generator=generator,
        device=device,
        progress=False,
    )
    return _result(
        curve.best_val_acc,
        curve.best_step,
        curve.steps_run,
        s.max_steps,
        curve.best_seconds,
        correct(net, t.test_set, device).numpy(),
    )


# --------------------------------------------------------------------------- claims

EFFNET, TINY = "efficientnet-lite0", "tiny-cnn"
REQUIRED_REGIMES = ("native", "fp32")  # the regimes tests/test_studies.py expects stored

# The sentences chapter 0 teaches, each with the comparison of the study that backs it.
CLAIMS = [
    studies.Claim(
        "real-foundation",
        "Fine-tuning a real pretrained model (efficientnet-lite0, ImageNet) beats training the "
        "same architecture from scratch, both tuned, on 10 labelled images per class",
        {"model": EFFNET, "arm": "fine-tune"},
        {"model": EFFNET, "arm": "scratch"},
    ),
    studies.Claim(
        "not-the-budget",
        "Trained from scratch for twice as many steps at its chosen rate, the same architecture "
        "still falls short of fine-tuning",
        {"model": EFFNET, "arm": "fine-tune"},
        {"model": EFFNET, "arm": "scratch-long"},
    ),
    studies.Claim(
        "foundation-matters",
        "Fine-tuned, the ImageNet model beats the course's tiny-cnn fine-tuned the same way",
        {"model": EFFNET, "arm": "fine-tune"},
        {"model": TINY, "arm": "fine-tune"},
    ),
    studies.Claim(
        "imagenet-probe",
        "A linear probe on the ImageNet model's frozen features beats fine-tuning all of tiny-cnn",
        {"model": EFFNET, "arm": "probe"},
        {"model": TINY, "arm": "fine-tune"},
    ),
    studies.Claim(
        "tune-the-baseline",
        "Tuning the scratch arm on validation makes it better than the first edition's "
        "untuned recipe",
        {"model": TINY, "arm": "scratch"},
        {"model": TINY, "arm": "untuned"},
    ),
]

# The arms of the study, as the page lists them.
STUDY_ARMS = {
    "tiny-cnn fine-tuned": {"model": TINY, "arm": "fine-tune"},
    "tiny-cnn from scratch (tuned)": {"model": TINY, "arm": "scratch"},
    "tiny-cnn from scratch, first edition's recipe": {"model": TINY, "arm": "untuned"},
    "tiny-cnn linear probe": {"model": TINY, "arm": "probe"},
    "efficientnet-lite0 linear probe (224 px)": {"model": EFFNET, "arm": "probe"},
    "efficientnet-lite0 fine-tuned (96 px)": {"model": EFFNET, "arm": "fine-tune"},
    "efficientnet-lite0 from scratch (96 px, tuned)": {"model": EFFNET, "arm": "scratch"},
    "efficientnet-lite0 from scratch, twice the steps": {"model": EFFNET, "arm": "scratch-long"},
}


def load_study() -> studies.Study:
    """The stored reference study of chapter 0."""
    return studies.load(STUDY)


def complete_regimes(study: studies.Study) -> list[str]:
    """The stored regimes whose study is complete (:func:`ftcourse.studies.complete_regimes`)."""
    return studies.complete_regimes(sys.modules[__name__], study)


def study_regime(study: studies.Study) -> str:
    """The stored regime closest to this process (:func:`ftcourse.studies.study_regime`)."""
    return studies.study_regime(sys.modules[__name__], study)


LrChoice = studies.LrChoice


def learning_rates(model: str, arm: str, grid: Sequence[float], budget: Any) -> LrChoice:
    """The learning rates a live run tries for ``arm`` of ``model``: the one the reference
    study chose on validation for the same model and budget
    (:func:`ftcourse.studies.live_rates`), else ``grid``. ``budget`` is the live run's
    :class:`~ftcourse.experiments.Budget`."""
    s = SETTINGS.get((model, arm))
    same = s is not None and (s.max_steps, s.batch_size) == (budget.max_steps, budget.batch_size)
    return studies.live_rates(sys.modules[__name__], grid, same, model=model, arm=arm)


def compare(
    study: studies.Study,
    regime: str,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    names: tuple[str, str],
) -> studies.Difference:
    """Arm ``a`` minus arm ``b`` of the stored study, named for the page."""
    d = studies.Claim("", "", a, b).difference(study, regime, TUNING_SEEDS)
    return dataclasses.replace(d, a=names[0], b=names[1])
