import json
import os
import subprocess
import sys

import nbformat
import pytest

from ftcourse import cli, data


def test_doctor_is_green_on_a_set_up_machine(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "all good" in out
    for name in list(data.REGISTRY) + ["tiny-cnn", "tiny-lm"]:
        assert f"ok       {name}" in out


def test_doctor_names_the_fix_for_a_missing_dataset(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path / "empty"))
    fake = data.DatasetInfo(
        "fake", "test", "CC0", 0.1, {"a": "0" * 64}, (data.InstalledDir(str(tmp_path / "nowhere")),)
    )
    for name in list(data.REGISTRY):  # the same dict in ftcourse.data and its registry module
        monkeypatch.delitem(data.REGISTRY, name)
    monkeypatch.setitem(data.REGISTRY, "fake", fake)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  fake" in out and "ftcourse data fetch fake" in out


@pytest.mark.parametrize(
    "var, value, problem",
    [
        ("FTCOURSE_PROFILE", "garbage", "FTCOURSE_PROFILE='garbage'; choose one of smoke"),
        ("FTCOURSE_PRECISION", "garbage", "FTCOURSE_PRECISION='garbage'; choose one of auto"),
        ("FTCOURSE_PROGRESS", "yes", "FTCOURSE_PROGRESS='yes'; use 0 or 1"),
        (
            "FTCOURSE_PROFLE",
            "cpu",
            "not a variable the course reads (did you mean FTCOURSE_PROFILE?)",
        ),
        ("FTCOURSE_DATA", "", "FTCOURSE_DATA is set but empty"),
        ("FTCOURSE_DATA", "relative/dir", "is relative: give an absolute folder"),
        ("FTCOURSE_DATA", "/etc/hostname", "is a file, not a folder"),
    ],
)
def test_doctor_names_every_bad_variable_and_finishes(monkeypatch, capsys, var, value, problem):
    monkeypatch.setenv(var, value)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert any(line.strip().startswith("PROBLEM") and problem in line for line in out.splitlines())
    assert out.rstrip().endswith("problem(s) found")


@pytest.mark.parametrize("value", ["", "relative/dir", "/etc/hostname"])
def test_a_bad_data_folder_is_one_line_before_any_write(value, tmp_path):
    code, _, err = _cli("data", "fetch", "wordnet", env={"FTCOURSE_DATA": value})
    assert code == 2 and err.startswith("ftcourse: error: FTCOURSE_DATA"), err
    assert len(err.strip().splitlines()) == 1


def test_doctor_checks_a_zoo_models_weights_not_only_its_card(monkeypatch, capsys):
    from ftcourse import models

    real = data.locate

    def locate(name):
        if name == "smollm2-135m":
            raise data.DataNotFoundError("dataset 'smollm2-135m' is not available")
        return real(name)

    monkeypatch.setattr(data, "locate", locate)
    assert models.weights_dataset(models.read_card(models.ZOO_DIR / "smollm2-135m")) == (
        "smollm2-135m"
    )
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  smollm2-135m" in out and "ftcourse data fetch smollm2-135m" in out
    assert "ok       efficientnet-lite0" in out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "ftcourse.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "doctor" in result.stdout and "run" in result.stdout


def test_run_executes_a_notebook_with_the_profile(tmp_path, capfd):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PROFILE = "cpu"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from ftcourse import report\n"
            "report.start('99_tiny', PROFILE)\n"
            "report.record('answer', 42)"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    out = cli.run_notebook(path, "smoke", report_dir=tmp_path / "r", output_dir=tmp_path / "x")
    assert out == tmp_path / "x" / "99_tiny.smoke.ipynb" and out.is_file()
    payload = json.loads((tmp_path / "r" / "99_tiny.json").read_text())
    assert payload["profile"] == "smoke" and payload["metrics"] == {"answer": 42}
    assert os.environ.get("FTCOURSE_REPORT_DIR") != str(tmp_path / "r")  # restored
    if os.name == "posix":  # the kernel is reached over IPC files, not TCP: no warning
        assert "without encryption" not in capfd.readouterr().err


