"""Chapter 6's reference study (ftcourse.chapters.instruct): its plan, its seeds and one run of
each kind, at a tiny size."""

from __future__ import annotations

import pytest
import torch

from ftcourse import lm, studies
from ftcourse.chapters import instruct, module_for
from ftcourse.data import text


def test_the_study_is_registered_and_plans_grids_then_seeds():
    assert module_for("06") is instruct and module_for("6") is instruct
    planned = instruct.plan([])
    by_arm: dict[str, list] = {}
    for spec in planned:
        by_arm.setdefault(spec["arm"], []).append(spec)
    for arm, grid in instruct.GRIDS.items():  # first the grid on the tuning seeds only
        assert {(s["seed"], s["lr"]) for s in by_arm[arm]} == {
            (seed, lr) for seed in instruct.TUNING_SEEDS for lr in grid
        }
    assert "no end token" not in by_arm and "SFT, a quarter" not in by_arm  # SFT's rate
    rows = [dict(s, val_acc=0.5 + (s["lr"] == 3e-4) * 0.1) for s in planned if s["arm"] == "SFT"]
    then = [s for s in instruct.plan(rows) if s["arm"] in ("no end token", "SFT, a quarter")]
    assert {s["lr"] for s in then} == {3e-4} and len(then) == 2 * len(instruct.SEEDS)
    assert [s["seed"] for s in by_arm[f"few-shot {instruct.FEW_SHOT_K}"]] == list(instruct.SEEDS)
    assert [s["seed"] for s in by_arm["cloze"]] == [0]


def test_seeds_draw_different_subsets_the_same_way_every_time():
    train = text.instruction_items("train")
    a, b = instruct.subset(train, 0), instruct.subset(train, 1)
    assert len(a) == len(b) == int(instruct.SUBSET * len(train))
    quarter = instruct.subset(train, 0, instruct.LIMA_SHARE)
    assert len(quarter) == int(instruct.LIMA_SHARE * len(train))
    assert a == instruct.subset(train, 0) and a != b
    assert set(map(id, a)) <= set(map(id, train))


@pytest.fixture
def small(monkeypatch):
    """The study at a tiny size: 2 steps, 6 validation items, 2 test items per group."""
    monkeypatch.setattr(instruct, "MAX_STEPS", 2)
    monkeypatch.setattr(instruct, "EVAL_EVERY", 1)
    monkeypatch.setattr(instruct, "PPL_WINDOWS", 2)
    full = instruct.items

    def items(split, data_seed):
        if split == "validation":
            return text.instruction_items(split, limit=6, seed=data_seed)
        if split == "test":
            return text.instruction_items(split, per_task=2, seed=data_seed)
        return full(split, data_seed)

    monkeypatch.setattr(instruct, "items", items)
    return text.instruction_items("test", per_task=2)


def test_one_sft_run_stores_every_column(small):
    test = small
    rows = [instruct.run_one({"arm": "SFT", "seed": s, "lr": 1e-3}) for s in (0, 1)]
    for row in rows:
        assert set(studies.RESULT_COLUMNS + instruct.EXTRA_COLUMNS) <= set(row)
        assert len(studies.unpack(row["test_correct"])) == len(instruct.answerable(test))
        assert len(studies.unpack(row["facts_correct"])) == len(instruct.known_facts(test))
        assert len(studies.unpack(row["unknown_correct"])) == len(instruct.unknown(test))
        assert len(studies.unpack(row["cloze_correct"])) == len(instruct.known_facts(test))
        assert row["max_steps"] == 2 and 0 <= row["stop_rate"] <= 1 and row["ppl"] > 1


def test_the_chat_tokens_are_drawn_by_the_seed(small, monkeypatch):
    drawn = []
    real = lm.reinit_chat_tokens

    def spy(model, tokenizer, seed):
        drawn.append(seed)
        real(model, tokenizer, seed)

    monkeypatch.setattr(lm, "reinit_chat_tokens", spy)
    monkeypatch.setattr(instruct, "MAX_STEPS", 1)
    for seed in (3, 4):
        instruct.run_one({"arm": "LoRA", "seed": seed, "lr": 1e-3})
    assert drawn == [10_003, 10_004]


def test_the_baselines_train_nothing_and_score_the_same_items(small):
    test = small
    before = {k: v.clone() for k, v in instruct.base_model()[0].state_dict().items()}
    cloze = instruct.run_one({"arm": "cloze", "seed": 0, "lr": 0.0})
    few = instruct.run_one({"arm": f"few-shot {instruct.FEW_SHOT_K}", "seed": 0, "lr": 0.0})
    after = instruct.base_model()[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for row in (cloze, few):
        assert row["train_seconds"] == 0.0 and row["trainable"] == 0
        assert len(studies.unpack(row["facts_correct"])) == len(instruct.known_facts(test))
    # the cloze arm's facts column is the probe itself; skills count as wrong
    assert cloze["facts_correct"] == cloze["cloze_correct"]
    skills = [n for n, i in enumerate(test) if i.word is None]
    right = studies.unpack(cloze["test_correct"])
    answerable = instruct.answerable(test)
    assert not any(right[answerable.index(n)] for n in skills)
