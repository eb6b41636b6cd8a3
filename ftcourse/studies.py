"""Reference studies: the stored evidence that settles a chapter's claims.

A notebook's live run is a glimpse: a few seeds in four minutes on the reader's CPU, whose
verdicts can flip with the way that CPU rounds. A **reference study** runs the same task and
arms (imported from the chapter's module in :mod:`ftcourse.chapters`) long enough to be right:
more seeds, a larger test set, budgets the arms do not exhaust, learning rates chosen on
validation over several seeds, and in two numeric regimes (the CPU's native precision and
fp32). Its rows live in ``benchmarks/results/studies/<chapter>/<regime>.csv`` with a
provenance record beside them, and the page shows them next to the live run.

This module is the chapter-independent part:

* :func:`run` executes a study, **resumably**: every finished run is appended to the CSV at
  once, and a rerun skips what is stored (a study can span sessions and machines);
* :func:`load` reads it back as a :class:`Study`; :func:`interval` gives the 95 % interval of
  a difference between two arms by a bootstrap over seeds *and* test items;
* :class:`Difference` states a comparison in a generated sentence (a null result as a bound,
  never as "no effect"), and :func:`agreement` says whether a live run agrees with the study;
* :class:`Claim` is a sentence the text teaches with the test on the stored study that
  supports it (``tests/test_studies.py`` checks every claim in every stored regime).

Run a study with ``ftcourse study 00 --regime native`` (and ``--regime fp32``) or
``make studies``. Introduced in chapter 0 (the quickstart's reference study).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STUDIES_DIR = Path(
    os.environ.get("FTCOURSE_STUDIES_DIR", ROOT / "benchmarks" / "results" / "studies")
)

# A numeric regime is a set of environment variables fixed before torch is imported.
REGIMES: dict[str, dict[str, str]] = {
    "native": {"FTCOURSE_PRECISION": "auto"},
    "fp32": {"FTCOURSE_PRECISION": "fp32"},
    # An AVX2-only CPU imitated on a newer one (fp32 training, AVX2 kernels).
    "avx2": {
        "FTCOURSE_PRECISION": "auto",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}

# Columns every row has; a chapter adds its own keys (model, arm, seed, lr, ...).
RESULT_COLUMNS = (
    "val_acc",
    "best_step",
    "steps_run",
    "max_steps",
    "hit_budget",
    "train_seconds",
    "test_acc",
    "test_correct",
)


class ChapterStudy(Protocol):
    """What a chapter module offers :func:`run` (see :mod:`ftcourse.chapters.quickstart`)."""

    STUDY: str  # "00"
    KEYS: tuple[str, ...]  # the columns that identify one run
    # optional: EXTRA_COLUMNS, more measurements per run (e.g. source-task correctness)

    def plan(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The runs still needed, given the rows stored (stage by stage)."""
        ...

    def run_one(self, spec: Mapping[str, Any], device: Any) -> dict[str, Any]:
        """Train and test one run; returns the ``RESULT_COLUMNS``."""
        ...


# --------------------------------------------------------------------------- bit vectors


def pack(correct: Sequence[bool] | np.ndarray) -> str:
    """Per-item correctness as a compact hex string (the CSV keeps every test item)."""
    bits = np.asarray(correct, dtype=bool)
    return f"{len(bits)}:" + np.packbits(bits).tobytes().hex()


def unpack(text: str) -> np.ndarray:
    """The inverse of :func:`pack`."""
    n, hexbits = text.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[: int(n)].astype(
        bool
    )


# --------------------------------------------------------------------------- intervals


