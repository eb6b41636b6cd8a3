"""Reference studies: the machinery (resumable runs, intervals, sentences) and the stored
evidence itself. Every claim a chapter teaches must be supported by its stored study in every
stored numeric regime; none of these tests depends on the machine that runs them."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest

from ftcourse import studies
from ftcourse.chapters import (
    additive,
    full,
    lora,
    module_for,
    partial,
    pretraining,
    quickstart,
    semi,
    smollm2,
    widths,
)

ROOT = Path(__file__).resolve().parent.parent
# Chapters whose claims are under the evidence rules (issue: chapters 0-3 first).
CHAPTERS = {
    "00": quickstart,
    "01": pretraining,
    "02": full,
    "03": partial,
    "04": additive,
    "05": lora,
    "08": semi,
    "smollm2": smollm2,
    "widths": widths,
}


# --------------------------------------------------------------------------- machinery


def test_pack_round_trips_any_length():
    for n in (1, 7, 8, 9, 2000):
        bits = np.random.default_rng(n).random(n) < 0.5
        assert (studies.unpack(studies.pack(bits)) == bits).all()


def test_interval_covers_the_truth_and_counts_test_items():
    rng = np.random.default_rng(0)
    # arm a is right on 85 % of items, b on 80 %: the true difference is +0.05
    a = rng.random((10, 2000)) < 0.85
    b = rng.random((10, 2000)) < 0.80
    mean, low, high = studies.interval(a, b)
    assert low < 0.05 < high and low > 0
    # with one seed, only items are resampled, and the interval is still finite
    mean1, low1, high1 = studies.interval(a[:1], b[:1])
    assert low1 < mean1 < high1
    # fewer test items give a wider interval
    _, low_s, high_s = studies.interval(a[:, :200], b[:, :200])
    assert high_s - low_s > high - low
    with pytest.raises(ValueError, match="same shape"):
        studies.interval(a, b[:5])


def test_difference_sentences_never_call_a_null_result_no_effect():
    ahead = studies.Difference("A", "B", 0.05, 0.03, 0.07, 10, 2000)
    behind = studies.Difference("A", "B", -0.05, -0.07, -0.03, 10, 2000)
    null = studies.Difference("A", "B", 0.01, -0.02, 0.04, 10, 2000)
    tiny = studies.Difference("A", "B", 0.001, -0.01, 0.012, 10, 2000)
    assert ahead.direction == "a" and ahead.sentence().startswith("A is ahead of B by +0.050")
    assert behind.direction == "b" and behind.sentence().startswith("B is ahead of A by +0.050")
    assert null.direction == "none" and "between -0.020 and +0.040" in null.sentence()
    assert tiny.equivalent and "equivalent within ±0.02" in tiny.sentence()
    for d in (ahead, behind, null, tiny):
        assert not re.search(r"no (benefit|effect|difference)", d.sentence())


def test_seed_difference_uses_the_t_quantile():
    d = studies.seed_difference("a", "b", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert d.mean == 2.0 and math.isclose(d.high - d.mean, half, rel_tol=1e-6)
    assert d.items == 0 and "3 seeds" in d.sentence()


def test_agreement_says_which_way():
    study = studies.Difference("A", "B", 0.05, 0.04, 0.06, 10, 2000)
    live_same = studies.Difference("A", "B", 0.06, 0.01, 0.11, 3, 500)
    live_wide = studies.Difference("A", "B", 0.02, -0.03, 0.07, 3, 500)
    live_far = studies.Difference("A", "B", -0.06, -0.09, -0.03, 3, 500)
    assert studies.agreement(live_same, study).startswith("This run agrees")
    assert "consistent" in studies.agreement(live_wide, study)
    assert "does not contain" in studies.agreement(live_far, study)


def _fake_run_one(spec, device="cpu"):
    """Deterministic fake results: validation peaks at an interior rate, the test
    correctness of an arm is drawn with a fixed accuracy."""
    rng = np.random.default_rng(abs(hash((spec["model"], spec["arm"], spec["seed"]))) % 2**32)
    lr = float(spec["lr"])
    peak = 1e-3 if spec["model"] == quickstart.EFFNET else 0.03
    val = 0.9 - 0.05 * abs(math.log10(lr / peak)) if lr else 0.8
    acc = {"fine-tune": 0.88, "untuned": 0.7, "probe": 0.85}.get(spec["arm"], 0.8)
    right = rng.random(200) < acc
    return {
        "val_acc": round(val, 4),
        "best_step": 100,
        "steps_run": 200,
        "max_steps": 200,
        "hit_budget": False,
        "train_seconds": 1.0,
        "test_acc": float(right.mean()),
        "test_correct": studies.pack(right),
    }


FAKE_MACHINE = {
    "cpu": "a test CPU",
    "cores": 2,
    "threads": 1,
    "cpu_flags": ["avx2", "avx512_bf16"],
    "torch_capability": "AVX512",
    "native_bf16": True,
    "precision": "bf16 autocast",
    "torch": "2.x",
    "python": "3.11",
}


@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "STUDIES_DIR", tmp_path)
    monkeypatch.setattr(studies, "machine", lambda: dict(FAKE_MACHINE))  # any CPU runs this
    module = SimpleNamespace(
        STUDY="00", KEYS=quickstart.KEYS, plan=quickstart.plan, run_one=_fake_run_one
    )
    return module, tmp_path


def test_a_study_resumes_where_it_stopped_and_records_provenance(fake_study):
    module, folder = fake_study
    assert studies.run(module, "native", max_runs=5, progress=lambda s: None) == 5
    rows = studies.read_rows(folder / "00" / "native.csv")
    assert len(rows) == 5
    calls = []
    module.run_one = lambda spec, device="cpu": calls.append(spec) or _fake_run_one(spec)
    done = studies.run(module, "native", progress=lambda s: None)
    stored = studies.read_rows(folder / "00" / "native.csv")
    assert len(stored) == 5 + done and len(calls) == done  # the first five were not rerun
    keys = [studies.key_of(r, quickstart.KEYS) for r in stored]
    assert len(set(keys)) == len(keys)
    prov = json.loads((folder / "00" / "provenance.json").read_text())
    assert [p["runs"] for p in prov] == [5, done]
    assert {"cpu", "cpu_flags", "precision", "torch", "commit", "command", "wall_seconds"} <= set(
        prov[0]
    )
    # every tuned arm: grid on the tuning seeds, then every seed at the chosen rate
    study = studies.load("00")
    arm = study.arm("native", quickstart.TUNING_SEEDS, model="tiny-cnn", arm="scratch")
    assert arm.lr == 0.03 and arm.interior
    assert arm.seeds == list(quickstart.SETTINGS[("tiny-cnn", "scratch")].seeds)


def test_two_processes_can_share_a_study_by_arms(fake_study):
    """``--arms`` splits one study between processes: each runs only its arms, both append
    to the same CSV (under a lock), and together they complete the plan."""
    module, folder = fake_study
    first = studies.run(module, "native", progress=lambda s: None, arms=["scratch"])
    rows = studies.read_rows(folder / "00" / "native.csv")
    assert first == len(rows) > 0 and {r["arm"] for r in rows} == {"scratch"}
    studies.run(module, "native", progress=lambda s: None)  # the rest
    rows = studies.read_rows(folder / "00" / "native.csv")
    assert not [s for s in quickstart.plan(rows) if studies.key_of(s, quickstart.KEYS)
                not in {studies.key_of(r, quickstart.KEYS) for r in rows}]  # fmt: skip
    prov = json.loads((folder / "00" / "provenance.json").read_text())
    assert prov[0]["command"].endswith("--arms scratch") and "--arms" not in prov[1]["command"]
    assert (folder / "00" / ".lock").exists()


def test_a_study_borrows_the_arms_that_are_the_same_runs_elsewhere(tmp_path, monkeypatch):
    """Chapter 5's full fine-tuning is chapter 4's arm (same task, budget, grid, seeds): study
    05 reads it from 04 instead of training it twice, and its plan never asks for it."""
    from ftcourse.chapters import lora

    monkeypatch.setattr(studies, "STUDIES_DIR", tmp_path)
    row = {"seed": 0, "lr": 0.003, "val_acc": 0.5, "test_acc": 0.5, "test_correct": "1:AA=="}
    studies._append(studies.rows_path("04", "fp32"), {"arm": "full", **row})
    studies._append(studies.rows_path("04", "fp32"), {"arm": "head", **row})
    studies._append(studies.rows_path("05", "fp32"), {"arm": "lora 4", **row})
    rows = studies.load("05").rows("fp32")
    assert sorted(r["arm"] for r in rows) == ["full", "lora 4"]
    assert [r.get("borrowed_from") for r in rows if r["arm"] == "full"] == ["04"]
    assert "full" not in {spec["arm"] for spec in lora.plan(rows)}
    assert "borrowed_from" not in studies.load("04").rows("fp32")[0]


def test_the_plan_extends_a_grid_until_its_choice_is_interior(fake_study):
    module, folder = fake_study
    # validation keeps rising with the rate: the plan must add rates above the grid
    module.run_one = lambda spec, device="cpu": {
        **_fake_run_one(spec),
        "val_acc": 0.5 + float(spec["lr"]) / 100,
    }
    studies.run(module, "native", progress=lambda s: None)
    study = studies.load("00")
    arm = study.arm("native", quickstart.TUNING_SEEDS, model="tiny-cnn", arm="fine-tune")
    base = quickstart.SETTINGS[("tiny-cnn", "fine-tune")].lrs
    assert len(arm.grid) == len(base) + studies.MAX_GRID_EXTENSIONS
    assert max(arm.grid) > max(base)


def test_native_is_refused_where_it_would_be_fp32(fake_study, monkeypatch):
    """On a CPU without bf16 the native regime computes in fp32: storing it as "native"
    would mislabel the evidence."""
    module, _ = fake_study
    monkeypatch.setattr(studies, "machine", lambda: {**FAKE_MACHINE, "native_bf16": False})
    with pytest.raises(ValueError, match="no native bf16"):
        studies.run(module, "native", progress=lambda s: None)


def test_gap_interval_covers_a_difference_of_differences():
    rng = np.random.default_rng(1)
    # gain on the near test set: 0.90 - 0.85 = +0.05; on the far one 0.95 - 0.80 = +0.15
    near = (rng.random((10, 500)) < 0.90).astype(float) - (rng.random((10, 500)) < 0.85)
    far = (rng.random((10, 400)) < 0.95).astype(float) - (rng.random((10, 400)) < 0.80)
    mean, low, high = studies.gap_interval(far, near)
    assert low < 0.10 < high and low > 0 and math.isclose(mean, far.mean() - near.mean())
    with pytest.raises(ValueError, match="same seeds"):
        studies.gap_interval(far[:5], near)


def _rows(arm, lr, seeds, acc, extra=None, target="near"):
    """Stored rows of a made-up study: per-item correctness drawn at ``acc``."""
    out = []
    for s in seeds:
        right = np.random.default_rng(hash((arm, target, s)) % 2**32).random(300) < acc
        out.append(
            {"target": target, "arm": arm, "seed": s, "lr": lr, "val_acc": acc,
             "best_step": 10, "hit_budget": False, "max_steps": 20,
             "test_correct": studies.pack(right), "gap": acc / 10, **(extra or {})}
        )  # fmt: skip
    return out


def test_claims_compare_any_stored_column_and_differences_of_differences():
    seeds = range(8)
    high, low = studies.pack(np.ones(300, bool)), studies.pack(np.zeros(300, bool))
    rows = (
        _rows("before", 0.0, seeds, 0.9, {"source": high})
        + _rows("lr0", 0.0, seeds, 0.9, {"source": low})
        + _rows("k=0", 0.01, seeds, 0.70)
        + _rows("k=5", 0.01, seeds, 0.80)
        + _rows("k=0", 0.01, seeds, 0.60, target="far")
        + _rows("k=5", 0.01, seeds, 0.90, target="far")
    )
    study = studies.Study("xx", {"fp32": rows})
    drift = studies.Claim("d", "", {"arm": "before"}, {"arm": "lr0"}, measure_a="source",
                          measure_b="source")  # fmt: skip
    d = drift.difference(study, "fp32", (0, 1, 2))
    assert d.mean == 1.0 and drift.holds(d)
    gap = studies.Claim(
        "g", "", {"target": "far", "arm": "k=5"}, {"target": "far", "arm": "k=0"},
        c={"target": "near", "arm": "k=5"}, d={"target": "near", "arm": "k=0"},
    )  # fmt: skip
    g = gap.difference(study, "fp32", (0, 1, 2))
    assert 0.1 < g.mean < 0.3 and g.direction == "a" and "far k=5 minus far k=0" in g.sentence()
    per_seed = studies.Claim("s", "", {"target": "far", "arm": "k=5"},
                             {"target": "near", "arm": "k=5"}, measure_a="gap", measure_b="gap",
                             expect="a")  # fmt: skip
    s = per_seed.difference(study, "fp32", (0, 1, 2))
    assert s.items == 0 and math.isclose(s.mean, 0.01) and per_seed.holds(s) == bool(s.low > 0)
    bound = studies.Claim("b", "", {"target": "near", "arm": "k=0"},
                          {"target": "near", "arm": "k=5"}, expect="at most")  # fmt: skip
    b = bound.difference(study, "fp32", (0, 1, 2))
    assert b.high < 0 and bound.holds(b)  # k=0 gains at most +0.02 over k=5: it loses
    assert not dataclasses.replace(bound, a=bound.b, b=bound.a).holds(
        dataclasses.replace(bound, a=bound.b, b=bound.a).difference(study, "fp32", (0, 1, 2))
    )
    none = studies.Claim("n", "", {"target": "near", "arm": "k=5"},
                         {"target": "near", "arm": "k=5"}, expect="none")  # fmt: skip
    assert none.holds(none.difference(study, "fp32", (0, 1, 2)))
    table = studies.measures_table(
        study, "fp32", {"before": {"arm": "before"}}, (0, 1, 2), {"source": "source"}
    )
    assert "| before | 0 | 8 | 1.000 (1.000 to 1.000) |" in table


def test_a_live_run_takes_the_studys_rate_only_for_the_same_budget(fake_study):
    module, folder = fake_study
    studies.run(module, "native", progress=lambda s: None)
    chapter = SimpleNamespace(
        STUDY="00",
        KEYS=quickstart.KEYS,
        plan=quickstart.plan,
        TUNING_SEEDS=quickstart.TUNING_SEEDS,
    )
    where = {"model": "tiny-cnn", "arm": "scratch"}
    other = studies.live_rates(chapter, [1e-3, 1e-2], False, **where)
    assert other.lrs == [1e-3, 1e-2] and not other.grid
    same = studies.live_rates(chapter, [1e-3, 1e-2], True, **where)
    assert same.lrs == [0.03] and same.grid and "reference study" in same.source


def test_a_study_refuses_a_process_in_the_wrong_regime(monkeypatch):
    monkeypatch.setenv("FTCOURSE_PRECISION", "auto")
    with pytest.raises(RuntimeError, match="fp32"):
        studies.check_regime("fp32")
    with pytest.raises(ValueError, match="unknown regime"):
        studies.check_regime("fp16")


def test_unknown_chapter_is_one_clear_error():
    with pytest.raises(KeyError, match="known: 00"):
        module_for("42")
    assert module_for("0") is quickstart and module_for("quickstart") is quickstart


# --------------------------------------------------------------------------- stored evidence


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_stored_study_is_complete_and_has_provenance(chapter):
    module = CHAPTERS[chapter]
    study = studies.load(chapter)
    for regime in module.REQUIRED_REGIMES:
        rows = study.rows(regime)
        stored = {studies.key_of(r, module.KEYS) for r in rows}
        missing = [s for s in module.plan(rows) if studies.key_of(s, module.KEYS) not in stored]
        assert not missing, f"{regime}: {len(missing)} runs missing, e.g. {missing[0]}"
        machines = [p for p in study.provenance if p["regime"] == regime]
        assert machines and all(p["cpu"] and p["torch"] and p["commit"] for p in machines)


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_every_tuned_arm_chose_inside_its_grid_and_rarely_hit_its_budget(chapter):
    module = CHAPTERS[chapter]
    study = studies.load(chapter)
    for regime in module.REQUIRED_REGIMES:
        for where, setting in module.GROUPS:
            chosen = study.arm(regime, module.TUNING_SEEDS, **where)
            if len(setting.lrs) > 1:
                assert chosen.interior, f"{regime} {where}: {chosen.lr} at the edge"
            if setting.max_steps and (len(setting.lrs) > 1 or setting.rate_of):
                # an arm the module declares budget-bound must be (the text says so), and
                # every other arm must not be
                bounds = getattr(module, "BUDGET_BOUND", {}).get(regime, ())
                bound = where.get("arm") in bounds
                assert (chosen.hit_budget_rate > 0.5) == bound, (regime, where)
        for where in getattr(module, "SWEEPS", []):  # a sweep of fixed rates: its choice
            chosen = study.arm(regime, module.TUNING_SEEDS, **where)
            assert chosen.interior, f"{regime} {where}: {chosen.lr} at the edge of the sweep"
            assert chosen.hit_budget_rate <= 0.5, (regime, where)


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_every_claim_is_supported_by_the_stored_study_in_every_regime(chapter):
    module = CHAPTERS[chapter]
    study = studies.load(chapter)
    for claim in module.CLAIMS:
        for regime in module.REQUIRED_REGIMES:
            d = claim.difference(study, regime, module.TUNING_SEEDS)
            assert claim.holds(d), f"{claim.id} ({regime}): {d.sentence()}"


# --------------------------------------------------------------------------- the notebooks

NOTEBOOKS = {
    "00": ROOT / "notebooks" / "00_quickstart.ipynb",
    "01": ROOT / "notebooks" / "01_pretraining_vs_finetuning.ipynb",
    "02": ROOT / "notebooks" / "02_full_finetuning.ipynb",
    "03": ROOT / "notebooks" / "03_partial_finetuning.ipynb",
    "04": ROOT / "notebooks" / "04_additive.ipynb",
    "05": ROOT / "notebooks" / "05_lora.ipynb",
}
# Verdicts typed into a notebook instead of generated from its numbers.
TYPED_VERDICTS = re.compile(
    r"buys no|no benefit|no clear difference|within noise|no consistent|clearly (better|ahead)"
    r"|beats [^.]* clearly|not clearly",
    re.IGNORECASE,
)
STATISTICS = {"direction", "clear", "paired", "Difference", "seed_difference", "interval"}


def _parse(source: str) -> ast.Module:
    """A code cell as Python: IPython's ``%magic`` and ``!shell`` lines become ``pass``."""
    lines = [
        line[: len(line) - len(line.lstrip())] + "pass"
        if line.lstrip().startswith(("%", "!"))
        else line
        for line in source.splitlines()
    ]
    return ast.parse("\n".join(lines))


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_no_verdict_is_typed_into_a_notebook(chapter):
    """Markdown and string literals may not state a statistical verdict: verdicts come from
    ``studies.Difference.sentence`` (or the claims table), so they cannot disagree with the
    numbers."""
    nb = nbformat.read(NOTEBOOKS[chapter], as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            match = TYPED_VERDICTS.search(cell.source)
            assert not match, f"cell {i}: typed verdict {match.group(0)!r}"
            continue
        for node in ast.walk(_parse(cell.source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = TYPED_VERDICTS.search(node.value)
                assert not match, f"cell {i}: typed verdict {match.group(0)!r}"


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_invariants_do_not_test_statistics(chapter):
    """``report.check`` fails the build, so its condition may not be a statistical outcome
    (an interval's direction, a paired comparison); those are ``report.finding``."""
    nb = nbformat.read(NOTEBOOKS[chapter], as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for node in ast.walk(_parse(cell.source)):
            is_check = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "check"
            )
            if is_check and len(node.args) > 1:
                names = {
                    n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "")
                    for n in ast.walk(node.args[1])
                }
                assert not names & STATISTICS, f"cell {i}: check on {names & STATISTICS}"


def test_an_arm_can_reuse_another_arms_chosen_rate(fake_study):
    module, folder = fake_study
    studies.run(module, "native", progress=lambda s: None)
    study = studies.load("00")
    scratch = study.arm("native", quickstart.TUNING_SEEDS, model=quickstart.EFFNET, arm="scratch")
    longer = study.arm(
        "native", quickstart.TUNING_SEEDS, model=quickstart.EFFNET, arm="scratch-long"
    )
    assert longer.lr == scratch.lr and longer.grid == {}
    assert longer.seeds == list(quickstart.SETTINGS[(quickstart.EFFNET, "scratch-long")].seeds)
