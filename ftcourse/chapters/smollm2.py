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

import csv
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
REQUIRED_REGIMES = ("native", "fp32")  # both on an AMD Zen 4 (native bf16)

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
# Per regime, the arms whose best checkpoint was usually the budget's last step: what the
# study says about them is about 100 steps, and the chapters mark them (tests/test_studies.py
# checks each list against the stored rows both ways). The regimes differ: with three seeds,
# one run more or less at the last step moves an arm across "usually".
BUDGET_BOUND: dict[str, tuple[str, ...]] = {
    "native": ("prompt 4", "lora 1", "qlora 16"),
    "fp32": ("qlora 16",),
}


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

# The sentences chapters 4 and 5 teach about SmolLM2-135M, each with its comparison
# (tests/test_studies.py checks each in every stored regime). The expectations were read off
# the stored study, never tuned to a sentence.
CLAIMS_04: list[studies.Claim] = [
    arm_claim(
        "smol-full-vs-head",
        "On SmolLM2-135M, full fine-tuning beats training the head alone",
        "full",
        "head",
        "a",
        ("full fine-tuning", "the head alone"),
    ),
    arm_claim(
        "smol-adapter-vs-head",
        "On SmolLM2-135M, adapters (bottleneck 32) beat the head alone",
        "adapter 32",
        "head",
        "a",
        ("adapters (32)", "the head alone"),
    ),
    arm_claim(
        "smol-full-vs-adapter",
        "On SmolLM2-135M, three seeds cannot tell full fine-tuning from adapters (bottleneck "
        "32): the interval of their difference includes zero (at tiny-lm, full fine-tuning "
        "was clearly ahead)",
        "full",
        "adapter 32",
        "none",
        ("full fine-tuning", "adapters (32)"),
    ),
    arm_claim(
        "smol-full-vs-prompt",
        "On SmolLM2-135M, full fine-tuning beats a soft prompt of 4 vectors at 100 steps",
        "full",
        "prompt 4",
        "a",
        ("full fine-tuning", "a prompt of 4"),
    ),
    arm_claim(
        "smol-adapter-vs-prompt",
        "On SmolLM2-135M, adapters (32) beat a soft prompt of 4 vectors at 100 steps",
        "adapter 32",
        "prompt 4",
        "a",
        ("adapters (32)", "a prompt of 4"),
    ),
    arm_claim(
        "smol-prompt-vs-head",
        "On SmolLM2-135M at 100 steps, a soft prompt of 4 vectors cannot be told apart from "
        "the head alone",
        "prompt 4",
        "head",
        "none",
        ("a prompt of 4", "the head alone"),
    ),
]
CLAIMS_05: list[studies.Claim] = [
    *(
        arm_claim(
            f"smol-full-vs-lora-{r}",
            f"On SmolLM2-135M, three seeds cannot tell full fine-tuning from LoRA of rank {r} "
            "on query and value: the interval of their difference includes zero (at tiny-lm, "
            "full fine-tuning was clearly ahead of every rank)",
            "full",
            f"lora {r}",
            "none",
            ("full fine-tuning", f"LoRA rank {r}"),
        )
        for r in (1, 16)
    ),
    arm_claim(
        "smol-rank-16-vs-1",
        "On SmolLM2-135M, three seeds cannot tell LoRA of rank 16 from rank 1 on query and "
        "value: the interval of their difference includes zero (at tiny-lm, rank 16 was "
        "clearly ahead)",
        "lora 16",
        "lora 1",
        "none",
        ("rank 16", "rank 1"),
    ),
    arm_claim(
        "smol-placement",
        "On SmolLM2-135M too, at about equal trainable parameters, LoRA on every linear layer "
        "(rank 3) beats LoRA on query and value only (rank 16)",
        "lora-all 3", "lora 16", "a", ("every linear layer", "query + value"),
    ),
    arm_claim(
        "smol-full-vs-lora-all",
        "On SmolLM2-135M, three seeds cannot tell full fine-tuning from LoRA on every linear "
        "layer (rank 3): the interval of their difference includes zero",
        "full", "lora-all 3", "none", ("full fine-tuning", "LoRA on every linear layer"),
    ),
    arm_claim(
        "smol-qlora-vs-lora",
        "On SmolLM2-135M, three seeds cannot tell QLoRA (rank 16 on a frozen NF4 body) from "
        "LoRA of rank 16 on unquantized weights: the interval of their difference includes "
        "zero",
        "qlora 16", "lora 16", "none", ("QLoRA", "LoRA on unquantized weights"),
    ),
]  # fmt: skip
CLAIMS = CLAIMS_04 + CLAIMS_05
CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
_ = arm_claim  # the claims use the chapters' helper


