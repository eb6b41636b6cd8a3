"""The ``ftcourse`` command: ``doctor``, ``run``, ``data fetch``, ``pretrain``.

* ``ftcourse doctor`` - versions, device, the CPU (and whether it has native bf16), a short
  speed probe with the expected book runtime on this machine, and whether every dataset and
  zoo model is there (with the fix for each missing one); exit status 1 when something is
  missing.
* ``ftcourse run NOTEBOOK --profile P [--report-dir D]`` - execute one notebook with papermill
  into ``_build/executed/``.
* ``ftcourse data fetch [NAME ...]`` - obtain datasets (what ``make setup`` runs).
* ``ftcourse pretrain {cnn,lm} [--out DIR | --replace-zoo] [--width W] [--keep]`` - rebuild a
  zoo model (into the data cache unless ``--replace-zoo``), or tiny-lm at another width.
* ``ftcourse study CHAPTER [--regime native|fp32|avx2]`` - run or resume a chapter's reference
  study (``benchmarks/results/studies/``).

Every error a user can cause (a missing notebook, an unknown profile, dataset or model, a
report folder that cannot be written) ends in one line on stderr and exit status 2, not a
traceback; ``FTCOURSE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "peft",
    "bitsandbytes",
    "trl",
    "tokenizers",
    "numpy",
    "matplotlib",
    "papermill",
    "jupyter-book",
    "nbval",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# The environment variables the course reads, and what each accepts (doctor checks them).
ENVIRONMENT = {
    "FTCOURSE_PROFILE": "smoke, cpu or gpu (the profile notebooks run in)",
    "FTCOURSE_PRECISION": "auto, fp32 or bf16",
    "FTCOURSE_DATA": "an absolute folder for the datasets",
    "FTCOURSE_REPORT_DIR": "a writable folder for the notebooks' reports",
    "FTCOURSE_PROGRESS": "0 hides progress bars, 1 shows them",
    "FTCOURSE_OFFLINE": "1 never tries the internet",
    "FTCOURSE_DEBUG": "1 shows tracebacks",
    "FTCOURSE_CHROMIUM": "the Chromium the browser tests use",
    "FTCOURSE_SITE": "the built site the browser tests read",
    "FTCOURSE_STUDIES_DIR": "where reference studies are stored",
}


def environment_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``FTCOURSE_*`` variable that is unknown or has a value the course would
    refuse (``ftcourse doctor`` prints them all, instead of stopping at the first)."""
    import difflib

    from . import data
    from .precision import CHOICES, PRECISION_ENV
    from .profiles import PROFILES

    env = os.environ if env is None else env
    out = []
    for var in sorted(v for v in env if v.startswith("FTCOURSE_")):
        if var not in ENVIRONMENT and var != "FTCOURSE_CI_VENV":
            close = difflib.get_close_matches(var, ENVIRONMENT, n=1)
            out.append(
                f"{var} is not a variable the course reads"
                + (f" (did you mean {close[0]}?)" if close else "")
            )
    value = env.get("FTCOURSE_PROFILE")
    if value is not None and value not in PROFILES:
        out.append(f"FTCOURSE_PROFILE={value!r}; choose one of {', '.join(PROFILES)}")
    value = env.get(PRECISION_ENV)
    if value is not None and (value.strip().lower() or "auto") not in CHOICES:
        out.append(f"{PRECISION_ENV}={value!r}; choose one of {', '.join(CHOICES)}")
    for var in ("FTCOURSE_PROGRESS", "FTCOURSE_OFFLINE", "FTCOURSE_DEBUG"):
        if env.get(var) not in (None, "0", "1"):
            out.append(f"{var}={env[var]!r}; use 0 or 1")
    if data.CACHE_ENV in env:
        try:
            data.cache_dir(env[data.CACHE_ENV])
        except ValueError as err:
            out.append(str(err))
    return out


