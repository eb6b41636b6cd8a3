"""Chapters 4 and 5 across model sizes: the PEFT arms on tiny-lm at other widths.

Studies 04 and 05 run their arms on tiny-lm (width 128, 1.3 M parameters), the SmolLM2 study
on SmolLM2-135M (:mod:`ftcourse.chapters.smollm2`). Two points cannot show a trend, so this
study runs the size trend's arms on tiny-lm's recipe at other widths (``ftcourse pretrain lm
--width 64``: the same tokenizer, corpus, steps and seed; 4 layers, 4 heads, the MLP 2.75
times the width, :func:`ftcourse.pretrain.lm_size`), on the same gloss task through the same
functions (:func:`ftcourse.chapters.additive.run_trial`), with chapter 4's budget and grids.

Cheaper than studies 04 and 05 (sized to fit beside them in one session of 2 cores): the rate
is chosen on seed 0's validation split (a three-point grid, extended past an edge choice) and
``SEEDS`` runs at it. Each width's pretraining card (recipe, held-out loss, machine) is kept
beside the rows, as ``<model>.card.json`` in the study's folder. The points feed
:func:`ftcourse.chapters.smollm2.trend` and :func:`~ftcourse.chapters.smollm2.rank_curves`;
this study makes no claims of its own. Run it with ``ftcourse study widths --regime native``
after pretraining each width (``make studies`` does both).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import studies
from . import additive, lora
from .additive import TextTask, base_model, parse_arm, run_trial, text_task

STUDY = "widths"
KEYS = ("model", "arm", "seed", "lr")
EXTRA_COLUMNS = ("trainable",)
WIDTHS = (64,)  # width 128 is tiny-lm itself (studies 04 and 05)
MODELS = tuple(f"tiny-lm-w{w}" for w in WIDTHS)
TUNING_SEEDS = (0,)
SEEDS = (0, 1, 2, 3, 4)
REQUIRED_REGIMES = ("native",)  # run on an AMD Zen 4 (native bf16); fp32: still to run
BUDGET_BOUND: dict[str, tuple[str, ...]] = {}  # per regime: none
CLAIMS: list[studies.Claim] = []  # the trend is read by chapters 4-5 (smollm2.trend)

# The arms of the size trend (chapter 4's families and chapter 5's rank curve).
ARMS = (
    "full",
    "head",
    "adapter 32",
    "prompt 4",
    "lora 1",
    "lora 4",
    "lora 16",
    "lora-all 3",
)


def setting(arm: str) -> studies.Setting:
    """Chapter 4's grid and budget for ``arm`` (chapter 5's for LoRA), with this study's seeds."""
    method = parse_arm(arm)[0]
    base = lora.setting(arm) if method in lora.GRIDS else additive.setting(arm)
    return dataclasses.replace(base, seeds=SEEDS)


GROUPS = [({"model": m, "arm": a}, setting(a)) for m in MODELS for a in ARMS]


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each width and arm: the grid on seed 0 (extended until the choice is interior),
    then every seed at the chosen rate."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


def model_folder(model: str) -> Path:
    """The pretrained folder of ``model`` (``"tiny-lm-w64"``); a clear error naming the
    command that makes it when it is missing."""
    from ..pretrain import pretrained_dir

    if model not in MODELS:
        raise KeyError(f"unknown width model {model!r}; this study runs {', '.join(MODELS)}")
    folder = pretrained_dir(model)
    if not (folder / "card.json").is_file():
        width = model.removeprefix("tiny-lm-w")
        raise FileNotFoundError(
            f"{model} is not pretrained yet ({folder}): run `ftcourse pretrain lm --width "
            f"{width}` first (fp32, about 10-40 minutes of 2 cores by width)"
        )
    return folder


@functools.cache
def task(model: str) -> TextTask:
    """Chapter 4's gloss task (its sizes) encoded with ``model``'s tokenizer, which must be
    tiny-lm's (the same recipe trains the same tokenizer at every width)."""
    tok = base_model(str(model_folder(model)))[1]
    if tok.get_vocab() != base_model(additive.MODEL)[1].get_vocab():
        raise ValueError(f"{model}'s tokenizer is not tiny-lm's: the tasks would differ")
    return text_task(
        "gloss", tok, additive.LABELS_PER_CLASS, additive.VAL_PER_CLASS, additive.TEST_PER_CLASS
    )


@functools.cache
def keep_card(model: str) -> Path:
    """Copy ``model``'s pretraining card beside the study's rows (once per process)."""
    out = studies.study_dir(STUDY) / f"{model}.card.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_folder(model) / "card.json", out)
    return out


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run: one width, one arm, one seed, one learning rate."""
    s = setting(spec["arm"])
    keep_card(spec["model"])
    model = str(model_folder(spec["model"]))
    trial = run_trial(
        spec["arm"], int(spec["seed"]), float(spec["lr"]), s, device, lora.ALPHA, model,
        task(spec["model"]),
    )  # fmt: skip
    return {**studies.trial_result(trial, s.max_steps), "trainable": int(trial.trainable)}