def interval(
    a: np.ndarray, b: np.ndarray, *, draws: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its bootstrap interval over seeds **and** test items.

    ``a`` and ``b`` are ``[seeds, items]`` arrays of per-item correctness (0/1), paired: row
    ``s`` of both comes from seed ``s`` (the same training images), column ``i`` from test
    item ``i``. Each bootstrap draw resamples seeds and items independently with replacement
    (a two-way bootstrap), so the interval includes the luck of the training draw *and* of the
    test sample; with one seed only items are resampled. Returns ``(mean, low, high)``.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have the same shape, not {a.shape} and {b.shape}")
    diff = a - b
    n, m = diff.shape
    rng = np.random.default_rng(seed)
    # seeds: how often each is drawn; items: which are drawn (a gather is cheaper than counts)
    seed_counts = rng.multinomial(n, np.full(n, 1 / n), size=draws)
    per_item = (seed_counts @ diff) / n  # [draws, items]: each draw's mean over its seeds
    items = rng.integers(0, m, size=(draws, m))
    means = np.take_along_axis(per_item, items, axis=1).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def gap_interval(
    ab: np.ndarray, cd: np.ndarray, *, draws: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``mean(ab) - mean(cd)`` and its bootstrap interval: a difference of two
    differences measured on *different* test sets (e.g. the gain from unfreezing on a near
    and on a far target). ``ab`` and ``cd`` are ``[seeds, items]`` per-item differences; each
    draw resamples the seeds (row ``s`` of both: seed ``s``) and each test set's items."""
    ab, cd = np.atleast_2d(np.asarray(ab, float)), np.atleast_2d(np.asarray(cd, float))
    if len(ab) != len(cd):
        raise ValueError(f"need the same seeds on both sides, not {len(ab)} and {len(cd)}")
    n = len(ab)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=draws)
    means = []
    for d in (ab, cd):
        per_item = (counts @ d) / n
        items = rng.integers(0, d.shape[1], size=(draws, d.shape[1]))
        means.append(np.take_along_axis(per_item, items, axis=1).mean(axis=1))
    gaps = means[0] - means[1]
    tail = (1 - level) / 2
    low, high = np.quantile(gaps, [tail, 1 - tail])
    return float(ab.mean() - cd.mean()), float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """Arm ``a`` minus arm ``b`` with its 95 % interval, and the sentence that states it."""

    a: str
    b: str
    mean: float
    low: float
    high: float
    seeds: int
    items: int
    margin: float = 0.02  # what the chapter calls a negligible difference
    ahead: str = "is ahead of"  # the verb for a positive difference ("needs more steps than")
    fmt: str = "+.3f"  # how its numbers are written ("+.0f" for steps)

    @classmethod
    def of(
        cls, a: str, b: str, correct_a: np.ndarray, correct_b: np.ndarray, margin: float = 0.02
    ) -> Difference:
        """Compare two arms from their ``[seeds, items]`` correctness (see :func:`interval`)."""
        mean, low, high = interval(correct_a, correct_b)
        seeds, items = np.atleast_2d(correct_a).shape
        return cls(a, b, mean, low, high, seeds, items, margin)

    @property
    def direction(self) -> str:
        """``"a"`` or ``"b"`` when the interval excludes zero (that arm is ahead), else
        ``"none"``."""
        return "a" if self.low > 0 else "b" if self.high < 0 else "none"

    @property
    def equivalent(self) -> bool:
        """The whole interval lies within ``± margin``: a negligible difference, shown."""
        return -self.margin <= self.low and self.high <= self.margin

    def span(self) -> str:
        """``"+0.031 (95 % interval +0.012 to +0.050)"``."""
        f = self.fmt
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.mean:{f}} (one seed: no interval)"
        return f"{self.mean:{f}} (95 % interval {self.low:{f}} to {self.high:{f}})"

    def sentence(self) -> str:
        """One generated sentence: who is ahead and by how much, or the bound a null result
        sets. Never "no effect": a difference that the interval cannot tell from zero is
        stated as the range it lies in."""
        size = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}" + (
            f" × {self.items} test items" if self.items else ""
        )
        if self.direction == "a":
            return f"{self.a} {self.ahead} {self.b} by {self.span()}, over {size}"
        if self.direction == "b":
            flipped = Difference(
                self.b,
                self.a,
                -self.mean,
                -self.high,
                -self.low,
                self.seeds,
                self.items,
                fmt=self.fmt,
            )
            return f"{self.b} {self.ahead} {self.a} by {flipped.span()}, over {size}"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.a} minus {self.b} is {self.span()}"
        bound = (
            f"so the two are equivalent within ±{self.margin:g}"
            if self.equivalent
            else "so this cannot tell them apart: the difference lies between "
            f"{self.low:{self.fmt}} and {self.high:{self.fmt}}"
        )
        return (
            f"{self.a} minus {self.b} is {self.span()} over {size}: the interval includes "
            f"zero, {bound}"
        )


def agreement(live: Difference, study: Difference) -> str:
    """A generated sentence: does this run's difference agree with the reference study's?"""
    if live.direction == study.direction and live.direction != "none":
        ahead = live.a if live.direction == "a" else live.b
        return f"This run agrees with the reference study: both put {ahead} ahead."
    if live.low <= study.mean <= live.high:
        return (
            f"This run is consistent with the reference study (its {study.mean:+.3f} lies "
            f"inside this run's interval {live.low:+.3f} to {live.high:+.3f}), but too small "
            "to settle the question on its own."
        )
    return (
        f"This run's {live.mean:+.3f} (interval {live.low:+.3f} to {live.high:+.3f}) does not "
        f"contain the reference study's {study.mean:+.3f}: a glimpse of a few seeds can land "
        "far from the mean; the study, with more seeds and test items, is the one to trust."
    )