def doctor(_: argparse.Namespace) -> int:
    """Versions, device, CPU, speed, environment, datasets and zoo models: every check runs,
    each problem is one line, and the exit status is 1 when there was one."""
    from . import bench, data, models, precision
    from .precision import resolve_device

    problems = 0
    print(f"ftcourse doctor - Python {platform.python_version()} on {platform.platform()}")
    for dist in PACKAGES:
        print(f"  {dist:<13} {_version(dist)}")
    device = resolve_device()
    cpu = precision.cpu_info()
    print(f"  device        {device}")
    print(f"  CPU           {cpu.model}, {cpu.cores} cores, torch uses {cpu.threads} threads")
    print(f"  bf16          {'native' if cpu.native_bf16 else 'NOT native'} ({cpu.bf16_reason})")
    try:
        print(
            f"  precision     training runs in {precision.describe(device)} on {device}"
            f" (override: {precision.PRECISION_ENV}=fp32|bf16)"
        )
    except ValueError:  # a bad FTCOURSE_PRECISION: one PROBLEM line below
        print(f"  precision     unknown until {precision.PRECISION_ENV} is fixed")
    probe = precision.speed_probe()
    speeds = ", ".join(f"{k.split('_')[0]} {v:.0f} GFLOP/s" for k, v in probe.items())
    print(f"  speed probe   512x512 matmul: {speeds}")
    for line in bench.expected_runtimes(probe["fp32_gflops"], native_bf16=cpu.native_bf16):
        print(f"  {line}")
    for var in ("HF_HUB_OFFLINE", *ENVIRONMENT):
        print(f"  {var + ':':<22} {os.environ.get(var, '(unset)')}")
    for message in environment_problems():
        problems += 1
        print(f"  PROBLEM  {message}")
    try:
        print(f"datasets (cache: {data.cache_dir()})")
    except ValueError as err:  # a bad FTCOURSE_DATA, said above: no dataset can be found
        print(f"datasets: not checked ({err})")
        print(f"{problems} problem(s) found")
        return 1
    for name, info in data.REGISTRY.items():
        try:
            folder = data.locate(name)
            print(f"  ok       {name:<18} {info.size_mb:5.1f} MB  {folder}")
        except data.DataNotFoundError:
            problems += 1
            print(f"  MISSING  {name:<18} fix: ftcourse data fetch {name}   (or: make setup)")
    print(f"zoo models ({models.ZOO_DIR})")
    for name in models.ZOO:
        try:
            card = models.read_card(models.ZOO_DIR / name)
            dataset = models.weights_dataset(card)
            if dataset is not None:  # the card ships; its weights are a dataset: look for real
                data.locate(dataset)
            metrics = ", ".join(
                f"{k}={v}"
                for k, v in card.get("metrics", {}).items()
                if isinstance(v, int | float | str)
            )
            about = metrics or card.get("weights", card.get("data", ""))[:80]
            params = f"{card['num_params']:,} params; " if "num_params" in card else ""
            print(f"  ok       {name:<18} {params}{about}")
        except (FileNotFoundError, models.ChecksumError, ValueError, KeyError) as err:
            problems += 1
            # the tiny models are built by a recipe; the others' weights are registry datasets
            fix = (
                f"ftcourse pretrain {name.removeprefix('tiny-')} --replace-zoo"
                if name.startswith("tiny-")
                else f"ftcourse data fetch {name}"
            )
            print(f"  MISSING  {name:<18} {err}\n           fix: {fix} (or reinstall ftcourse)")
    print("all good" if problems == 0 else f"{problems} problem(s) found")
    return 0 if problems == 0 else 1


def local_kernel(folder: str) -> dict[str, Any]:
    """Talk to the notebook's kernel over files in ``folder`` (IPC), not local TCP ports: no
    "Kernel is running over TCP without encryption" warning on every run, and no port that
    another user of the machine could connect to. Windows has no IPC transport: TCP there."""
    if os.name != "posix":
        return {}
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(folder, "kernel"))
            super().__init__(**kwargs)

    return {"kernel_manager_class": IPCKernelManager}


