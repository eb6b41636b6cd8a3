"""Measured runtimes, read back: what ``make bench`` stored under ``benchmarks/results``.

``benchmarks/run.py`` times every notebook per profile and writes
``benchmarks/results/notebook_runtimes.csv`` with the CPU it ran on and that CPU's matmul
throughput. The notebooks' runtime lines, the introduction and ``ftcourse doctor`` read that
file instead of typing figures. Introduced in chapter 0 (the runtime line of every notebook).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RUNTIMES_CSV = "notebook_runtimes.csv"
RUNTIME_FIELDS = (
    "notebook",
    "profile",
    "seconds",
    "cpu",
    "native_bf16",
    "fp32_gflops",
    "date",
    "precision",
)
"""``native_bf16``: whether the CPU has it; ``precision``: what the run used
(:func:`ftcourse.precision.describe`: ``bf16 autocast`` or ``fp32``), which differs from the
CPU's default under ``FTCOURSE_PRECISION``. Rows from before the column read as the default."""


@dataclass(frozen=True)
class Runtime:
    """The runs of one notebook in one profile on one CPU in one precision."""

    notebook: str
    profile: str
    cpu: str
    native_bf16: bool
    fp32_gflops: float
    seconds: tuple[float, ...]
    precision: str = ""

    @property
    def numerics(self) -> str:
        """``native bf16``, ``no native bf16``, or either with the precision forced on it
        (``native bf16, run in fp32``)."""
        native = "native bf16" if self.native_bf16 else "no native bf16"
        default = "bf16 autocast" if self.native_bf16 else "fp32"
        return native if self.precision in ("", default) else f"{native}, run in {self.precision}"

    @property
    def text(self) -> str:
        low, high = min(self.seconds), max(self.seconds)
        span = f"{low:.0f} s" if round(low) == round(high) else f"{low:.0f}–{high:.0f} s"
        return f"{span} ({len(self.seconds)} run{'s' if len(self.seconds) > 1 else ''})"


def runtimes(folder: Path | None = None) -> list[Runtime]:
    """Every (notebook, profile, CPU) group of ``notebook_runtimes.csv``; empty if absent."""
    path = (folder or RESULTS_DIR) / RUNTIMES_CSV
    if not path.is_file():
        return []
    groups: dict[tuple, list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            native = row["native_bf16"] == "True"
            used = row.get("precision") or ("bf16 autocast" if native else "fp32")
            key = (row["notebook"], row["profile"], row["cpu"], native, used)
            groups.setdefault(key, []).append(row)
    out = []
    for (notebook, profile, cpu, native, used), rows in groups.items():
        out.append(
            Runtime(
                notebook=notebook,
                profile=profile,
                cpu=cpu,
                native_bf16=native,
                fp32_gflops=statistics.median(float(r["fp32_gflops"]) for r in rows),
                seconds=tuple(float(r["seconds"]) for r in rows),
                precision=used,
            )
        )
    return out


def runtime_line(notebook: str, folder: Path | None = None) -> str:
    """One Markdown sentence with the measured runtime of ``notebook`` per profile and CPU."""
    found = [r for r in runtimes(folder) if r.notebook == notebook]
    if not found:
        return "not measured yet on any machine (run `make bench`)."
    by_cpu: dict[tuple[str, str], list[Runtime]] = {}
    for r in found:
        by_cpu.setdefault((r.cpu, r.numerics), []).append(r)
    parts = []
    order = {"smoke": 0, "cpu": 1, "gpu": 2}
    for (cpu, numerics), rs in by_cpu.items():
        rs.sort(key=lambda r: order.get(r.profile, 9))
        each = ", ".join(f"`{r.profile}` {r.text}" for r in rs)
        parts.append(f"{each} on {cpu} ({numerics})")
    return "; ".join(parts) + ", measured by `make bench`."


def expected_runtimes(
    fp32_gflops: float, folder: Path | None = None, native_bf16: bool | None = None
) -> list[str]:
    """Lines for ``ftcourse doctor``: the book's measured `cpu` runtime, scaled to this machine.

    The reference is the measured CPU most like this one (native bf16 or not, when
    ``native_bf16`` is given), else the one with most runs. The estimate scales the median
    measured time by the ratio of matmul throughputs, which is crude (convolutions and Python
    overhead do not scale alike): read it as a range.
    """
    cpu_runs = [r for r in runtimes(folder) if r.profile == "cpu"]
    if not cpu_runs:
        return ["book runtime  not measured yet (make bench)"]
    by_cpu: dict[str, list[Runtime]] = {}  # one CPU in one precision: one set of notebooks
    for r in cpu_runs:
        by_cpu.setdefault(f"{r.cpu} ({r.numerics})", []).append(r)
    cpu, rs = max(
        by_cpu.items(),
        key=lambda item: (
            item[1][0].native_bf16 == native_bf16,
            item[1][0].numerics in ("native bf16", "no native bf16"),  # the CPU's default
            len(item[1]),
        ),
    )
    measured = sum(statistics.median(r.seconds) for r in rs)
    reference = statistics.median(r.fp32_gflops for r in rs)
    scaled = measured * reference / fp32_gflops
    return [
        f"book runtime  {len(rs)} notebooks in `cpu`: {measured / 60:.1f} min measured on {cpu} "
        f"({reference:.0f} GFLOP/s fp32)",
        f"              expected here: about {0.8 * scaled / 60:.0f}–{1.3 * scaled / 60:.0f} min "
        "(scaled by the speed probe)",
    ]
