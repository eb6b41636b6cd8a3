"""Every notebook in notebooks/: stored clean, follows the contract, runs in the smoke profile.

Notebooks are discovered, so a new chapter is covered without editing this file. EXPECTED lists
the metrics a chapter promises (its issue names them) and their valid ranges.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest

from ftcourse import report
from ftcourse.cli import run_notebook
from ftcourse.profiles import PROFILES

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
UNIT = (0.0, 1.0)
# Metric -> valid range (for a list: of every element), per notebook. Names are a contract.
EXPECTED: dict[str, dict[str, tuple[float, float]]] = {
    "00_quickstart": {"finetune_acc": UNIT, "scratch_acc": UNIT, "num_seeds": (1, 100)},
    "01_pretraining_vs_finetuning": {
        "selfpred_val_loss_start": (7.0, 9.0),  # about ln(4096) = 8.3 for a random model
        "selfpred_val_loss_end": (0.0, 9.0),
        "contrastive_probe_acc": UNIT,
        "random_probe_acc": UNIT,
        "labels_per_class": (1, 10_000),
        "finetune_acc": UNIT,
        "scratch_acc": UNIT,
        "finetune_std": UNIT,
        "scratch_std": UNIT,
        "num_seeds": (1, 100),
    },
    "02_full_finetuning": {
        "lrs": (0.0, 1.0),
        "target_acc": UNIT,
        "source_acc_after": UNIT,
        "source_acc_before": (0.88, 1.0),
        "scratch_gap": (-1.0, 1.0),
        "finetune_gap": (-1.0, 1.0),
    },
    "03_partial_finetuning": {
        "unfrozen_blocks": (0, 100),
        "near_acc": UNIT,
        "far_acc": UNIT,
        "trainable_params": (1, 1e9),
        "head_only_acc": UNIT,
        "full_acc": UNIT,
        "bitfit_acc": UNIT,
        "bitfit_trainable_fraction": (0.0, 0.01),
        "sparse_acc": UNIT,
        "sparse_trainable_fraction": (0.0, 0.05),
    },
}
# Lists that must be strictly ascending, and groups of lists that must have equal lengths.
ASCENDING = {"labels_per_class", "lrs", "unfrozen_blocks", "trainable_params"}
ALIGNED = {
    "01_pretraining_vs_finetuning": [
        "labels_per_class",
        "finetune_acc",
        "scratch_acc",
        "finetune_std",
        "scratch_std",
    ],
    "02_full_finetuning": ["lrs", "target_acc", "source_acc_after"],
    "03_partial_finetuning": ["unfrozen_blocks", "near_acc", "far_acc", "trainable_params"],
}


def _ids(paths):
    return [p.stem for p in paths]


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_follows_the_contract(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Runtime" in first.source and "learn" in first.source.lower()
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert 'os.environ.get("FTCOURSE_PROFILE", "cpu")' in params[0].source
    assert any(c.cell_type == "markdown" and "## What we measured" in c.source for c in nb.cells)
    assert f'report.start("{path.stem}"' in "".join(c.source for c in code)
    assert any(":::{solution}" in c.source for c in nb.cells), "exercises with solutions"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_smoke_profile(path, tmp_path):
    run_notebook(path, "smoke", report_dir=tmp_path, output_dir=tmp_path / "executed")
    payload = report.read(tmp_path / f"{path.stem}.json")
    assert payload["profile"] == "smoke" and payload["notebook"] == path.stem
    assert payload["metrics"], "the notebook recorded no metrics"
    assert payload["seconds"] <= PROFILES["smoke"].budget_seconds, payload["seconds"]
    for name, value in payload["metrics"].items():
        for v in value if isinstance(value, list) else [value]:
            assert not isinstance(v, float) or math.isfinite(v), name
    metrics = payload["metrics"]
    for name, (low, high) in EXPECTED.get(path.stem, {}).items():
        assert name in metrics, f"missing metric {name}"
        values = metrics[name] if isinstance(metrics[name], list) else [metrics[name]]
        assert values and all(low <= v <= high for v in values), (name, metrics[name])
        if name in ASCENDING:
            assert values == sorted(set(values)), f"{name} must be ascending: {values}"
    aligned = ALIGNED.get(path.stem, [])
    assert len({len(metrics[name]) for name in aligned}) <= 1, "lists are not aligned"
    if path.stem == "03_partial_finetuning":
        assert metrics["unfrozen_blocks"][0] == 0
    assert payload["claims"], "the 'What we measured' section checks no claim"