def run_notebook(
    notebook: str | Path,
    profile: str,
    report_dir: str | Path | None = None,
    output_dir: str | Path = "_build/executed",
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Execute ``notebook`` with papermill in ``profile``; return the executed copy's path.

    ``parameters`` override other names of the notebook's parameters cell (``MODEL``, ``SEED``).
    """
    import papermill

    from .profiles import PROFILES

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    check_parameters(notebook, parameters or {})
    out = Path(output_dir) / f"{notebook.stem}.{profile}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment; restore it afterwards.
    overrides = {"FTCOURSE_PROFILE": profile}
    if report_dir is not None:
        overrides["FTCOURSE_REPORT_DIR"] = str(Path(report_dir).resolve())
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        with tempfile.TemporaryDirectory(prefix="ftcourse-kernel-") as sockets:
            papermill.execute_notebook(
                str(notebook),
                str(out),
                parameters={**(parameters or {}), "PROFILE": profile},
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=sys.stderr.isatty(),
                **local_kernel(sockets),
            )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out


def notebook_parameters(notebook: str | Path) -> list[str]:
    """The names the notebook's ``parameters`` cell assigns (what ``-p`` may set)."""
    import ast
    import json

    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return [
                t.id
                for node in ast.walk(tree)
                if isinstance(node, ast.Assign | ast.AnnAssign)
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(t, ast.Name)
            ]
    return []


def check_parameters(notebook: str | Path, names: Iterable[str]) -> None:
    """``ValueError`` naming the closest parameter when ``names`` has one the notebook's
    parameters cell does not assign (a typo would otherwise run with the defaults)."""
    import difflib

    known = notebook_parameters(notebook)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"{Path(notebook).name} has no parameter {name!r}: {hint}its parameters are "
                f"{', '.join(known) or '(none)'}"
            )


def _check_model_kind(notebook: Path, model: str, profile: Any) -> None:
    """The chapter's default model (from the ``section=`` of its ``chapter.start`` call) and
    ``model`` must be of one kind (:func:`ftcourse.chapter.check_model_kind`)."""
    import re

    from .chapter import check_model_kind

    found = re.search(r'section=\\?"(\w+)\\?"', notebook.read_text(encoding="utf-8"))
    default = profile.section(found.group(1)).get("model") if found else None
    if default:
        check_model_kind(notebook.stem, model, default)


