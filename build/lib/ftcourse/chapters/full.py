"""Chapter 2 (full fine-tuning and forgetting): does a smaller learning rate forget less?

The source task is what tiny-cnn was pretrained on, Fashion-MNIST classes 0-4; the target is
classes 5-9 with 100 labelled images per class (chapter 0's task, more labels). Every arm
fine-tunes all weights at one learning rate of a sweep; after training, three readings of the
source task: the old head on the new body, the same with the pretrained BatchNorm statistics
put back, and a re-fitted linear source head. Two controls: the pretrained model untouched
("before") and learning rate 0, where only BatchNorm's running statistics move. A scratch arm
(tuned on validation) gives the overfitting comparison.

The notebook's live run imports :func:`source`, :func:`measure` and :func:`bn_drift_only`
from here, and the reference study (``ftcourse study 02``) runs them with more seeds and a
larger test set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import data, experiments, models, studies
from ..train import correct, evaluate, features, linear_probe, predict
from .quickstart import Task, task

STUDY = "02"
KEYS = ("arm", "seed", "lr")
EXTRA_COLUMNS = ("source_correct", "source_correct_bn", "source_correct_refit", "gap")
SOURCE_CLASSES = (0, 1, 2, 3, 4)
LABELS_PER_CLASS = 100
VAL_PER_CLASS = 40
TEST_SIZE = 2000
REFIT_LABELS = 100  # source images per class for the re-fitted head
TUNING_SEEDS = (0, 1, 2)
SEEDS = tuple(range(10))
SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # every seed at every rate; extended at an edge choice
SCRATCH_GRID = (3e-3, 1e-2, 3e-2)
MAX_STEPS, EVAL_EVERY, BATCH_SIZE = 200, 20, 32
BUDGET = experiments.Budget(MAX_STEPS, EVAL_EVERY, None, BATCH_SIZE)
MODEL = "tiny-cnn"
REQUIRED_REGIMES = ("fp32", "avx2")  # an Ice Lake CPU: no bf16; AVX-512 and AVX2 kernels


# --------------------------------------------------------------------------- the source task


@dataclass
class Source:
    """What the pretrained model knew, and how to measure what is left of it."""

    head: nn.Module  # the pretrained classifier, kept aside
    head_name: str
    test: torch.utils.data.Dataset
    labels: torch.Tensor  # the source labels, or the original model's predictions
    train: torch.utils.data.Dataset  # labelled source images for a re-fitted head
    bn: dict[str, torch.Tensor]  # the pretrained BatchNorm running statistics
    kind: str  # "accuracy on the source classes" or "agreement with ..."


def source(
    model: str, test_size: int, refit_labels: int, device: Any = "cpu"
) -> tuple[Source, nn.Module]:
    """The source task of ``model`` and the pretrained model itself. For a model pretrained
    on something we cannot test offline (ImageNet), the "source accuracy" is agreement with
    the original model's predictions on the same images."""
    original = models.load(model)
    test = data.random_subset(data.image_task("fashion-mnist", SOURCE_CLASSES, "test"), test_size)
    train = data.image_task(
        "fashion-mnist", SOURCE_CLASSES, "train", labels_per_class=refit_labels, seed=0
    )
    if original.card.get("classes") == [data.FASHION_CLASSES[c] for c in SOURCE_CLASSES]:
        labels, kind = test.dataset.tensors[1][test.indices], "accuracy on the source classes"
    else:
        labels = predict(original.model.to(device), test, device).argmax(1).cpu()
        kind = "agreement with the original model's predictions"
    bn = {k: v.clone() for k, v in original.model.state_dict().items() if "running_" in k}
    head_name = original.model.pretrained_cfg["classifier"]
    src = Source(
        copy.deepcopy(original.model.get_classifier()), head_name, test, labels, train, bn, kind
    )
    return src, original.model


def source_correct(src: Source, model: nn.Module, device: Any = "cpu") -> np.ndarray:
    """The old head on ``model``'s body, per source image: right (or in agreement)?"""
    old = copy.deepcopy(model)
    setattr(old, src.head_name, copy.deepcopy(src.head))
    pred = predict(old.to(device), src.test, device).argmax(1).cpu()
    return (pred == src.labels).numpy()


