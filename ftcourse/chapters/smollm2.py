"""Chapters 4 and 5 on a real model: the PEFT methods on SmolLM2-135M, on a CPU.

At tiny-lm's 1.3 M parameters full fine-tuning beats every PEFT arm (studies 04 and 05): a
learner cannot tell whether that is scale or a bug. This study runs the same gloss task (a
WordNet definition -> its category, ten classes, ``LABELS_PER_CLASS`` labels per class)
through the same functions (:func:`ftcourse.chapters.additive.run_trial`) on SmolLM2-135M
(134.5 M parameters, 30 blocks): full fine-tuning, the head alone, a bottleneck adapter, a
soft prompt, LoRA on query and value at two ranks, LoRA on every linear layer at about the
parameters of the larger rank, and QLoRA (that LoRA on an NF4 body).

Sized to about 90 minutes of 2 cores (per step, measured first on an AMD Zen 4 with native
bf16: full fine-tuning 1.6 s, LoRA 0.9 s, the head 0.45 s at 16 definitions): three seeds,
the learning rate chosen on the first seed's validation split (a three-point grid, extended
past an edge choice), a 100-step budget whose adequacy the stored ``hit_budget`` column
reports. Run it with ``ftcourse study smollm2 --regime native``; chapters 4 and 5 show it
beside their tiny-lm studies, and ``benchmarks/peak_memory.py`` measures each method's peak
memory on the same model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import studies
from .additive import TextTask, arm_claim, base_model, parse_arm, run_trial, text_task

STUDY = "smollm2"
KEYS = ("arm", "seed", "lr")
EXTRA_COLUMNS = ("trainable",)
MODEL = "smollm2-135m"
LABELS_PER_CLASS = 64  # as the tiny-lm studies
VAL_PER_CLASS = 20
TEST_PER_CLASS = 100
TUNING_SEEDS = (0,)
SEEDS = (0, 1, 2)
ALPHA = 8.0  # LoRA's scale alpha / r, as chapter 5
REQUIRED_REGIMES = ("native",)  # run on an AMD Zen 4 (native bf16); fp32: still to run

# Ranks 1 and 16 as the ends of tiny-lm's sweep; every linear layer at rank 3 has 30,528 LoRA
# parameters per block, query + value at rank 16 has 30,720 (the LoRA paper's comparison at
# equal parameters); QLoRA is the rank-16 arm on an NF4 body.
ARMS = (
    "full",
    "head",
    "adapter 32",
    "prompt 4",
    "lora 1",
    "lora 16",
    "lora-all 3",
    "qlora 16",
)
# Three rates around where each method usually trains a model of this size; the plan adds a
# neighbour when seed 0's validation chooses an edge.
GRIDS = {
    "full": (1e-5, 3e-5, 1e-4),
    "head": (1e-3, 3e-3, 1e-2),
    "adapter": (3e-4, 1e-3, 3e-3),
    "prompt": (1e-3, 3e-3, 1e-2),
    "lora": (3e-4, 1e-3, 3e-3),
    "lora-all": (3e-4, 1e-3, 3e-3),
    "qlora": (3e-4, 1e-3, 3e-3),
}
MAX_STEPS, EVAL_EVERY, BATCH_SIZE = 100, 20, 16


def setting(arm: str) -> studies.Setting:
    return studies.Setting(GRIDS[parse_arm(arm)[0]], MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS)


GROUPS = [({"arm": a}, setting(a)) for a in ARMS]


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each arm's grid on seed 0 (extended until the choice is interior), then every seed at
    the chosen rate."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


def by_length(ds: torch.utils.data.TensorDataset, pad_id: int) -> torch.utils.data.TensorDataset:
    """The same examples, shortest first: evaluation batches then hold texts of similar
    length, and :class:`ftcourse.lm.Classifier` cuts their common padding."""
    ids, labels = ds.tensors
    order = torch.argsort((ids != pad_id).sum(1), stable=True)
    return torch.utils.data.TensorDataset(ids[order], labels[order])


@functools.cache
def task() -> TextTask:
    """The gloss task encoded with SmolLM2's tokenizer (validation and test sets by length)."""
    tok = base_model(MODEL)[1]
    t = text_task("gloss", tok, LABELS_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS)
    t.val_pool = by_length(t.val_pool, tok.pad_token_id)
    t.test = by_length(t.test, tok.pad_token_id)
    return t


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train and test one run: one arm, one seed, one learning rate."""
    s = setting(spec["arm"])
    trial = run_trial(
        spec["arm"], int(spec["seed"]), float(spec["lr"]), s, device, ALPHA, MODEL, task()
    )
    return {**studies.trial_result(trial, s.max_steps), "trainable": int(trial.trainable)}


STUDY_ARMS = {
    "full fine-tuning": {"arm": "full"},
    "head only": {"arm": "head"},
    "adapter, bottleneck 32": {"arm": "adapter 32"},
    "soft prompt, 4 vectors": {"arm": "prompt 4"},
    "LoRA on query + value, rank 1": {"arm": "lora 1"},
    "LoRA on query + value, rank 16": {"arm": "lora 16"},
    "LoRA on every linear layer, rank 3": {"arm": "lora-all 3"},
    "QLoRA, rank 16": {"arm": "qlora 16"},
}

# The sentences chapters 4 and 5 teach about SmolLM2-135M, each with its comparison; filled
# in from the stored study once it is complete (never tuned to a sentence).
CLAIMS: list[studies.Claim] = []
CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
_ = arm_claim  # the claims use the chapters' helper
