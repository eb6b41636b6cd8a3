import json
import math

import pytest

from ftcourse import report


def test_record_writes_the_contract_format(report_dir):
    report.start("99_example", "cpu")
    assert report.record("acc", 0.75) is None  # a cell ending in record() prints nothing
    report.record("accs", [0.5, 1.0])
    report.check("acc is above a half", True, "0.75")
    payload = report.read(report_dir / "99_example.json")
    assert payload["notebook"] == "99_example"
    assert payload["profile"] == "cpu"
    assert payload["seconds"] >= 0
    assert payload["metrics"] == {"acc": 0.75, "accs": [0.5, 1.0]}
    assert payload["claims"] == [
        {"claim": "acc is above a half", "measured": "0.75", "holds": True, "kind": "invariant"}
    ]


def test_tensors_and_arrays_become_plain_json(report_dir):
    import numpy as np
    import torch

    report.start("99_example", "smoke")
    report.record("t", torch.tensor([1.5, 2.5]))
    report.record("n", np.float64(0.25))
    report.record("d", {"count": np.float64(0.5), "first": [1, 2]})
    data = json.loads((report_dir / "99_example.json").read_text())
    assert data["metrics"] == {"t": [1.5, 2.5], "n": 0.25, "d": {"count": 0.5, "first": [1, 2]}}


def test_bad_values_and_names_are_refused(report_dir):
    with pytest.raises(ValueError, match="file stem"):
        report.start("notebooks/00_quickstart.ipynb", "cpu")
    report.start("99_example", "cpu")
    with pytest.raises(ValueError, match="not finite"):
        report.record("x", math.nan)
    with pytest.raises(TypeError, match="cannot record"):
        report.record("x", object())
    with pytest.raises(TypeError, match="string keys"):
        report.record("x", {1: 0.5})


def test_failed_claim_raises_except_in_smoke(report_dir, capsys):
    report.start("99_example", "smoke")
    assert report.check("never true", False, "0 vs 1") is None  # no echo after a cell
    assert "✗ never true" in capsys.readouterr().out
    report.start("99_example", "cpu")
    with pytest.raises(report.ClaimFailed, match="never true"):
        report.check("never true", False)
    assert report.read(report_dir / "99_example.json")["claims"][0]["holds"] is False


def test_a_finding_never_raises_and_says_what_this_run_shows(report_dir, capsys):
    report.start("99_example", "cpu")
    assert report.finding("A beats B", False, "-0.010 (-0.05 to +0.03)") is None
    out = capsys.readouterr().out
    assert out.startswith("○ this run does not support: A beats B  [-0.010 (-0.05 to +0.03)]")
    report.finding("A beats B", True)
    assert capsys.readouterr().out.startswith("● this run supports: A beats B")
    claims = report.read(report_dir / "99_example.json")["claims"]
    assert [(c["holds"], c["kind"]) for c in claims] == [(False, "finding"), (True, "finding")]


def test_without_report_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("FTCOURSE_REPORT_DIR", raising=False)
    report.start("99_example", "cpu")
    report.record("a", 1)
    assert report.report_path() is None
    assert report.metrics() == {"a": 1}


def test_read_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"metrics": {}}')
    with pytest.raises(ValueError, match="missing"):
        report.read(path)


def _planted_notebook(tmp_path, statement: str):
    """A two-cell notebook that states one false claim, as a chapter's closing cell would."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell('import os\nPROFILE = os.environ.get("FTCOURSE_PROFILE")')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from ftcourse import report\n"
            "report.start('99_planted', PROFILE)\n"
            f"report.{statement}('a planted claim that does not hold', False, '0 vs 1')\n"
            "report.record('reached_the_end', 1)"
        ),
    ]
    path = tmp_path / "99_planted.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.notebook
def test_a_planted_broken_invariant_fails_the_run_and_no_finding_can(tmp_path):
    """What the book build does with each kind: an executed notebook whose invariant breaks
    fails (papermill raises, so `jupyter-book build` fails too); one whose finding does not
    hold runs to its end."""
    import papermill

    from ftcourse.cli import run_notebook

    with pytest.raises(papermill.PapermillExecutionError, match="ClaimFailed"):
        run_notebook(_planted_notebook(tmp_path, "check"), "cpu", tmp_path, tmp_path / "out")
    run_notebook(_planted_notebook(tmp_path, "finding"), "cpu", tmp_path, tmp_path / "out")
    payload = report.read(tmp_path / "99_planted.json")
    assert payload["metrics"] == {"reached_the_end": 1}
    assert payload["claims"][0]["kind"] == "finding" and not payload["claims"][0]["holds"]
