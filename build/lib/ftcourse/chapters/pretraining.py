"""Chapter 1 (pretraining vs fine-tuning): when does a pretrained start pay, against the
number of labels?

The task is chapter 0's (:mod:`ftcourse.chapters.quickstart`: Fashion-MNIST classes 5-9, a
few labelled images per class, validation for every choice, the test set once), at three label
budgets. The arms: tiny-cnn fine-tuned from the course's pretrained weights, and the same
architecture trained from scratch, each with its learning rate chosen on validation over the
tuning seeds and its length chosen on validation per seed. The notebook's live run trains the
same arms with the same budgets and reads the learning rates this study chose (one source).

The ImageNet model's side of the question: efficientnet-lite0 (at 96×96 pixels, as in chapter
0's study, which has it at 10 labels per class) fine-tuned and trained from scratch at 100
labels per class, the budget where tiny-cnn's pretraining buys nothing. Its runs cost a minute
or more each on one core, so it has 6 seeds (3 of them tune the rate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .. import experiments, studies
from .quickstart import Task, load_model, task

STUDY = "01"
KEYS = ("model", "arm", "labels_per_class", "seed", "lr")
TINY = "tiny-cnn"
LABEL_BUDGETS = (5, 20, 100)
VAL_PER_CLASS = 40
TEST_SIZE = 2000
TUNING_SEEDS = (0, 1, 2)
SEEDS = tuple(range(10))
# steps per label budget: long enough that few runs end at their last step (reported)
MAX_STEPS = {5: 200, 20: 300, 100: 300}  # 20: 200 steps ended 40-60 % of runs at the last
EVAL_EVERY = 20
BATCH_SIZE = 32
GRID = (1e-2, 3e-2, 1e-1)  # extended by the plan until every choice is interior
# The CPUs that ran it (an Intel Ice Lake, then an AVX2-only AMD EPYC for efficientnet-lite0)
# have no native bf16, so the second regime is the AVX2 imitation (on the AMD, the same kernels).
REQUIRED_REGIMES = ("fp32", "avx2")

EFFNET = "efficientnet-lite0"
EFFNET_LABELS = 100
EFFNET_RESOLUTION = 96
# The rates of chapter 0's study at 10 labels (fine-tune 3e-3, scratch 1e-2 to 3e-2) in the
# middle of each grid; more labels, so more steps than there (100 and 300).
EFFNET_SETTINGS = {
    "fine-tune": studies.Setting(
        (1e-3, 3e-3, 1e-2), 200, 20, 16, tuple(range(6)), EFFNET_RESOLUTION
    ),
    "scratch": studies.Setting((1e-2, 3e-2, 1e-1), 400, 20, 16, tuple(range(6)), EFFNET_RESOLUTION),
}

GROUPS = [
    (
        {"model": TINY, "arm": arm, "labels_per_class": labels},
        studies.Setting(GRID, MAX_STEPS[labels], EVAL_EVERY, BATCH_SIZE, SEEDS),
    )
    for labels in LABEL_BUDGETS
    for arm in ("fine-tune", "scratch")
] + [
    ({"model": EFFNET, "arm": arm, "labels_per_class": EFFNET_LABELS}, setting)
    for arm, setting in EFFNET_SETTINGS.items()
]


def budget(labels_per_class: int) -> experiments.Budget:
    """The step budget of one label budget (the study's and the live run's)."""
    return experiments.Budget(MAX_STEPS[labels_per_class], EVAL_EVERY, None, BATCH_SIZE)


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs still needed: each arm's grid on the tuning seeds (extended until the choice
    is interior), then every seed at the chosen rate."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


_tasks: dict[int, Task] = {}


def study_task(labels_per_class: int) -> Task:
    """The study's task at one label budget (its test set: ``TEST_SIZE`` fixed images)."""
    if labels_per_class not in _tasks:
        _tasks[labels_per_class] = task(labels_per_class, VAL_PER_CLASS, TEST_SIZE)
    return _tasks[labels_per_class]


def setting(spec: Mapping[str, Any]) -> studies.Setting:
    """How the study trains the run ``spec`` (its group's :class:`~ftcourse.studies.Setting`)."""
    for where, s in GROUPS:
        if studies.matches(spec, where):
            return s
    raise KeyError(f"no arm of study {STUDY} matches {dict(spec)}")


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run: one model and arm, one label budget, one seed, one rate."""
    s = setting(spec)
    t = study_task(int(spec["labels_per_class"]))
    pretrained = spec["arm"] == "fine-tune"
    (trial,) = experiments.run_arm(
        spec["arm"],
        lambda train: load_model(spec["model"], pretrained, s.resolution),
        t.splits,
        t.test_set,
        seeds=[int(spec["seed"])],
        lrs=[float(spec["lr"])],
        budget=experiments.Budget(s.max_steps, s.eval_every, None, s.batch_size),
        device=device,
    )
    return studies.trial_result(trial, s.max_steps)


def where(arm: str, labels_per_class: int, model: str = TINY) -> dict[str, Any]:
    """The study's selection of ``model``'s ``arm`` at one label budget."""
    return {"model": model, "arm": arm, "labels_per_class": labels_per_class}


def compare(
    study: studies.Study, regime: str, labels_per_class: int, model: str = TINY
) -> studies.Difference:
    """Fine-tuning minus tuned scratch in the stored study at one label budget."""
    claim = studies.Claim(
        "",
        "",
        where("fine-tune", labels_per_class, model),
        where("scratch", labels_per_class, model),
    )
    d = claim.difference(study, regime, TUNING_SEEDS)
    return dataclasses.replace(d, a="fine-tuning", b="tuned scratch")


# The arms of the study, as the page lists them.
STUDY_ARMS = {
    f"tiny-cnn {arm}, {labels} labels per class": where(arm, labels)
    for labels in LABEL_BUDGETS
    for arm in ("fine-tune", "scratch")
} | {
    f"efficientnet-lite0 {arm}, {EFFNET_LABELS} labels per class": where(arm, EFFNET_LABELS, EFFNET)
    for arm in ("fine-tune", "scratch")
}


# The sentences chapter 1 teaches, each with the comparison of the study that backs it. At 20
# labels per class the same 0.02 bound holds in fp32 (upper end +0.007) but not under the AVX2
# imitation (+0.022): a fragile bound is not taught; the page shows both numbers instead.
CLAIMS: list[studies.Claim] = [
    studies.Claim(
        "few-labels",
        "With 5 labels per class, where pretraining is supposed to matter most, fine-tuning "
        "tiny-cnn gains at most 0.02 over the same network trained from scratch, both tuned "
        "(the upper end of the 95 % interval)",
        where("fine-tune", 5),
        where("scratch", 5),
        expect="at most",
        names=("fine-tuning", "tuned scratch"),
    ),
    studies.Claim(
        "imagenet-100-labels",
        "With 100 labels per class, where tiny-cnn's pretraining buys nothing, fine-tuning "
        "efficientnet-lite0 (ImageNet) still beats the same architecture trained from scratch, "
        "both tuned",
        where("fine-tune", EFFNET_LABELS, EFFNET),
        where("scratch", EFFNET_LABELS, EFFNET),
        names=("fine-tuning", "tuned scratch"),
    ),
    studies.Claim(
        "many-labels",
        "With 100 labels per class, fine-tuning tiny-cnn and tuned scratch are equivalent "
        "within ±0.02",
        where("fine-tune", 100),
        where("scratch", 100),
        expect="equivalent",
        names=("fine-tuning", "tuned scratch"),
    ),
]