# --------------------------------------------------------------------------- the size trend

# Per chapter, each PEFT family's arm, compared with full fine-tuning in the study of every
# model size: does the gap close as models grow?
FAMILIES: dict[str, dict[str, str]] = {
    "04": {
        "adapters (bottleneck 32)": "adapter 32",
        "soft prompt (4 vectors)": "prompt 4",
        "head only": "head",
    },
    "05": {
        "LoRA on query + value, rank 1": "lora 1",
        "LoRA on query + value, rank 16": "lora 16",
        "LoRA on every linear layer, rank 3": "lora-all 3",
    },
}


def sizes(chapter: str) -> list[tuple[str, str, dict[str, str]]]:
    """The studies of each model size for chapter 4 or 5, smallest first: ``(name, study,
    where)`` - tiny-lm's other widths (study ``widths``), tiny-lm (the chapter's own study)
    and SmolLM2-135M (this study)."""
    from ..pretrain import LM_WIDTH
    from .widths import WIDTHS

    def width(w: int) -> tuple[str, str, dict[str, str]]:
        name = f"tiny-lm-w{w}"
        return (name, "widths", {"model": name})

    return [
        *(width(w) for w in WIDTHS if w < LM_WIDTH),
        ("tiny-lm", chapter, {}),
        *(width(w) for w in WIDTHS if w > LM_WIDTH),
        ("SmolLM2-135M", STUDY, {}),
    ]


# The LoRA ranks on query and value that each study ran (the rank curve).
RANK_SWEEPS: dict[str, tuple[int, ...]] = {"widths": (1, 4, 16), "05": (1, 4, 16), STUDY: (1, 16)}


@dataclass(frozen=True)
class TrendPoint:
    """One arm against full fine-tuning in one model's study: the model's parameter count
    (the full arm's trainable parameters), the regime read, and the difference."""

    family: str
    study: str
    parameters: int
    regime: str
    difference: studies.Difference
    budget_bound: bool = False  # the arm's best checkpoint was usually its last step
    model: str = ""  # the model's name, as :func:`sizes` gives it


def gap_to_full(study_name: str, arm: str, name: str = "", **where: str) -> TrendPoint | None:
    """``arm`` minus full fine-tuning in a stored study, for the model called ``name`` (by
    default the study's name; ``where``: the model's key in a study of several, e.g.
    ``model="tiny-lm-w64"`` in ``widths``), in the study's regime closest to this process;
    ``None`` while the study has no complete regime."""
    from . import module_for

    module = module_for(study_name)
    stored = studies.load(study_name)
    regime = studies.study_regime(module, stored)
    if regime is None:
        return None
    a = stored.arm(regime, module.TUNING_SEEDS, arm=arm, **where)
    full = stored.arm(regime, module.TUNING_SEEDS, arm="full", **where)
    diff = studies.Difference.of(arm, "full fine-tuning", a.correct, full.correct)
    params = int(np.median(full.values("trainable")))
    budget_bound = a.hit_budget_rate > 0.5
    return TrendPoint(arm, study_name, params, regime, diff, budget_bound, name or study_name)


def trend(chapter: str) -> dict[str, list[TrendPoint]]:
    """Chapter 4's or 5's families (``FAMILIES``), each a list of points by model size
    (:func:`sizes`; a study not stored yet is left out)."""
    out = {}
    for family, arm in FAMILIES[chapter].items():
        points = [gap_to_full(s, arm, name, **where) for name, s, where in sizes(chapter)]
        out[family] = [p for p in points if p is not None]
    return out


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}" if n < 1e6 else f"{n / 1e6:.1f}"