def test_run_refuses_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        cli.run_notebook(tmp_path / "missing.ipynb", "cpu")
    (tmp_path / "a.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="unknown profile"):
        cli.run_notebook(tmp_path / "a.ipynb", "tpu")


def _cli(*args, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "ftcourse.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.ipynb"], "no notebook at missing.ipynb"),
        (["run", "04_addtive"], "no notebook at 04_addtive; did you mean 04_additive?"),
        (["run", "04_additive", "--profile", "warp"], "unknown profile 'warp'"),
        (["run", "notebooks/00_quickstart.ipynb", "--profile", "warp"], "unknown profile 'warp'"),
        (["run", "notebooks/00_quickstart.ipynb", "-p", "MODEL=nope"], ": unknown model 'nope'"),
        (["run", "notebooks/00_quickstart.ipynb", "-p", "MODEL"], "NAME=VALUE, not 'MODEL'"),
        (
            ["run", "notebooks/00_quickstart.ipynb", "-p", "MODLE=efficientnet-lite0"],
            "has no parameter 'MODLE': did you mean MODEL?",
        ),
        (
            ["run", "notebooks/00_quickstart.ipynb", "-p", "MODEL=tiny-lm"],
            "trains an image model, and MODEL='tiny-lm' is a language model",
        ),
        (
            ["run", "notebooks/04_additive.ipynb", "-p", "MODEL=efficientnet-lite0"],
            "trains a language model, and MODEL='efficientnet-lite0' is an image model",
        ),
        (
            ["run", "notebooks/00_quickstart.ipynb", "--report-dir", "/proc/no/such/dir"],
            "cannot write to /proc/no/such/dir",
        ),
        (["data", "fetch", "imagenet"], "unknown dataset 'imagenet'"),
    ],
)
def test_user_errors_are_one_line_without_a_traceback(args, message):
    code, out, err = _cli(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftcourse: error: "), err
    assert message in lines[0] and "Traceback" not in err


def test_version_and_a_typo_in_a_parameter_name(tmp_path):
    code, out, _ = _cli("--version")
    assert code == 0 and out.startswith("ftcourse ")
    assert cli.notebook_parameters("notebooks/05_lora.ipynb") == [
        "PROFILE",
        "SEED",
        "DEVICE",
        "MODEL",
    ]
    with pytest.raises(ValueError, match="did you mean SEED"):
        cli.run_notebook("notebooks/05_lora.ipynb", "smoke", parameters={"SEDE": 1})


def test_a_chapter_refuses_a_model_of_the_other_kind_before_any_work():
    from ftcourse import chapter, models

    assert [models.kind(n) for n in models.ZOO] == ["vision", "lm", "vision", "lm"]
    with pytest.raises(ValueError, match="trains a language model"):
        chapter.start("05_lora", "smoke", "cpu", section="lora", model="tiny-cnn")
    chapter.check_model_kind("05_lora", "smollm2-135m", "tiny-lm")  # same kind: fine


def test_doctor_reports_the_cpu_bf16_and_a_speed_probe(capsys):
    cli.main(["doctor"])
    out = capsys.readouterr().out
    assert "CPU " in out and "bf16 " in out and ("native" in out)
    assert "GFLOP/s" in out and "book runtime" in out


def test_pretrain_leaves_the_shipped_zoo_alone_unless_asked(monkeypatch, tmp_path):
    from ftcourse import models, pretrain

    seen = []
    monkeypatch.setattr(pretrain, "pretrain_cnn", lambda out, seed, **kw: seen.append(out) or {})
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path))
    assert pretrain.main(["cnn"]) == 0
    assert seen[-1] == tmp_path / "pretrained" / "tiny-cnn"
    assert pretrain.main(["cnn", "--replace-zoo"]) == 0
    assert seen[-1] == models.ZOO_DIR / "tiny-cnn"
    with pytest.raises(SystemExit):  # one or the other
        pretrain.main(["cnn", "--out", str(tmp_path / "x"), "--replace-zoo"])