_T975 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        raise ValueError("need at least two values for an interval")
    known = [k for k in _T975 if k <= df]
    return _T975[max(known)] if df <= 30 else 1.96


def seed_difference(
    a: str,
    b: str,
    va: Sequence[float],
    vb: Sequence[float],
    ahead: str = "is ahead of",
    fmt: str = "+.3f",
) -> Difference:
    """Arm ``a`` minus arm ``b`` for one number per seed (e.g. a train-validation gap), with
    the t interval of the paired differences (no test items to resample)."""
    diff = np.asarray(va, float) - np.asarray(vb, float)
    n = len(diff)
    half = t_quantile(n - 1) * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("inf")
    mean = float(diff.mean())
    return Difference(a, b, mean, mean - half, mean + half, n, 0, ahead=ahead, fmt=fmt)


# --------------------------------------------------------------------------- stored rows


def study_dir(study: str) -> Path:
    return STUDIES_DIR / study


def rows_path(study: str, regime: str) -> Path:
    return study_dir(study) / f"{regime}.csv"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The stored rows of one regime, numbers parsed (empty when nothing is stored)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def key_of(row: Mapping[str, Any], keys: Iterable[str]) -> tuple:
    """The identity of a run: its key columns, normalised so that 0.1 == "0.1"."""
    return tuple(str(_parse(str(row[k]))) for k in keys)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s folder while rows or provenance are written, so
    that two processes sharing a study (``--arms``) never interleave their writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _append(path: Path, row: Mapping[str, Any]) -> None:
    with _locked(path):
        _append_unlocked(path, row)


