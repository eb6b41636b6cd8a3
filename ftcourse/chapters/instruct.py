"""Chapter 6 (instruction tuning): what does SFT unlock, against asking the base model without
training, and what does each part of the recipe do?

The task is chapter 6's: tiny-lm answers the course's seven instruction tasks
(:func:`ftcourse.data.text.instruction_items`) in its chat format, scored by exact match on
every held-out item; the fact questions about *unknown* words (facts nowhere in the
pretraining text) are scored apart, as the control. The arms are the chapter's
(:func:`ftcourse.lm.sft_arms`: SFT, the loss on every token, no end token, SFT from random
init, LoRA-SFT) and two ways of asking the base model without training: a few-shot prompt of
``FEW_SHOT_K`` worked examples in plain text (:func:`ftcourse.lm.few_shot_answers`) and the
cloze probe of appendix A1 (:func:`ftcourse.data.text.cloze_for`; fact tasks only).

A seed varies everything a rerun would: which ``SUBSET`` of the training items it trains on,
the fresh embeddings of the chat tokens (:func:`ftcourse.lm.reinit_chat_tokens`), and the
batch order (for the few-shot prompt: which examples each question shows). Every SFT arm's
learning rate is chosen on validation over ``TUNING_SEEDS`` (the no-end-token ablation reuses
SFT's), and each run's length on its validation items inside a ``MAX_STEPS`` budget that the
chapter's profile (120 steps, where every arm ended at its last step) did not give. Besides the
test items, each run stores the cloze probe of the known fact words after tuning (facts kept
or forgotten), the perplexity of held-out Shakespeare (text forgotten) and the share of answers
that end with the chat's end token. LIMA's question is an arm too: SFT on a quarter of the
items at SFT's rate and the same number of steps.

Run it with ``ftcourse study 06``; not yet shown beside the chapter's live run.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from .. import experiments, lm, models, studies
from ..data import text

STUDY = "06"
KEYS = ("arm", "seed", "lr")
EXTRA_COLUMNS = (
    "trainable", "facts_correct", "unknown_correct", "cloze_correct", "stop_rate", "ppl",
)  # fmt: skip
MODEL = "tiny-lm"
TUNING_SEEDS = (0, 1, 2)
SEEDS = tuple(range(10))
SUBSET = 0.8  # each seed trains on its own 80 % of the training items
LIMA_SHARE = 0.25  # LIMA's question: a quarter of the data, the same steps and rate as SFT
PPL_WINDOWS = 64  # held-out Shakespeare windows for the perplexity (forgetting of text)
VAL_ITEMS = 300
MAX_STEPS = 600  # 5x the chapter's profile; validation every EVAL_EVERY steps
EVAL_EVERY = 50
BATCH_SIZE = 16
FEW_SHOT_K = 4
MAX_NEW_TOKENS = 24  # as the chapter's stop_max_new_tokens
LORA_RANK, LORA_ALPHA = 8, 16  # as the chapter's profile
REQUIRED_REGIMES: tuple[str, ...] = ()  # not run yet

SFT_ARMS = ("SFT", "loss on every token", "no end token", "random init", "LoRA", "SFT, a quarter")
BASELINES = (f"few-shot {FEW_SHOT_K}", "cloze")
ARMS = SFT_ARMS + BASELINES
# Centred on the chapter's choices at 120 steps (SFT 3e-4, every token 1e-3, random init 3e-3,
# LoRA 3e-3); the plan adds a neighbour past an edge choice.
GRIDS = {
    "SFT": (1e-4, 3e-4, 1e-3),
    "loss on every token": (3e-4, 1e-3, 3e-3),
    "random init": (1e-3, 3e-3, 1e-2),
    "LoRA": (1e-3, 3e-3, 1e-2),
}


def setting(arm: str) -> studies.Setting:
    """Every SFT arm has the same budget; the ablation takes SFT's rate; the baselines train
    nothing (``lr`` 0, no steps), and the cloze probe is deterministic (one seed)."""
    if arm in ("no end token", "SFT, a quarter"):
        return studies.Setting((), MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS, rate_of="SFT")
    if arm in GRIDS:
        return studies.Setting(GRIDS[arm], MAX_STEPS, EVAL_EVERY, BATCH_SIZE, SEEDS)
    seeds = (0,) if arm == "cloze" else SEEDS
    return studies.Setting((0.0,), 0, EVAL_EVERY, BATCH_SIZE, seeds)


GROUPS = [({"arm": a}, setting(a)) for a in ARMS]


def plan(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each SFT arm's grid on the tuning seeds (extended until the choice is interior), then
    every seed at the chosen rate; the baselines on every seed at once."""
    return studies.plan_tuned(rows, GROUPS, TUNING_SEEDS)


