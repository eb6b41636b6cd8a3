"""Chapter 3 (partial fine-tuning): which weights should change, on a near and a far target?

The **near** target is Fashion-MNIST classes 5-9 (the clothes tiny-cnn was not pretrained on,
same kind of images), the **far** one five MNIST digits; both with the same number of classes,
labelled images, validation images, test images and step budget. The arms: the head plus the
top ``k`` blocks trained (``k`` = 0 ... all), and on the near target BitFit, sparse
fine-tuning with gradient-chosen masks, and the same number of weights chosen at random. Every
arm starts from the pretrained model with its BatchNorm statistics measured on its own
target's training images, then kept fixed, so that the arms differ only in which weights may
change; frozen bottoms are precomputed once (the real saving of partial fine-tuning).

The notebook's live run builds its arms with :func:`arm` and reads the learning rates the
reference study (``ftcourse study 03``) chose on validation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import data, experiments, methods, models, studies

STUDY = "03"
KEYS = ("target", "arm", "seed", "lr")
MODEL = "tiny-cnn"
TARGETS = {"near": ("fashion-mnist", (5, 6, 7, 8, 9)), "far": ("mnist-5k", (0, 1, 2, 3, 4))}
LABELS_PER_CLASS = 20
VAL_PER_CLASS = 40
TEST_SIZE = 500  # all of mnist-5k's test images of five digits; as many for the near target
SPARSE_FRACTION = 0.005
TUNING_SEEDS = (0, 1, 2)
SEEDS = tuple(range(10))
GRID = (3e-3, 1e-2, 3e-2)  # extended by the plan until every choice is interior
MAX_STEPS, EVAL_EVERY, BATCH_SIZE = 150, 10, 32
BUDGET = experiments.Budget(MAX_STEPS, EVAL_EVERY, None, BATCH_SIZE)
METHODS = ("bitfit", "sparse", "random-sparse")  # on the near target
REQUIRED_REGIMES = ("fp32", "avx2")  # an Ice Lake CPU: no bf16; AVX-512 and AVX2 kernels


@functools.cache
def num_blocks() -> int:
    """Blocks below the head (tiny-cnn: the stem and four stages): k runs 0 ... this."""
    return len(models.blocks(models.build(MODEL, 5))) - 1


# --------------------------------------------------------------------------- the arms


def target_start(train: torch.utils.data.Dataset) -> nn.Module:
    """The pretrained model with a new head, its BatchNorm statistics measured on the
    target's training images (the same start for every arm)."""
    model = models.load(MODEL, num_classes=5).model
    return methods.target_batchnorm_stats(model, train)


def prepare(model: nn.Module, k: int) -> nn.Module:
    """Freeze all but the head and the top k blocks; keep every BatchNorm's statistics."""
    methods.unfreeze_top_blocks(model, models.blocks(model), k)
    methods.freeze_batchnorm_stats(model, only_frozen=False)
    return model


def skip_frozen(device: Any = "cpu") -> Callable:
    """``run_arm``'s ``prepare``: train only the trainable top, on the frozen bottom's
    precomputed outputs (the same result, the compute saving of partial fine-tuning)."""

    def split(model, train, val, test):
        bottom, top = methods.split_frozen(models.blocks(model))
        if len(bottom) == 0:
            return top, train, val, test
        bottom = bottom.to(device)
        return top, *(methods.precompute(bottom, d, device) for d in (train, val, test))

    return split


def choose_bitfit(train: torch.utils.data.Dataset) -> nn.Module:
    """BitFit: the bias terms (in tiny-cnn, BatchNorm's shifts) and the new head train."""
    model = target_start(train)
    methods.bitfit(model, train_head=True)
    methods.freeze_batchnorm_stats(model, only_frozen=False)
    return model


def sparse(random_scores: bool, fraction: float = SPARSE_FRACTION) -> Callable:
    """Sparse fine-tuning: the ``fraction`` of weights with the largest gradient on the
    training set train (or as many chosen at random, the control), plus the new head."""

    def choose(train):
        model = target_start(train)
        methods.freeze_batchnorm_stats(model, only_frozen=False)
        if random_scores:
            scores = {n: torch.rand(p.shape) for n, p in model.named_parameters()}
        else:
            loader = torch.utils.data.DataLoader(train, batch_size=32)
            scores = methods.gradient_scores(model, loader)
        masks = methods.sparse_masks(model, fraction, scores)
        head = model.pretrained_cfg["classifier"]
        for name, p in model.get_classifier().named_parameters():  # the new head trains
            masks[f"{head}.{name}"] = torch.ones_like(p, dtype=torch.bool)
        methods.apply_masks(model, masks)
        return model, {"chosen": sum(int(m.sum()) for m in masks.values())}

    return choose