def _append_unlocked(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        else:
            with path.open(newline="") as r:
                header = next(csv.reader(r))
            if header != list(row):
                raise ValueError(f"{path} has columns {header}, this run {list(row)}")
        writer.writerow(row)


# --------------------------------------------------------------------------- provenance


def git_commit() -> str:
    """The commit of this checkout (short hash, "+local changes" when ftcourse/ differs)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "ftcourse"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """The CPU, its relevant flags, torch and the precision this process trains in."""
    import torch

    from . import precision

    cpu = precision.cpu_info()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return {
        "cpu": cpu.model,
        "cores": cpu.cores,
        "threads": cpu.threads,
        "cpu_flags": [f for f in wanted if f in flags],
        "torch_capability": cpu.capability,
        "native_bf16": cpu.native_bf16,
        "precision": precision.describe("cpu"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _save_provenance(study: str, entry: dict[str, Any]) -> None:
    path = study_dir(study) / "provenance.json"
    with _locked(path):
        _save_provenance_unlocked(path, entry)


def _save_provenance_unlocked(path: Path, entry: dict[str, Any]) -> None:
    records = json.loads(path.read_text()) if path.exists() else []
    records = [r for r in records if r.get("id") != entry["id"]] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")


def provenance(study: str) -> list[dict[str, Any]]:
    """Every session that added rows to ``study``: machine, regime, command, wall time."""
    path = study_dir(study) / "provenance.json"
    return json.loads(path.read_text()) if path.exists() else []


# --------------------------------------------------------------------------- running


def check_regime(regime: str) -> None:
    """Raise unless this process's environment is ``regime``'s (set before torch loads)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    wrong = {
        k: os.environ.get(k)
        for k, v in REGIMES[regime].items()
        if os.environ.get(k, "auto" if k == "FTCOURSE_PRECISION" else None) != v
    }
    if wrong:
        raise RuntimeError(
            f"regime {regime!r} needs {REGIMES[regime]} in the environment before torch is "
            f"imported; found {wrong}. Run it through `ftcourse study`."
        )


def run(
    module: ChapterStudy,
    regime: str,
    *,
    device: Any = "cpu",
    max_runs: int | None = None,
    progress: Callable[[str], None] = print,
    arms: Sequence[str] | None = None,
) -> int:
    """Run the study of ``module`` in ``regime`` until its plan is empty; returns runs done.

    Every finished run is appended to ``<regime>.csv`` at once and the provenance record is
    rewritten, so an interrupted study loses at most the run in progress and a rerun goes on
    where it stopped. ``max_runs`` stops early (for tests and for sharing a session);
    ``arms`` keeps only the runs of those arms, so that two processes can share a study
    (writes are locked).
    """
    check_regime(regime)
    here = machine()
    if regime == "native" and not here["native_bf16"]:
        raise ValueError(
            "this CPU has no native bf16, so its native regime is fp32: run --regime fp32 "
            "(and --regime avx2 for a second set of kernels) instead of storing fp32 as native"
        )
    columns = RESULT_COLUMNS + tuple(getattr(module, "EXTRA_COLUMNS", ()))
    path = rows_path(module.STUDY, regime)
    started = time.time()
    entry = {
        "id": f"{regime}-{uuid.uuid4().hex[:12]}",
        "regime": regime,
        **here,
        "commit": git_commit(),
        "command": " ".join(
            ["ftcourse study", module.STUDY, "--regime", regime]
            + (["--arms", ",".join(arms)] if arms else [])
        ),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": 0,
        "wall_seconds": 0.0,
    }
    done = 0
    while max_runs is None or done < max_runs:
        rows = read_rows(path)
        stored = {key_of(r, module.KEYS) for r in rows}
        todo = [
            s
            for s in module.plan(rows)
            if key_of(s, module.KEYS) not in stored and (arms is None or s.get("arm") in arms)
        ]
        if not todo:
            break
        spec = todo[0]
        start = time.perf_counter()
        result = module.run_one(spec, device)
        missing = set(columns) - set(result)
        if missing:
            raise ValueError(f"run_one returned no {sorted(missing)}")
        _append(path, {**{k: spec[k] for k in module.KEYS}, **{k: result[k] for k in columns}})
        done += 1
        entry.update(runs=done, wall_seconds=round(time.time() - started, 1))
        entry["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _save_provenance(module.STUDY, entry)
        progress(
            f"[{module.STUDY} {regime}] {done} runs, {len(todo) - 1} left in this stage: "
            + ", ".join(f"{k}={spec[k]}" for k in module.KEYS)
            + f" -> val {result['val_acc']:.3f} test {result['test_acc']:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return done


# --------------------------------------------------------------------------- choosing


def choose_lr(
    rows: Sequence[Mapping[str, Any]], tuning_seeds: Sequence[int], **where: Any
) -> tuple[float | None, dict[float, float]]:
    """The learning rate with the best mean validation accuracy over ``tuning_seeds``.

    Only rates run on every tuning seed compete (``None`` until one is). Returns the choice
    and the evidence ``{lr: mean validation accuracy}``; ties go to the smaller rate.
    """
    by_lr: dict[float, dict[int, float]] = {}
    for r in rows:
        if all(str(r[k]) == str(v) for k, v in where.items()):
            by_lr.setdefault(float(r["lr"]), {})[int(r["seed"])] = float(r["val_acc"])
    complete = {
        lr: float(np.mean([accs[s] for s in tuning_seeds]))
        for lr, accs in by_lr.items()
        if all(s in accs for s in tuning_seeds)
    }
    if not complete:
        return None, {}
    return max(sorted(complete), key=lambda lr: complete[lr]), dict(sorted(complete.items()))


@dataclass(frozen=True)
class Setting:
    """How a study trains one arm: its learning-rate grid (one rate: no tuning), step budget,
    validation interval, batch size, seeds, and an input resolution for models that take one
    (``None``: the model's own)."""

    lrs: tuple[float, ...]
    max_steps: int
    eval_every: int
    batch_size: int
    seeds: tuple[int, ...]
    resolution: int | None = None
    # another arm (same model and labels) whose chosen rate this one reuses, untuned: e.g.
    # the scratch arm again with a longer budget, to see whether its budget decided
    rate_of: str | None = None


MAX_GRID_EXTENSIONS = 3  # at most this many rates added beyond an edge choice


def next_rate(lr: float, up: bool) -> float:
    """The neighbour of ``lr`` on the 1-3-10 grid (3e-3 -> 1e-2 up, -> 1e-3 down)."""
    exponent = int(np.floor(np.log10(lr) + 1e-9))
    ladder = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 3)]
    i = min(range(len(ladder)), key=lambda j: abs(np.log(ladder[j] / lr)))
    return float(f"{ladder[i + (1 if up else -1)]:.0e}")


def matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether a stored row (or a planned run) has every value of ``where``."""
    return all(str(row[k]) == str(v) for k, v in where.items())


def grid_for(
    rows: Sequence[Mapping[str, Any]],
    where: Mapping[str, Any],
    setting: Setting,
    tuning_seeds: Sequence[int],
) -> list[float]:
    """The grid of the arm ``where``: its setting's rates and those already run, extended by
    one neighbour beyond an edge that the tuning seeds chose (at most
    ``MAX_GRID_EXTENSIONS`` rates), once every rate has run on every tuning seed."""
    base = set(setting.lrs)
    lrs = base | {float(r["lr"]) for r in rows if matches(r, where)}
    chosen, complete = choose_lr(rows, tuning_seeds, **where)
    if set(complete) == lrs and len(lrs - base) < MAX_GRID_EXTENSIONS:
        if chosen == max(lrs):
            lrs.add(next_rate(chosen, up=True))
        elif chosen == min(lrs):
            lrs.add(next_rate(chosen, up=False))
    return sorted(lrs)


def plan_tuned(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[tuple[Mapping[str, Any], Setting]],
    tuning_seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """The runs a study still needs, stage by stage, for each arm ``(where, setting)``:
    the grid on the tuning seeds (extended until the choice is interior), then every seed
    of the setting at the rate chosen by the mean validation accuracy over the tuning seeds.
    An arm with one rate runs every seed at it. Stored runs come back too: :func:`run`
    skips them."""
    out = []
    for where, s in groups:
        if s.rate_of is not None:
            followed = dict(where, arm=s.rate_of)
            f_setting = next((st for w, st in groups if w == followed), None)
            if f_setting is None:
                raise ValueError(f"{where}: no arm {followed} to take the rate of")
            grid = grid_for(rows, followed, f_setting, tuning_seeds)
            chosen, complete = choose_lr(rows, tuning_seeds, **followed)
            if set(complete) == set(grid):
                out += [{**where, "seed": seed, "lr": chosen} for seed in s.seeds]
            continue
        if len(s.lrs) == 1:
            out += [{**where, "seed": seed, "lr": s.lrs[0]} for seed in s.seeds]
            continue
        grid = grid_for(rows, where, s, tuning_seeds)
        out += [{**where, "seed": seed, "lr": lr} for seed in tuning_seeds for lr in grid]
        chosen, complete = choose_lr(rows, tuning_seeds, **where)
        settled = set(complete) == set(grid) and (
            grid[0] < chosen < grid[-1] or len(set(grid) - set(s.lrs)) >= MAX_GRID_EXTENSIONS
        )
        if settled:
            out += [{**where, "seed": seed, "lr": chosen} for seed in s.seeds]
    return out


@dataclass
class Arm:
    """One arm of a stored study at its chosen learning rate: a row per seed."""

    name: str
    lr: float
    grid: dict[float, float]  # lr -> mean validation accuracy over the tuning seeds
    rows: list[dict[str, Any]]

    @property
    def seeds(self) -> list[int]:
        return [int(r["seed"]) for r in self.rows]

    @property
    def correct(self) -> np.ndarray:
        """``[seeds, items]`` per-item test correctness."""
        return self.correct_of("test_correct")

    def correct_of(self, column: str) -> np.ndarray:
        """``[seeds, items]`` per-item correctness stored in ``column`` (packed)."""
        return np.stack([unpack(r[column]) for r in self.rows])

    def values(self, column: str) -> np.ndarray:
        """One number per seed from ``column`` (e.g. a train-validation gap)."""
        return np.array([float(r[column]) for r in self.rows])

    @property
    def test_acc(self) -> np.ndarray:
        return np.array([float(r["test_acc"]) for r in self.rows])

    @property
    def interior(self) -> bool:
        """The chosen rate is not at either end of the grid searched."""
        lrs = sorted(self.grid)
        return len(lrs) >= 3 and lrs[0] < self.lr < lrs[-1]

    @property
    def hit_budget_rate(self) -> float:
        """Share of seeds whose best checkpoint was the budget's last step."""
        return float(np.mean([bool(r["hit_budget"]) for r in self.rows]))

    @property
    def steps(self) -> np.ndarray:
        return np.array([int(r["best_step"]) for r in self.rows])


@dataclass
class Study:
    """The stored rows of one study in every regime, with what was chosen from them."""

    name: str
    regimes: dict[str, list[dict[str, Any]]]
    provenance: list[dict[str, Any]] = field(default_factory=list)

    def rows(self, regime: str) -> list[dict[str, Any]]:
        if regime not in self.regimes:
            raise KeyError(f"study {self.name} has no stored {regime!r} rows")
        return self.regimes[regime]

    def wall_seconds(self, regime: str) -> float:
        return float(sum(p["wall_seconds"] for p in self.provenance if p["regime"] == regime))

    def machines(self, regime: str) -> list[str]:
        """The CPUs that ran ``regime``: model, what it computes natively, and the precision
        (``Intel Xeon (AMX bf16; bf16 autocast)``)."""
        return sorted(
            {
                f"{p['cpu']} ({_isa(p.get('cpu_flags', []))}; {p['precision']}"
                + (", held to AVX2 kernels" if regime == "avx2" else "")
                + ")"
                for p in self.provenance
                if p["regime"] == regime
            }
        )

    def arm(self, regime: str, tuning_seeds: Sequence[int], **where: Any) -> Arm:
        """The rows of one arm (``model=..., arm=...``) at the learning rate chosen on
        validation over ``tuning_seeds``, one row per seed, sorted by seed."""
        rows = [r for r in self.rows(regime) if all(str(r[k]) == str(v) for k, v in where.items())]
        if not rows:
            raise KeyError(f"study {self.name} ({regime}) has no rows for {where}")
        lrs = {float(r["lr"]) for r in rows}
        if len(lrs) == 1:
            lr, grid = lrs.pop(), {}
        else:
            lr, grid = choose_lr(rows, tuning_seeds)
            if lr is None:
                raise KeyError(f"study {self.name} ({regime}): {where} has no complete grid yet")
        chosen = sorted((r for r in rows if float(r["lr"]) == lr), key=lambda r: int(r["seed"]))
        return Arm(", ".join(str(v) for v in where.values()), lr, grid, chosen)


def _isa(flags: Sequence[str]) -> str:
    """A CPU's relevant instruction sets in words."""
    if "amx_bf16" in flags:
        return "AMX bf16"
    if "avx512_bf16" in flags:
        return "AVX-512 with bf16"
    if "avx512f" in flags:
        return "AVX-512, no bf16"
    return "AVX2" if "avx2" in flags else "no AVX2"


def load(study: str) -> Study:
    """Read a stored study (every regime that has a CSV), with the rows it borrows.

    A chapter module may declare ``BORROWS = {"04": [{"arm": "full"}]}``: arms that are the
    very same runs in another study (same task, budget, grid and seeds), read from there
    instead of being trained twice. Borrowed rows carry ``borrowed_from``."""
    folder = study_dir(study)
    regimes = {p.stem: read_rows(p) for p in sorted(folder.glob("*.csv"))}
    for lender, wheres in _borrows(study).items():
        for regime, rows in load(lender).regimes.items():
            lent = [
                {**r, "borrowed_from": lender}
                for r in rows
                if any(all(str(r.get(k)) == str(v) for k, v in w.items()) for w in wheres)
            ]
            if lent:
                regimes[regime] = regimes.get(regime, []) + lent
    return Study(study, regimes, provenance(study))


def _borrows(study: str) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    from .chapters import STUDIES, module_for

    return getattr(module_for(study), "BORROWS", {}) if study in STUDIES else {}


@dataclass(frozen=True)
class Claim:
    """A sentence a chapter teaches, and the comparison in its reference study that backs it.

    ``a`` and ``b`` select two arms of the study (``{"model": ..., "arm": ...}``, or with an
    ``lr`` to pick one rate of a sweep); ``measure_a`` and ``measure_b`` name the stored
    column compared (per-item correctness, packed, by default the test set's; a column of one
    number per seed is compared with :func:`seed_difference`). With ``c`` and ``d`` the claim
    is about a difference of differences, ``(a - b) - (c - d)``, measured on two test sets
    (:func:`gap_interval`). ``expect`` is ``"a"`` (a is ahead: the interval excludes zero),
    ``"b"``, ``"equivalent"`` (the interval lies within ``± margin``), ``"at most"`` (a bound:
    the interval's upper end is at most ``margin``, e.g. "fine-tuning gains at most +0.02") or
    ``"none"`` (the interval includes zero). ``tests/test_studies.py`` checks every
    claim in every stored regime; the notebook shows the same table.
    """

    id: str
    text: str
    a: Mapping[str, Any]
    b: Mapping[str, Any]
    expect: str = "a"
    margin: float = 0.02
    measure_a: str = "test_correct"
    measure_b: str = "test_correct"
    c: Mapping[str, Any] | None = None
    d: Mapping[str, Any] | None = None
    ahead: str = "is ahead of"
    names: tuple[str, str] | None = None  # how the sentence names a and b (default: labels)

    def _pair(
        self, study: Study, regime: str, tuning_seeds: Sequence[int], a: Mapping, b: Mapping
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """The two arms' measurements on the seeds both have, and whether per item."""
        arm_a = study.arm(regime, tuning_seeds, **a)
        arm_b = study.arm(regime, tuning_seeds, **b)
        common = sorted(set(arm_a.seeds) & set(arm_b.seeds))
        ia = [arm_a.seeds.index(s) for s in common]
        ib = [arm_b.seeds.index(s) for s in common]
        per_item = ":" in str(arm_a.rows[0][self.measure_a])
        if per_item:
            va, vb = arm_a.correct_of(self.measure_a)[ia], arm_b.correct_of(self.measure_b)[ib]
            return va.astype(float), vb.astype(float), True
        return arm_a.values(self.measure_a)[ia], arm_b.values(self.measure_b)[ib], False

    def difference(self, study: Study, regime: str, tuning_seeds: Sequence[int]) -> Difference:
        """The claim's difference in one stored regime, with its 95 % interval."""
        va, vb, per_item = self._pair(study, regime, tuning_seeds, self.a, self.b)
        name_a, name_b = self.names or (self.label(self.a), self.label(self.b))
        if self.c is not None and self.d is not None:
            vc, vd, _ = self._pair(study, regime, tuning_seeds, self.c, self.d)
            n = min(len(va), len(vc))
            mean, low, high = gap_interval(va[:n] - vb[:n], vc[:n] - vd[:n])
            return Difference(
                f"{name_a} minus {name_b}",
                f"{self.label(self.c)} minus {self.label(self.d)}",
                mean, low, high, n, va.shape[1] + vc.shape[1], self.margin, self.ahead,
            )  # fmt: skip
        if not per_item:
            d = seed_difference(name_a, name_b, va, vb, ahead=self.ahead)
            return dataclasses.replace(d, margin=self.margin)
        d = Difference.of(name_a, name_b, va, vb, self.margin)
        return dataclasses.replace(d, ahead=self.ahead)

    @staticmethod
    def label(where: Mapping[str, Any]) -> str:
        """An arm's name for a sentence: its selection's values (``lr 0.01``, ``k=2``)."""
        named = {"lr": lambda v: f"lr {float(v):g}", "k": lambda v: f"k={v}"}
        return " ".join(named.get(k, str)(v) for k, v in where.items() if k != "labels_per_class")

    def holds(self, d: Difference) -> bool:
        """Whether the study's difference supports the claim."""
        if self.expect == "equivalent":
            return d.equivalent
        if self.expect == "at most":
            return d.high <= self.margin
        return d.direction == self.expect


def accuracy_interval(correct: np.ndarray) -> tuple[float, float, float]:
    """Mean test accuracy of an arm and its 95 % interval over seeds and test items."""
    return interval(correct, np.zeros_like(correct, dtype=float), draws=1000)


def measures_table(
    study: Study,
    regime: str,
    selections: Mapping[str, Mapping[str, Any]],
    tuning_seeds: Sequence[int],
    columns: Mapping[str, str],
) -> str:
    """Markdown: one row per arm, one column per stored per-item measurement
    (``{"source, statistics restored": "source_correct_bn"}``), each as its mean with the
    95 % interval over seeds and test items."""
    lines = [
        "| arm | learning rate | seeds | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for label, where in selections.items():
        arm = study.arm(regime, tuning_seeds, **where)
        cells = []
        for column in columns.values():
            mean, low, high = accuracy_interval(arm.correct_of(column))
            cells.append(f"{mean:.3f} ({low:.3f} to {high:.3f})")
        lr = f"{arm.lr:g}" + (" (chosen)" if arm.grid else "")
        lines.append(f"| {label} | {lr} | {len(arm.seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arms_table(
    study: Study,
    regime: str,
    selections: Mapping[str, Mapping[str, Any]],
    tuning_seeds: Sequence[int],
) -> str:
    """Markdown: one row per arm of a stored study, in one regime: the rate chosen (and
    whether it is inside its grid), test accuracy with its 95 % interval, seeds, the mean
    best step and the share of runs that ended at their last step (``hit_budget``)."""
    lines = [
        "| arm | learning rate (grid searched) | test accuracy (95 % interval) | seeds "
        "| best step (mean) | ended at the budget |",
        "|---|---|---|---|---|---|",
    ]
    for label, where in selections.items():
        arm = study.arm(regime, tuning_seeds, **where)
        mean, low, high = accuracy_interval(arm.correct)
        grid = (
            f"{arm.lr:g} ({', '.join(f'{lr:g}' for lr in arm.grid)}"
            + ("" if arm.interior else "; at the edge")
            + ")"
            if arm.grid
            else (f"{arm.lr:g} (fixed)" if arm.lr else "–")
        )
        budget = f"{arm.hit_budget_rate:.0%}" if int(arm.rows[0]["max_steps"]) else "–"
        steps = f"{arm.steps.mean():.0f}" if int(arm.rows[0]["max_steps"]) else "–"
        lines.append(
            f"| {label} | {grid} | {mean:.3f} ({low:.3f} to {high:.3f}) | {len(arm.seeds)} "
            f"| {steps} | {budget} |"
        )
    return "\n".join(lines)


def trial_result(trial: Any, max_steps: int) -> dict[str, Any]:
    """The stored columns of one run from an :class:`~ftcourse.experiments.Trial` (one seed,
    one rate, through :func:`~ftcourse.experiments.run_arm`, as in the live run)."""
    return {
        "val_acc": round(float(trial.val_acc), 4),
        "best_step": int(trial.steps),
        "steps_run": int(trial.steps_run),
        "max_steps": int(max_steps),
        "hit_budget": bool(max_steps and trial.hit_budget),
        "train_seconds": round(float(trial.seconds), 2),
        "test_acc": round(float(trial.test_acc), 4),
        "test_correct": pack(trial.correct),
    }


def complete_regimes(module: Any, study: Study) -> list[str]:
    """The stored regimes whose study has every run of ``module``'s plan (a study still
    running, or interrupted, is not shown)."""
    done = []
    for regime in REGIMES:
        rows = study.regimes.get(regime, [])
        stored = {key_of(r, module.KEYS) for r in rows}
        if rows and all(key_of(s, module.KEYS) in stored for s in module.plan(rows)):
            done.append(regime)
    return done


def study_regime(module: Any, study: Study) -> str | None:
    """The complete stored regime closest to this process: its own, else fp32 for a regime
    without bf16, else native, else any (``None`` while no regime is complete)."""
    here, complete = current_regime(), complete_regimes(module, study)
    if here in complete:
        return here
    fallback = "native" if here == "native" else "fp32"
    return fallback if fallback in complete else (complete[0] if complete else None)


@dataclass(frozen=True)
class LrChoice:
    """The learning rates a live run tries for one arm, and where they come from."""

    lrs: list[float]
    source: str
    grid: dict[float, float]  # the study's evidence (mean validation accuracy per rate), or {}


def live_rates(module: Any, grid: Sequence[float], same_budget: bool, **where: Any) -> LrChoice:
    """The learning rates a live run tries for the arm ``where`` of ``module``'s study: the
    one the study chose on validation in the stored regime closest to this process (one
    source, no copy), else ``grid``, to be tuned in the run itself. ``same_budget`` says
    whether the live run trains with the study's steps and batch size: a rate is reused only
    then."""
    inline = LrChoice(list(grid), "tuned in this run over all its seeds", {})
    if not same_budget:
        return inline
    study = load(module.STUDY)
    regime = study_regime(module, study)
    if regime is None:
        return inline
    try:
        chosen = study.arm(regime, module.TUNING_SEEDS, **where)
    except KeyError:
        return inline
    source = f"chosen by the reference study ({regime}) over {len(module.TUNING_SEEDS)} seeds"
    return LrChoice([chosen.lr], source, chosen.grid)


def current_regime() -> str:
    """The regime this process computes in: ``"avx2"`` when torch is held to AVX2 kernels
    on a CPU that has more, ``"fp32"`` when training without bf16, else ``"native"``."""
    import torch

    from . import precision

    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        return "avx2"
    return "native" if precision.autocast_dtype(torch.device("cpu")) is not None else "fp32"


def claims_table(
    study: Study, claims: Sequence[Claim], tuning_seeds: Sequence[int], regimes: Sequence[str]
) -> str:
    """Markdown: each claim, the study's difference in every regime, and the verdict
    (supported, not supported, or *fragile* when the regimes disagree)."""
    head = "| claim | " + " | ".join(f"study, {r}" for r in regimes) + " | verdict |"
    lines = [head, "|---" * (len(regimes) + 2) + "|"]
    for c in claims:
        diffs = [c.difference(study, r, tuning_seeds) for r in regimes]
        held = [c.holds(d) for d in diffs]
        verdict = (
            "supported in every regime"
            if all(held)
            else "not supported"
            if not any(held)
            else "fragile: the regimes disagree"
        )
        cells = " | ".join(f"{d.span()}, {d.seeds} seeds" for d in diffs)
        lines.append(f"| {c.text} | {cells} | {verdict} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ftcourse.studies CHAPTER --regime R``: what ``ftcourse study`` runs, in a
    process whose environment already holds the regime."""
    import argparse

    from .chapters import module_for

    parser = argparse.ArgumentParser(prog="ftcourse study")
    parser.add_argument("chapter")
    parser.add_argument("--regime", default="native", choices=list(REGIMES))
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--arms", default=None, help="comma-separated arms (default: all)")
    args = parser.parse_args(argv)
    module = module_for(args.chapter)
    arms = args.arms.split(",") if args.arms else None
    done = run(module, args.regime, max_runs=args.max_runs, arms=arms)
    print(
        f"study {module.STUDY} ({args.regime}): {done} new runs; "
        f"rows in {rows_path(module.STUDY, args.regime)}"
    )
    return 0


def launch(
    chapter: str, regime: str, max_runs: int | None = None, arms: Sequence[str] | None = None
) -> int:
    """Run :func:`main` in a fresh Python whose environment holds ``regime`` (torch reads
    its kernel level when it is imported, so a regime cannot be switched inside one process)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    env = {**os.environ, **REGIMES[regime]}
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if key not in REGIMES[regime]:
            env.pop(key, None)
    cmd = [sys.executable, "-m", "ftcourse.studies", chapter, "--regime", regime]
    if max_runs is not None:
        cmd += ["--max-runs", str(max_runs)]
    if arms:
        cmd += ["--arms", ",".join(arms)]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