# --------------------------------------------------------------------------- the task


@functools.lru_cache(maxsize=1)
def base_model() -> tuple[nn.Module, Any, int]:
    """tiny-lm, its tokenizer and the seed its facts table was drawn with."""
    loaded = models.load(MODEL)
    return loaded.model.eval(), loaded.tokenizer, (loaded.card or {}).get("seed", 0)


def items(split: str, data_seed: int) -> list[text.Instruction]:
    """The training items, ``VAL_ITEMS`` validation items, or every test item."""
    if split == "validation":
        return text.instruction_items(split, limit=VAL_ITEMS, seed=data_seed)
    return text.instruction_items(split, seed=data_seed)


def subset(
    train: Sequence[text.Instruction], seed: int, share: float = SUBSET
) -> list[text.Instruction]:
    """Seed ``seed``'s ``share`` of the training items (in their original order)."""
    keep = sorted(random.Random(seed).sample(range(len(train)), int(share * len(train))))
    return [train[i] for i in keep]


@functools.lru_cache(maxsize=1)
def held_out_tokens() -> Any:
    """Held-out Shakespeare (plays tiny-lm never trained on), encoded: the perplexity."""
    _, tok, _ = base_model()
    plays = text.shakespeare_works()
    return lm.encode_corpus(tok, [plays[n] for n in text.SHAKESPEARE_HELD_OUT])


def perplexity(model: nn.Module) -> float:
    """Perplexity of held-out Shakespeare: how much of its text a tuned model forgot."""
    return float(np.exp(lm.lm_loss(model, held_out_tokens(), max_windows=PPL_WINDOWS)))


def answerable(test: Sequence[text.Instruction]) -> list[int]:
    """Positions of the items a model could answer (skills, known words): ``test_correct``."""
    return [n for n, i in enumerate(test) if i.known is not False]


def known_facts(test: Sequence[text.Instruction]) -> list[int]:
    """Positions of the fact questions about known words: ``facts_correct`` (the answers) and
    ``cloze_correct`` (the same facts as cloze prompts)."""
    return [n for n, i in enumerate(test) if i.word is not None and i.known]


def unknown(test: Sequence[text.Instruction]) -> list[int]:
    """Positions of the questions about unknown words: ``unknown_correct``."""
    return [n for n, i in enumerate(test) if i.known is False]


def cloze_correct(model: nn.Module, tokenizer, facts: Sequence[text.Instruction]) -> list[bool]:
    """Does the cloze probe complete each fact ("A beagle is a kind of" -> "hound")?"""
    prompts = [text.cloze_for(i) for i in facts]
    got = lm.generate(model, tokenizer, prompts, max_new_tokens=6, chat=False)
    return [text.first_word(g) == i.answer for g, i in zip(got, facts, strict=True)]


def _hits(test: Sequence[text.Instruction], texts: Sequence[str], where: list[int]) -> list[bool]:
    return [lm.normalize_answer(texts[n]) == lm.normalize_answer(test[n].answer) for n in where]


def _columns(test: Sequence[text.Instruction], texts: Sequence[str], cloze: list[bool]) -> dict:
    """The per-item columns of one run from its answers to the test items."""
    return {
        "test_correct": studies.pack(_hits(test, texts, answerable(test))),
        "facts_correct": studies.pack(_hits(test, texts, known_facts(test))),
        "unknown_correct": studies.pack(_hits(test, texts, unknown(test))),
        "cloze_correct": studies.pack(cloze),
    }


# --------------------------------------------------------------------------- one run