def arm(name: str) -> Callable:
    """The model factory of an arm: ``"k=2"``, ``"bitfit"``, ``"sparse"``, ``"random-sparse"``."""
    if name.startswith("k="):
        k = int(name[2:])
        return lambda train: prepare(target_start(train), k)
    factories = {
        "bitfit": choose_bitfit,
        "sparse": sparse(False),
        "random-sparse": sparse(True),
    }
    if name not in factories:
        raise KeyError(f"no arm {name!r}; k=0 ... k={num_blocks()}, or {', '.join(factories)}")
    return factories[name]


def task(target: str, labels_per_class: int, val_per_class: int, test_size: int):
    """A target's pool, its fixed test set and the split per seed."""
    dataset, classes = TARGETS[target]
    pool = data.image_task(dataset, classes, "train")
    test = data.random_subset(data.image_task(dataset, classes, "test"), test_size, seed=0)

    def splits(seed: int):
        return data.few_label_split(pool, labels_per_class, val_per_class, seed=seed)

    return splits, test


# --------------------------------------------------------------------------- the study

# The study settles the chapter's comparisons: the head alone (k=0) against every block
# (k=all) on each target, and the methods that train a small fraction of the weights on the
# near target. The blocks in between are the live run's curve (studying them would cost as
# much again).
STUDY_KS = (0, num_blocks())
SETTING = studies.Setting(GRID, MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS)
GROUPS = [({"target": t, "arm": f"k={k}"}, SETTING) for t in TARGETS for k in STUDY_KS] + [
    ({"target": "near", "arm": m}, SETTING) for m in METHODS
]


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs still needed: each arm's grid on the tuning seeds (extended until the choice
    is interior), then every seed at the chosen rate."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


_tasks: dict[str, Any] = {}


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run: one target, one arm, one seed, one learning rate."""
    target = spec["target"]
    if target not in _tasks:
        _tasks[target] = task(target, LABELS_PER_CLASS, VAL_PER_CLASS, TEST_SIZE)
    splits, test = _tasks[target]
    name = spec["arm"]
    (trial,) = experiments.run_arm(
        name,
        arm(name),
        splits,
        test,
        seeds=[int(spec["seed"])],
        lrs=[float(spec["lr"])],
        budget=BUDGET,
        device=device,
        prepare=skip_frozen(device) if name.startswith("k=") else None,
    )
    return studies.trial_result(trial, MAX_STEPS)


# --------------------------------------------------------------------------- claims


# The arms of the study, as the page lists them.
STUDY_ARMS = {
    **{
        f"{t}, head + top {k} blocks" if k else f"{t}, head only": {"target": t, "arm": f"k={k}"}
        for t in TARGETS
        for k in STUDY_KS
    },
    "near, BitFit": {"target": "near", "arm": "bitfit"},
    "near, sparse (gradient-chosen)": {"target": "near", "arm": "sparse"},
    "near, sparse (random)": {"target": "near", "arm": "random-sparse"},
}


# The sentences chapter 3 teaches, each with the comparison of the study that backs it.
NEAR = {t: {"target": "near", "arm": t} for t in ("k=0", f"k={num_blocks()}", *METHODS)}
FAR = {t: {"target": "far", "arm": t} for t in ("k=0", f"k={num_blocks()}")}
ALL = f"k={num_blocks()}"
CLAIMS: list[studies.Claim] = [
    studies.Claim(
        "far-gains-more",
        "Unfreezing every block helps the far target (digits) more than the near one (clothes): "
        "the gain from the head alone to every block is larger far than near",
        FAR[ALL],
        FAR["k=0"],
        c=NEAR[ALL],
        d=NEAR["k=0"],
        names=("the far target's gain", "the near target's gain"),
    ),
    studies.Claim(
        "full-beats-head-near",
        "On the near target, training every block beats training the head alone",
        NEAR[ALL],
        NEAR["k=0"],
        names=("every block (near)", "the head alone (near)"),
    ),
    studies.Claim(
        "full-beats-head-far",
        "On the far target, training every block beats training the head alone",
        FAR[ALL],
        FAR["k=0"],
        names=("every block (far)", "the head alone (far)"),
    ),
    *[
        studies.Claim(
            f"full-beats-{m}",
            f"Full fine-tuning beats {name}, which trains under 1 % of the weights",
            NEAR[ALL],
            NEAR[m],
            names=("full fine-tuning", name),
        )
        for m, name in (
            ("bitfit", "BitFit"),
            ("sparse", "sparse fine-tuning with gradient-chosen masks"),
            ("random-sparse", "sparse fine-tuning with random masks"),
        )
    ],
    studies.Claim(
        "gradient-vs-random",
        "Choosing the sparse weights by their gradient gains at most 0.02 over choosing as many "
        "at random (tiny-cnn, 0.5 % of the weights)",
        NEAR["sparse"],
        NEAR["random-sparse"],
        expect="at most",
        names=("gradient-chosen masks", "random masks"),
    ),
]
CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
