"""Chapter 8's reference study (ftcourse.chapters.semi): its configurations, its plan and one
run of each kind at a tiny size."""

from __future__ import annotations

import pytest

from ftcourse import profiles, studies
from ftcourse.chapters import module_for
from ftcourse.chapters import semi as study


def test_the_study_is_registered_and_plans_grids_then_seeds():
    assert module_for("08") is study and module_for("8") is study
    planned = study.plan([])
    assert len(planned) == len(study.GROUPS) * 3 * len(study.TUNING_SEEDS)
    for where, setting in study.GROUPS:
        mine = [s for s in planned if studies.matches(s, where)]
        assert {(s["seed"], s["lr"]) for s in mine} == {
            (seed, lr) for seed in study.TUNING_SEEDS for lr in setting.lrs
        }
    # once the tuning seeds chose an interior rate, every seed runs at it
    where, _ = study.GROUPS[0]
    rows = [dict(s, val_acc=0.5 + (s["lr"] == 1e-2) * 0.1) for s in planned
            if studies.matches(s, where)]  # fmt: skip
    then = [s for s in study.plan(rows) if studies.matches(s, where) and s["lr"] == 1e-2]
    assert sorted(s["seed"] for s in then) == sorted([*study.TUNING_SEEDS, *study.SEEDS])


def test_the_shipped_configuration_is_the_chapters_cpu_profile():
    cfg = profiles.get_profile("cpu").section("semi")
    shipped = study.SHIPPED
    assert cfg["batch_size"] == shipped.batch_size
    assert cfg["unlabelled_batch"] == shipped.unlabelled_batch
    assert cfg["eval_every"] == shipped.eval_every
    assert cfg["unlabelled"] == study.UNLABELLED and cfg["threshold"] == study.THRESHOLD
    for labels in study.LABELS:
        i = cfg["labels_per_class"].index(labels)
        assert cfg["max_steps"][i] == shipped.steps[labels]


@pytest.fixture
def small(monkeypatch):
    """The study at a tiny size: 3 steps, 200 unlabelled and 50 test images."""
    tiny = study.Config(4, 8, {2: 3, 5: 3}, 1)
    monkeypatch.setattr(study, "CONFIGS", {"shipped": tiny, "longer": tiny})
    monkeypatch.setattr(study, "UNLABELLED", 200)
    monkeypatch.setattr(study, "TEST_SIZE", 50)
    study.task.cache_clear()
    yield
    study.task.cache_clear()


def test_one_run_of_each_arm_stores_its_columns(small, monkeypatch):
    from ftcourse import semi, train

    averaged = []

    def fit_steps(*args, **kwargs):  # the real loop, noting which runs average the weights
        averaged.append(kwargs.get("ema"))
        return train.fit_steps(*args, **kwargs)

    monkeypatch.setattr(semi, "fit_steps", fit_steps)
    spec = {"config": "shipped", "labels_per_class": 2, "lr": 1e-2}
    out = {arm: study.run_one({**spec, "arm": arm, "seed": 0}) for arm in study.ARMS}
    assert averaged == [None, study.EMA, None, study.EMA]
    columns = set(studies.RESULT_COLUMNS) | set(study.EXTRA_COLUMNS)
    for arm, row in out.items():
        assert columns <= set(row), arm
        assert len(studies.unpack(row["test_correct"])) == 50
        assert row["max_steps"] == 3 and 1 <= row["best_step"] <= 3
    assert out["supervised"]["mask_rate"] == 0.0  # no unlabelled loss
    assert 0.0 <= out["FixMatch"]["mask_rate"] <= 1.0
    # a seed changes the labels drawn and the head; the same seed gives the same run
    other = study.run_one({**spec, "arm": "supervised", "seed": 1})
    assert other["test_correct"] != out["supervised"]["test_correct"]
    again = study.run_one({**spec, "arm": "supervised", "seed": 0})
    assert again["test_correct"] == out["supervised"]["test_correct"]


def test_the_study_figure_has_a_panel_per_configuration_and_readable_text():
    import matplotlib

    matplotlib.use("Agg")
    from ftcourse import plots

    stored = studies.load(study.STUDY)
    fig = study.study_figure(stored, study.REQUIRED_REGIMES[0])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{c} configuration" for c in study.CONFIGS]
    assert all(len(ax.lines) or len(ax.collections) for ax in panels)
    assert plots.smallest_font_px(fig) >= 11