def size_list(families: Mapping[str, Sequence[TrendPoint]]) -> str:
    """The model sizes the trend has points for, smallest first: ``"tiny-lm-w64 (0.46 M
    parameters), tiny-lm (1.3 M) and SmolLM2-135M (134.5 M)"``."""
    found = sorted({(p.parameters, p.model) for points in families.values() for p in points})
    names = [f"{m} ({_millions(n)} M{' parameters' if i == 0 else ''})" for i, (n, m) in
             enumerate(found)]  # fmt: skip
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def trend_sentences(families: Mapping[str, Sequence[TrendPoint]]) -> str:
    """Markdown, one bullet per family: its difference to full fine-tuning at each model size,
    in generated sentences (:meth:`ftcourse.studies.Difference.sentence`)."""
    lines = []
    for family, points in families.items():
        parts = [
            f"{p.model or p.study} ({_millions(p.parameters)} M, {p.regime}): "
            f"{p.difference.sentence()}"
            + (
                " (most of its runs were still improving at the budget's last step: a longer "
                "budget could move it)"
                if p.budget_bound
                else ""
            )
            for p in points
        ]
        lines.append(f"- **{family}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def rank_curves() -> dict[str, list[tuple[int, TrendPoint]]]:
    """Per model size, LoRA on query and value at each rank its study ran, minus full
    fine-tuning (the rank curve of chapter 5)."""
    out = {}
    for name, study_name, where in sizes("05"):
        ranks = RANK_SWEEPS[study_name]
        points = [(r, gap_to_full(study_name, f"lora {r}", name, **where)) for r in ranks]
        if all(p is not None for _, p in points):
            out[name] = points
    return out


# --------------------------------------------------------------------------- peak memory

PEAK_MEMORY = studies.ROOT / "benchmarks" / "results" / "peak_memory.csv"
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations")
# (batch, tokens) measured: the studies' batch of definitions, and a longer context
MEMORY_SHAPES = ((16, 32), (8, 256))


def peak_memory(
    model: str, batch: int, tokens: int, precision: str | None = None
) -> dict[str, dict[str, Any]]:
    """The rows of ``benchmarks/peak_memory.py`` for one model and shape, by arm (bytes as
    ints), in ``precision`` (``"bf16 autocast"``, ``"fp32"``; by default this process's if it
    was measured, else the other); empty when nothing is stored."""
    if not PEAK_MEMORY.exists():
        return {}
    with open(PEAK_MEMORY, newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["model"] == model and int(r["batch"]) == batch and int(r["tokens"]) == tokens
        ]
    stored = sorted({r["precision"] for r in rows})
    if precision is None:
        from ..precision import describe

        precision = describe() if describe() in stored else (stored[0] if stored else "")
    rows = [r for r in rows if r["precision"] == precision]
    ints = ("trainable", "batch", "tokens", "peak", *MEMORY_PARTS)
    return {r["arm"]: {k: int(v) if k in ints else v for k, v in r.items()} for r in rows}


def memory_table(arms: Sequence[str], shapes: Sequence[tuple[int, int]]) -> str:
    """Markdown: for each arm, the peak memory of one training step on tiny-lm and on
    SmolLM2-135M at each shape (batch x tokens), and how many times less than full
    fine-tuning's peak that is."""
    from ..memory import bytes_str

    head = "| arm |" + "".join(
        f" {name}, {b} × {t} tokens |" for name in ("tiny-lm", "SmolLM2-135M") for b, t in shapes
    )
    lines = [head, "|---" * (1 + 2 * len(shapes)) + "|"]
    tables = [peak_memory(m, b, t) for m in ("tiny-lm", MODEL) for b, t in shapes]
    for arm in ("full", *arms):
        cells = []
        for table in tables:
            if arm not in table or "full" not in table:
                cells.append("–")
                continue
            ratio = table["full"]["peak"] / table[arm]["peak"]
            cells.append(
                bytes_str(table[arm]["peak"]) + ("" if arm == "full" else f" ({ratio:.1f}× less)")
            )
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_summary(arm: str, model: str = MODEL) -> str:
    """A generated sentence: at each measured shape, the share of full fine-tuning's peak
    that its gradients and optimizer state take, and how many times less ``arm`` peaks at
    (``""`` when nothing is measured)."""
    from ..memory import bytes_str

    parts, precision = [], ""
    for batch, tokens in MEMORY_SHAPES:
        rows = peak_memory(model, batch, tokens)
        if "full" not in rows or arm not in rows:
            return ""
        full, other = rows["full"], rows[arm]
        precision = full["precision"]
        state = full["gradients"] + full["optimizer"]
        parts.append(
            f"at {batch} × {tokens} tokens, full fine-tuning's gradients and AdamW state are "
            f"{bytes_str(state)} of its {bytes_str(full['peak'])} peak "
            f"({state / full['peak']:.0%}), and {arm} peaks at {bytes_str(other['peak'])} "
            f"({full['peak'] / other['peak']:.1f}× less)"
        )
    name = "SmolLM2-135M" if model == MODEL else model
    return f"On {name} ({precision}): " + "; ".join(parts)
