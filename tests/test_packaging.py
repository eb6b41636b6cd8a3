import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted
    specs = {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    makefile = (ROOT / "Makefile").read_text()
    tested = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", makefile.split("TORCH ?=")[1]))
    for r in project["dependencies"]:
        name = _name(r)
        if name in tested:  # conda pins the pair the Makefile installs (and CI tests)
            assert specs[name] == f"{name}=={tested[name]}", f"{name} is not pinned as in Makefile"
        else:
            assert specs[name] == r.replace(" ", ""), f"{r} differs in environment.yml"


def test_readme_front_door_orients_a_learner_first():
    readme = (ROOT / "README.md").read_text()
    first = readme[: readme.index("## Profiles")]
    assert "make book" in first and "make test" in first
    assert first.index("make lab") < first.index("make test")  # the learner's path first
    assert "**For whom.**" in first and "**Prerequisites.**" in first
    for nb in (ROOT / "notebooks").glob("*.ipynb"):  # the syllabus lists every chapter
        number = nb.stem.split("_")[0]
        label = str(int(number)) if number.isdigit() else number
        assert f"\n| {label} " in first, f"{nb.stem} is missing from the README's chapter table"


def test_every_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"notebooks/{nb.stem}" in toc, f"{nb.name} is missing from _toc.yml"


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_package_docstring_maps_every_module():
    import ftcourse

    doc = ftcourse.__doc__
    package = ROOT / "ftcourse"
    names = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    for name in sorted(names - {"zoo"}):
        assert f":mod:`ftcourse.{name}`" in doc, f"ftcourse/__init__.py does not map {name}"


def test_the_package_version_is_pyprojects():
    from ftcourse import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_binder_fetches_the_data_after_building_the_environment():
    """repo2docker reads environment.yml and postBuild from the root (no binder/ folder, which
    would hide them) and runs postBuild with the environment's ftcourse on PATH."""
    import os
    import subprocess
    import sys

    post = ROOT / "postBuild"
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()
    assert os.access(post, os.X_OK) and "-e ." in (ROOT / "environment.yml").read_text()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(post)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "data fetch: all" in result.stdout + result.stderr