def with_source_bn_statistics(src: Source, model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the pretrained ones."""
    restored = copy.deepcopy(model)
    restored.load_state_dict({**restored.state_dict(), **src.bn})
    return restored


def refit_correct(src: Source, model: nn.Module, device: Any = "cpu") -> np.ndarray:
    """A fresh linear source head fitted on the frozen body, per source test image: do the
    features still hold the source classes?"""
    return linear_probe(
        features(model, src.train, device), features(model, src.test, device), per_item=True
    ).numpy()


def measure(src: Source, device: Any = "cpu") -> Callable[[nn.Module], dict[str, Any]]:
    """The three readings of the source task on a fine-tuned model (for ``run_arm``)."""

    def readings(model: nn.Module) -> dict[str, Any]:
        as_is = source_correct(src, model, device)
        restored = source_correct(src, with_source_bn_statistics(src, model), device)
        refit = refit_correct(src, model, device)
        return {
            "source_acc": float(as_is.mean()),
            "source_acc_bn_restored": float(restored.mean()),
            "source_refit": float(refit.mean()),
            "source_correct": as_is,  # per source test image
            "source_correct_bn_restored": restored,
            "source_correct_refit": refit,
        }

    return readings


def bn_drift_only(
    model: str, train: torch.utils.data.Dataset, steps: int, batch_size: int, seed: int,
    device: Any = "cpu",
) -> nn.Module:  # fmt: skip
    """The control of chapter 2: the pretrained model after ``steps`` target batches in
    training mode at learning rate 0. No weight changes; BatchNorm replaces its running
    statistics with the target's."""
    net = models.load(model, num_classes=5).model.to(device).train()
    loader = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    done = 0
    with torch.no_grad():
        while done < steps:
            for x, _ in loader:
                net(x.to(device))  # BatchNorm updates its running statistics here
                done += 1
                if done == steps:
                    break
    return net


def train_val_gap(trial: Any) -> float:
    """Training minus validation accuracy at the checkpoint validation chose."""
    i = trial.curve.step.index(trial.steps)
    return float(trial.curve.train_acc[i] - trial.curve.val_acc[i])


# --------------------------------------------------------------------------- the study

# The sweep is the experiment: every seed at every rate. scratch is tuned as usual; the two
# controls have no learning rate ("before": the pretrained model; "lr0": BatchNorm drift).
GROUPS = [
    ({"arm": "scratch"}, studies.Setting(SCRATCH_GRID, MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS)),
    ({"arm": "lr0"}, studies.Setting((0.0,), MAX_STEPS, 0, BATCH_SIZE, SEEDS)),
    ({"arm": "before"}, studies.Setting((0.0,), 0, 0, 0, SEEDS)),
]
SWEEPS = [{"arm": "fine-tune"}]  # the rate validation chooses from the sweep: interior?


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The sweep (every seed at every rate, one neighbour added beyond an edge choice), then
    the controls and the tuned scratch arm."""
    sweep = studies.Setting(SWEEP, MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS)
    grid = studies.grid_for(rows, {"arm": "fine-tune"}, sweep, TUNING_SEEDS)
    out = [{"arm": "fine-tune", "seed": s, "lr": lr} for lr in grid for s in SEEDS]
    return out + studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


_cache: dict[str, Any] = {}


def _setup(device: Any) -> tuple[Source, Task]:
    if "source" not in _cache:
        _cache["source"] = source(MODEL, TEST_SIZE, REFIT_LABELS, device)[0]
        _cache["task"] = task(LABELS_PER_CLASS, VAL_PER_CLASS, TEST_SIZE)
    return _cache["source"], _cache["task"]


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run of the study."""
    src, t = _setup(device)
    arm, seed, lr = spec["arm"], int(spec["seed"]), float(spec["lr"])
    if arm in ("before", "lr0"):
        train, val = t.splits(seed)
        if arm == "lr0":
            net = bn_drift_only(MODEL, train, MAX_STEPS, BATCH_SIZE, seed, device)
        else:
            net = models.load(MODEL, num_classes=5).model.to(device)
        r = measure(src, device)(net)
        right = correct(net, t.test_set, device).numpy()
        result = {
            "val_acc": round(evaluate(net, val, device), 4),
            "best_step": 0,
            "steps_run": MAX_STEPS if arm == "lr0" else 0,
            "max_steps": MAX_STEPS if arm == "lr0" else 0,
            "hit_budget": False,
            "train_seconds": 0.0,
            "test_acc": round(float(right.mean()), 4),
            "test_correct": studies.pack(right),
            "gap": float("nan"),
        }
    else:
        make = (
            (lambda train: models.load(MODEL, num_classes=5).model)
            if arm == "fine-tune"
            else (lambda train: models.build(MODEL, 5))
        )
        (trial,) = experiments.run_arm(
            arm,
            make,
            t.splits,
            t.test_set,
            seeds=[seed],
            lrs=[lr],
            budget=BUDGET,
            device=device,
            measure=measure(src, device),
        )
        r = trial.extra
        result = {**studies.trial_result(trial, MAX_STEPS), "gap": round(train_val_gap(trial), 4)}
    return {
        **result,
        "source_correct": studies.pack(r["source_correct"]),
        "source_correct_bn": studies.pack(r["source_correct_bn_restored"]),
        "source_correct_refit": studies.pack(r["source_correct_refit"]),
    }


# --------------------------------------------------------------------------- claims


# The sentences chapter 2 teaches, each with the comparison of the study that backs it. "The
# rate validation chose" is the sweep's choice over the tuning seeds (``{"arm": "fine-tune"}``).
BEFORE, LR0, CHOSEN = {"arm": "before"}, {"arm": "lr0"}, {"arm": "fine-tune"}
SMALLEST, LARGEST = {**CHOSEN, "lr": SWEEP[0]}, {**CHOSEN, "lr": SWEEP[-1]}
CLAIMS: list[studies.Claim] = [
    studies.Claim(
        "bn-drift",
        "BatchNorm drift alone (learning rate 0, no weight changed) lowers the old head's "
        "source accuracy",
        BEFORE,
        LR0,
        measure_a="source_correct",
        measure_b="source_correct",
        names=("the pretrained model", "the lr = 0 control"),
    ),
    studies.Claim(
        "weights-forget",
        "With the pretrained BatchNorm statistics put back, the model fine-tuned at the rate "
        "validation chose still forgets: its old head scores below the pretrained model's",
        BEFORE,
        CHOSEN,
        measure_a="source_correct",
        measure_b="source_correct_bn",
        names=("the pretrained model", "the chosen rate's model, statistics restored"),
    ),
    studies.Claim(
        "smaller-rate-forgets-less",
        f"A smaller learning rate forgets less: with statistics restored, lr {SWEEP[0]:g} keeps "
        f"more of the source task than lr {SWEEP[-1]:g}",
        SMALLEST,
        LARGEST,
        measure_a="source_correct_bn",
        measure_b="source_correct_bn",
    ),
    studies.Claim(
        "smallest-rate-keeps",
        f"At lr {SWEEP[0]:g} the weights forget little: with statistics restored, the old head "
        "loses at most 0.02 of its source accuracy",
        BEFORE,
        SMALLEST,
        expect="at most",
        measure_a="source_correct",
        measure_b="source_correct_bn",
        names=("the pretrained model", f"lr {SWEEP[0]:g}, statistics restored"),
    ),
    studies.Claim(
        "features-remember",
        "At the rate validation chose, a re-fitted linear head recovers more of the source task "
        "than the old head keeps: the features remember more than the head",
        CHOSEN,
        CHOSEN,
        measure_a="source_correct_refit",
        measure_b="source_correct_bn",
        names=("a re-fitted source head", "the old head (statistics restored)"),
    ),
    studies.Claim(
        "price-of-a-small-rate",
        f"Forgetting less has a price on the target: the rate validation chose beats lr "
        f"{SWEEP[0]:g} on the target's test set",
        CHOSEN,
        SMALLEST,
        names=("the chosen rate", f"lr {SWEEP[0]:g}"),
    ),
]
CLAIMS.append(
    studies.Claim(
        "overfitting",
        "Both tuned on validation, scratch overfits at most 0.02 more than fine-tuning (the "
        "training minus validation accuracy at the chosen checkpoint; the first edition, with "
        "scratch untuned, said scratch overfits more)",
        {"arm": "scratch"},
        CHOSEN,
        expect="at most",
        measure_a="gap",
        measure_b="gap",
        names=("scratch", "fine-tuning"),
        ahead="overfits more than",
    )
)
CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
