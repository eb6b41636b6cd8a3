"""Measured runtimes are read back correctly, and stored choices match their evidence."""

import csv

import pytest

from ftcourse import bench, experiments
from ftcourse.profiles import PROFILES


def _write(folder, rows):
    with open(folder / bench.RUNTIMES_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, bench.RUNTIME_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _row(nb, profile, seconds, cpu="CPU X (2 cores)", gflops="100"):
    return {
        "notebook": nb,
        "profile": profile,
        "seconds": seconds,
        "cpu": cpu,
        "native_bf16": "False",
        "fp32_gflops": gflops,
        "date": "2026-11-27",
    }


def test_runtime_line_groups_runs_by_profile_and_cpu(tmp_path):
    assert "not measured yet" in bench.runtime_line("00_x", tmp_path)
    _write(
        tmp_path,
        [
            _row("00_x", "cpu", "100"),
            _row("00_x", "cpu", "120"),
            _row("00_x", "smoke", "8"),
            _row("01_y", "cpu", "50"),
        ],
    )
    line = bench.runtime_line("00_x", tmp_path)
    assert "`smoke` 8 s (1 run), `cpu` 100–120 s (2 runs) on CPU X (2 cores)" in line
    assert "no native bf16" in line and "make bench" in line


def test_expected_runtime_scales_with_the_speed_probe(tmp_path):
    assert "not measured" in bench.expected_runtimes(100, tmp_path)[0]
    _write(tmp_path, [_row("00_x", "cpu", "120"), _row("01_y", "cpu", "60")])
    lines = bench.expected_runtimes(50, tmp_path)  # a machine half as fast
    assert "3.0 min measured" in lines[0]
    assert "about 5–8 min" in lines[1]  # 6 min scaled, shown as 0.8x-1.3x


def test_the_stored_a1_learning_rates_are_what_the_evidence_chooses():
    """foundation.lr_selected must be the argmax of benchmarks/results/lr_selection_A1.csv."""
    cfg = PROFILES["cpu"].section("foundation")
    stored = cfg["lr_selected"]
    assert stored, "the cpu profile stores A1's choice (benchmarks/select_lr.py)"
    with open(bench.RESULTS_DIR / "lr_selection_A1.csv") as f:
        rows = list(csv.DictReader(f))
    gloss = [r for r in rows if r["task"] == "gloss" and r["model"] == cfg["model"]]
    unlock = [r for r in rows if r["task"] == "unlock" and r["model"] == cfg["model"]]
    assert {float(r["lr"]) for r in gloss} == set(cfg["lrs"])
    assert {float(r["lr"]) for r in unlock} == set(cfg["sft_lrs"])
    assert {int(r["seed"]) for r in rows} == set(cfg["seeds"])
    for arm, lrs in stored["gloss"].items():
        for labels, lr in zip(cfg["labels_per_class"], lrs, strict=True):
            assert experiments.chosen_lr(gloss, arm=arm, labels_per_class=labels) == lr
    for arm, lr in stored["unlock"].items():
        assert experiments.chosen_lr(unlock, arm=arm) == lr


@pytest.mark.parametrize("section", ["additive", "lora"])
def test_the_stored_peft_learning_rates_are_what_the_evidence_chooses(section):
    """additive.lr_selected (chapter 4) and lora.lr_selected (chapter 5) must be the argmax of
    benchmarks/results/lr_selection_04.csv / _05.csv, for every arm of the notebook, over the
    profile's grid and seeds."""
    from ftcourse import lm, models

    cfg = PROFILES["cpu"].section(section)
    stored = cfg["lr_selected"]
    assert stored, f"the cpu profile stores {section}.lr_selected (benchmarks/select_lr.py)"
    evidence = {"additive": "lr_selection_04.csv", "lora": "lr_selection_05.csv"}[section]
    with open(bench.RESULTS_DIR / evidence) as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == cfg["model"]]
    assert {int(r["seed"]) for r in rows} == set(cfg["seeds"])
    if section == "additive":
        arms, grid_of = lm.peft_arms(cfg), {"int8-adapter": "adapter"}
    else:
        arms = lm.lora_arms(cfg, models.load(cfg["model"]).model)
        grid_of = {"lora-all": "lora", "qlora": "lora"}
    assert set(stored) == {f"{task}/{arm}" for arm, task, _, _ in arms}
    for arm, task, method, _ in arms:
        mine = [r for r in rows if r["task"] == task and r["arm"] == arm]
        grid = cfg["lrs"][grid_of.get(method, method)]
        assert {float(r["lr"]) for r in mine} == set(grid), f"{task}/{arm}: the profile's grid"
        assert experiments.chosen_lr(mine, arm=arm) == stored[f"{task}/{arm}"]