def run_one(spec: Mapping[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Train (or prompt) and test one run: one arm, one seed, one learning rate."""
    arm, seed, lr = spec["arm"], int(spec["seed"]), float(spec["lr"])
    base, tok, data_seed = base_model()
    test = items("test", data_seed)
    facts = [test[n] for n in known_facts(test)]
    if arm in BASELINES:
        return _baseline(arm, seed, base, tok, test, facts, data_seed)
    cfg = {"lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA}
    make, fit, _ = lm.sft_arms(cfg, base, tok)["SFT" if arm == "SFT, a quarter" else arm]
    share = LIMA_SHARE if arm == "SFT, a quarter" else SUBSET

    def make_seeded(train: Any) -> nn.Module:
        model = make(train)
        if arm != "random init":  # a seed draws the chat tokens' fresh embeddings too
            lm.reinit_chat_tokens(model, tok, seed=10_000 + seed)
        return model

    train = [(i.prompt, i.answer) for i in subset(items("train", data_seed), seed, share)]
    val = [(i.prompt, i.answer) for i in items("validation", data_seed)]
    last: dict[str, Any] = {}

    def score(model: nn.Module, test_items: Any, device: Any) -> float:
        last["texts"], last["ended"] = lm.respond(
            model, tok, [i.prompt for i in test_items], MAX_NEW_TOKENS
        )
        return float(np.mean(_hits(test_items, last["texts"], answerable(test_items))))

    def measure(model: nn.Module) -> dict[str, Any]:
        return {"cloze": cloze_correct(model, tok, facts), "ppl": perplexity(model)}

    (trial,) = experiments.run_arm(
        arm, make_seeded, lambda s: (train, val), test, seeds=[seed], lrs=[lr],
        budget=experiments.Budget(MAX_STEPS, EVAL_EVERY, None, BATCH_SIZE),
        device=device, fit=fit, score=score, measure=measure,
    )  # fmt: skip
    hits = _hits(test, last["texts"], answerable(test))
    return {
        **studies.trial_result(dataclasses.replace(trial, correct=np.array(hits)), MAX_STEPS),
        **_columns(test, last["texts"], trial.extra["cloze"]),
        "trainable": int(trial.trainable),
        "stop_rate": round(float(np.mean(last["ended"])), 4),
        "ppl": round(trial.extra["ppl"], 3),
    }


def _baseline(
    arm: str,
    seed: int,
    base: nn.Module,
    tok: Any,
    test: Sequence[text.Instruction],
    facts: Sequence[text.Instruction],
    data_seed: int,
) -> dict[str, Any]:
    """The base model asked without training: ``few-shot k`` (plain text, seed-drawn worked
    examples) or ``cloze`` (the facts in their pretraining phrasing; a skill has no cloze
    form and counts as wrong in ``test_correct``)."""
    unknown_facts = [test[n] for n in unknown(test)]  # every unknown item is a fact question
    probe = cloze_correct(base, tok, [*facts, *unknown_facts])
    cloze = probe[: len(facts)]
    if arm == "cloze":
        right = {i.prompt: hit for i, hit in zip([*facts, *unknown_facts], probe, strict=True)}
        texts = [i.answer if right.get(i.prompt) else "" for i in test]  # what the probe got
    else:
        k = int(arm.split()[-1])
        texts = lm.few_shot_answers(base, tok, test, items("train", data_seed), k, seed=seed)
    hits = _hits(test, texts, answerable(test))
    return {
        "val_acc": 0.0, "best_step": 0, "steps_run": 0, "max_steps": 0, "hit_budget": False,
        "train_seconds": 0.0, "test_acc": round(float(np.mean(hits)), 4),
        **_columns(test, texts, cloze), "trainable": 0,
        "stop_rate": 0.0,  # plain text has no end token: an answer is cut at the line
        "ppl": round(perplexity(base), 3),
    }  # fmt: skip


STUDY_ARMS = {
    "the base model, cloze probe (facts only)": {"arm": "cloze"},
    f"the base model, {FEW_SHOT_K}-shot prompt": {"arm": f"few-shot {FEW_SHOT_K}"},
    "SFT (loss on the response and its end token)": {"arm": "SFT"},
    "loss on every token": {"arm": "loss on every token"},
    "no end token": {"arm": "no end token"},
    f"SFT on a quarter of the data (LIMA), {MAX_STEPS} steps": {"arm": "SFT, a quarter"},
    "SFT from random init": {"arm": "random init"},
    f"LoRA-SFT, rank {LORA_RANK}, every linear layer": {"arm": "LoRA"},
}

# The sentences chapter 6 will teach from this study; none is checked until the study is
# stored (tests/test_studies.py checks the claims of REQUIRED_REGIMES only).
CLAIMS: list[studies.Claim] = []
CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