def _find_notebook(name: str) -> Path:
    """The notebook ``name`` names: a path, or a chapter's name (``04_additive``, with or
    without ``.ipynb``) in ``./notebooks``; a ``UsageError`` naming the closest otherwise."""
    import difflib

    path = Path(name)
    if path.is_file():
        return path
    folder = Path("notebooks")
    candidate = folder / (path.name if path.suffix == ".ipynb" else f"{path.name}.ipynb")
    if path.parent == Path(".") and candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.ipynb"))
    close = difflib.get_close_matches(path.stem, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    where = f" (chapters here: {', '.join(known)})" if known and not close else ""
    raise UsageError(f"no notebook at {name}{hint}{where}")


def run(args: argparse.Namespace) -> int:
    from .profiles import PROFILES

    args.notebook = str(_find_notebook(args.notebook))
    if args.profile not in PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    params = _parameters(args.param)
    check_parameters(args.notebook, params)
    if params.get("MODEL") is not None:
        from .models import source_kind

        source_kind(str(params["MODEL"]))  # an unknown model is one line, before any work
        _check_model_kind(Path(args.notebook), str(params["MODEL"]), PROFILES[args.profile])
    if args.report_dir is not None:
        _writable(args.report_dir)
    _writable(args.output_dir)
    start = time.perf_counter()
    try:
        out = run_notebook(args.notebook, args.profile, args.report_dir, args.output_dir, params)
    except Exception as err:
        if type(err).__name__ != "PapermillExecutionError":
            raise
        executed = Path(args.output_dir) / f"{Path(args.notebook).stem}.{args.profile}.ipynb"
        raise UsageError(
            f"{args.notebook} failed in cell {err.exec_count}: {err.ename}: "
            f"{str(err.evalue).splitlines()[0] if err.evalue else ''} "
            f"(the executed copy with the traceback: {executed})"
        ) from err
    print(
        f"executed {args.notebook} ({args.profile}) in {time.perf_counter() - start:.1f} s -> {out}"
    )
    return 0


def data_fetch(args: argparse.Namespace) -> int:
    from . import data

    names = args.names or list(data.REGISTRY)
    unknown = [n for n in names if n not in data.REGISTRY]
    if unknown:
        raise UsageError(
            f"unknown dataset {', '.join(map(repr, unknown))}; known: {', '.join(data.REGISTRY)}"
        )
    failed = []
    for name in names:
        try:
            print(f"{name}: {data.fetch(name)}")
        except (data.DataNotFoundError, KeyError) as err:
            failed.append((name, str(err)))
            print(f"{name}: FAILED\n{err}", file=sys.stderr)
    print(
        _fetch_summary(len(names), failed, data.cache_dir()),
        file=sys.stderr if failed else sys.stdout,
    )
    return 1 if failed else 0


OFFLINE_SIGNS = ("offline", "connection", "resolve", "unreachable", "timed out", "network")


def _fetch_summary(total: int, failed: list[tuple[str, str]], cache: Path) -> str:
    """The last line of ``data fetch``: how many are ready and, for the rest, the fix."""
    if not failed:
        return f"data fetch: all {total} dataset(s) ready in {cache}"
    names = ", ".join(n for n, _ in failed)
    head = f"data fetch: {total - len(failed)} of {total} ready; failed: {names}. Fix: "
    if all(any(s in err.lower() for s in OFFLINE_SIGNS) for _, err in failed):
        return head + (
            "no download source was reachable (offline?): run `ftcourse data fetch` on a "
            f"machine with internet and copy its data cache into {cache} (the book's Instructor "
            "guide, 'Preparing a classroom without internet')"
        )
    return head + "see each dataset's reasons above; `ftcourse doctor` lists what is missing"


def _parameters(pairs: list[str]) -> dict[str, Any]:
    """``["MODEL=efficientnet-lite0", "SEED=1"]`` -> values (numbers parsed, ``None`` kept)."""
    import ast

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param expects NAME=VALUE, not {pair!r}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


class UsageError(Exception):
    """An error the user can fix; printed as one line."""


def _writable(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ftcourse-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to {folder}: {err.strerror or err}") from err
    return folder


def study(args: argparse.Namespace) -> int:
    """``ftcourse study CHAPTER --regime R``: run or resume a reference study in a fresh
    process whose environment holds the regime (:func:`ftcourse.studies.launch`)."""
    from . import studies
    from .chapters import module_for
    from .precision import native_bf16

    module_for(args.chapter)  # an unknown chapter is one line, before any work
    bf16 = native_bf16("cpu")
    regime = args.regime or ("native" if bf16 else "fp32")
    if regime not in studies.REGIMES:
        raise UsageError(f"unknown regime {regime!r}; choose one of {', '.join(studies.REGIMES)}")
    if regime == "native" and not bf16:
        raise UsageError(
            "this CPU has no native bf16, so its native regime is fp32: use --regime fp32 "
            "(and --regime avx2 for a second set of kernels)"
        )
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    return studies.launch(args.chapter, regime, args.max_runs, arms)


def main(argv: list[str] | None = None) -> int:
    """Run the ``ftcourse`` command; user errors become one line on stderr and exit code 2."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("ftcourse: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the user, traceback on request
        if os.environ.get("FTCOURSE_DEBUG") == "1" or not _is_user_error(err):
            raise
        # str(KeyError("x")) is "'x'" with quotes: take the message itself
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        message = str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
        print(f"ftcourse: error: {message}", file=sys.stderr)
        return 2


def _is_user_error(err: Exception) -> bool:
    from . import data, models, report

    user = (UsageError, FileNotFoundError, KeyError, ValueError, PermissionError)
    return isinstance(
        err, user + (data.DataNotFoundError, models.ChecksumError, report.ClaimFailed)
    )


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ftcourse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ftcourse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check versions, device, datasets and zoo models")
    p = sub.add_parser("run", help="execute a notebook with papermill")
    p.add_argument(
        "notebook", help="a notebook's path, or a chapter's name in ./notebooks (04_additive)"
    )
    p.add_argument("--profile", default=os.environ.get("FTCOURSE_PROFILE", "cpu"))
    p.add_argument("--report-dir", default=None)
    p.add_argument("--output-dir", default="_build/executed")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter of the notebook, e.g. -p MODEL=efficientnet-lite0",
    )
    d = sub.add_parser("data", help="dataset commands")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="obtain datasets (all when none is named)")
    f.add_argument("names", nargs="*")
    sub.add_parser(
        "pretrain", help="rebuild a zoo model (see: ftcourse pretrain -h)", add_help=False
    )
    st = sub.add_parser(
        "study", help="run (or resume) a chapter's reference study, e.g. ftcourse study 00"
    )
    st.add_argument("chapter", help="the chapter's number, e.g. 00")
    st.add_argument(
        "--regime",
        default=None,
        help="native (bf16 where the CPU has it natively; the default there), fp32 (the "
        "default elsewhere) or avx2 (an AVX2-only CPU imitated)",
    )
    st.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    st.add_argument(
        "--arms",
        default=None,
        help="only these arms, comma-separated (two processes can share a study this way)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "pretrain":
        from .pretrain import main as pretrain_main

        return pretrain_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handlers = {"doctor": doctor, "run": run, "data": data_fetch, "study": study}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