def test_the_stored_instruct_learning_rates_are_what_the_evidence_chooses():
    """instruct.lr_selected (chapter 6) must be the argmax of lr_selection_06.csv for every
    tuned arm, over the profile's grid and seeds, and no choice may sit at a grid's edge."""
    from ftcourse import lm

    cfg = PROFILES["cpu"].section("instruct")
    stored = cfg["lr_selected"]
    assert stored, "the cpu profile stores instruct.lr_selected (benchmarks/select_lr.py)"
    with open(bench.RESULTS_DIR / "lr_selection_06.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == cfg["model"]]
    assert {int(r["seed"]) for r in rows} == set(cfg["seeds"])
    tuned = [arm for arm in lm.SFT_ARMS if arm != "no end token"]
    assert set(stored) == set(tuned)
    grids = {
        "SFT": "full",
        "loss on every token": "unmasked",
        "random init": "scratch",
        "LoRA": "lora",
    }
    for arm in tuned:
        mine = [r for r in rows if r["arm"] == arm]
        grid = cfg["lrs"][grids[arm]]
        assert {float(r["lr"]) for r in mine} == set(grid), f"{arm}: the profile's grid"
        assert experiments.chosen_lr(mine, arm=arm) == stored[arm]
        assert min(grid) < stored[arm] < max(grid), f"{arm}: the choice is at the grid's edge"


def test_the_stored_semi_learning_rates_are_what_the_evidence_chooses():
    """semi.lr_selected (chapter 8) must be the argmax of lr_selection_08.csv for every arm at
    every label budget, over the profile's grid and seeds."""
    cfg = PROFILES["cpu"].section("semi")
    stored = cfg["lr_selected"].get(cfg["model"])
    assert stored, "the cpu profile stores semi.lr_selected (benchmarks/select_lr.py)"
    with open(bench.RESULTS_DIR / "lr_selection_08.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == cfg["model"]]
    assert {int(r["seed"]) for r in rows} == set(cfg["seeds"])
    assert set(stored) == {"supervised", "pseudo-label", "FixMatch", "SimCLR + fine-tune"}
    for arm, lrs in stored.items():
        for labels, lr in zip(cfg["labels_per_class"], lrs, strict=True):
            mine = [r for r in rows if r["arm"] == arm and int(r["labels_per_class"]) == labels]
            assert {float(r["lr"]) for r in mine} == set(cfg["lrs"]), f"{arm}: the grid"
            assert experiments.chosen_lr(mine, arm=arm) == lr, (arm, labels)


def test_expected_runtime_prefers_a_cpu_like_this_one(tmp_path):
    fast = dict(_row("00_x", "cpu", "100", cpu="BF16 CPU"), native_bf16="True")
    slow = _row("00_x", "cpu", "200", cpu="AVX2 CPU")
    _write(tmp_path, [fast, slow, dict(fast, notebook="01_y")])
    assert "AVX2 CPU" in bench.expected_runtimes(100, tmp_path, native_bf16=False)[0]
    assert "BF16 CPU" in bench.expected_runtimes(100, tmp_path, native_bf16=True)[0]


def test_a_run_in_forced_fp32_is_its_own_group(tmp_path):
    """FTCOURSE_PRECISION=fp32 on a bf16 CPU is another regime: its runs are not pooled with
    the CPU's native runs, and the line says which precision ran."""
    native = dict(_row("00_x", "cpu", "100", cpu="BF16 CPU"), native_bf16="True")
    forced = dict(native, seconds="180", precision="fp32")
    old = dict(native, notebook="01_y")  # a row from before the column: the CPU's default
    _write(tmp_path, [native, forced, dict(forced, notebook="01_y"), old])
    groups = {(r.notebook, r.precision): r for r in bench.runtimes(tmp_path)}
    assert groups["00_x", "bf16 autocast"].seconds == (100.0,)
    assert groups["00_x", "fp32"].seconds == (180.0,)
    assert groups["01_y", "bf16 autocast"].numerics == "native bf16"
    line = bench.runtime_line("00_x", tmp_path)
    assert "`cpu` 100 s (1 run) on BF16 CPU (native bf16)" in line
    assert "`cpu` 180 s (1 run) on BF16 CPU (native bf16, run in fp32)" in line
    # the estimate sums one set of notebooks, in the CPU's default precision
    assert "2 notebooks in `cpu`: 3.3 min" in bench.expected_runtimes(100, tmp_path, True)[0]


def test_the_stored_distributed_measurements_say_what_appendix_b1_reads_in_them():
    """book/distributed.md reads four things in benchmarks/results/distributed.csv: DDP keeps
    a whole copy per process, FSDP2 halves each process's weights, gradients and Adam state
    and is the slowest engine here, and Accelerate's FSDP config runs as DDP on a CPU."""
    with open(bench.RESULTS_DIR / "distributed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = ("weights_per_process", "gradients_per_process", "optimizer_per_process")
    for job in ("sft", "lora"):
        mine = [r for r in rows if r["job"] == job]
        single = next(r for r in mine if r["engine"] == "single")
        ddp = next(r for r in mine if r["engine"] == "ddp")
        fsdp2 = next(r for r in mine if r["engine"] == "fsdp2")
        assert int(ddp["processes"]) == int(fsdp2["processes"]) == 2
        for kind in kinds:
            assert ddp[kind] == single[kind], (job, kind)
            assert int(fsdp2[kind]) == pytest.approx(int(single[kind]) / 2, rel=0.01), (job, kind)
        assert fsdp2["wrapped"].startswith("FSDP") and ddp["wrapped"] == "DistributedDataParallel"
        speed = {r["engine"]: float(r["units_per_second"]) for r in mine if r["engine"] != "single"}
        assert min(speed, key=speed.get) == "fsdp2", speed  # "sharding buys memory, not speed"
    accelerate = [r for r in rows if r["engine"] == "accelerate"]
    assert {r["config"] for r in accelerate} == {"accelerate_cpu.yaml", "accelerate_fsdp.yaml"}
    assert all(r["wrapped"] == "DistributedDataParallel" for r in accelerate)
