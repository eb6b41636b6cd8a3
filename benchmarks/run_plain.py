"""Run notebooks' code cells without Jupyter, on a machine that has only PyTorch & co.

The GPU check of the course runs on a machine with PyTorch, timm and transformers but without
Jupyter, papermill or myst-nb. This script executes each notebook's code cells in order in
one namespace (``display`` prints, figures are saved, not shown), in the profile given, and
prints every cell's duration. Reports land in ``$FTCOURSE_REPORT_DIR`` as usual.

    FTCOURSE_REPORT_DIR=out python benchmarks/run_plain.py notebooks/00_quickstart.ipynb
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path


def _has_ipython() -> bool:
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        return False
    return True


class _Markdown(str):
    """Stands in for ``IPython.display.Markdown`` where IPython is not installed."""


def run(path: Path, profile: str, params: dict) -> bool:
    os.environ["FTCOURSE_PROFILE"] = profile
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = json.loads(path.read_text())
    namespace = {"__name__": "__main__", "display": lambda *o, **_: print(*o)}
    plain = not _has_ipython()
    start = time.perf_counter()
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if plain:  # no IPython: Markdown is a str, display prints
            source = source.replace("from IPython.display import Markdown", "Markdown = _Markdown")
            namespace["_Markdown"] = _Markdown
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags:
            source += "\n" + "\n".join(
                f"{k} = {v!r}" for k, v in {"PROFILE": profile, **params}.items()
            )
        t = time.perf_counter()
        try:
            exec(compile(source, f"{path.stem}[{i}]", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(
                f"FAILED {path.stem} cell {i} after {time.perf_counter() - start:.1f} s", flush=True
            )
            return False
        finally:
            plt.close("all")
        print(f"[{path.stem} cell {i}: {time.perf_counter() - t:.1f} s]", flush=True)
    print(f"DONE {path.stem} ({profile}) in {time.perf_counter() - start:.1f} s", flush=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    params = {}
    for pair in args.param:
        name, _, value = pair.partition("=")
        params[name] = value
    ok = all([run(nb, args.profile, params) for nb in args.notebooks])
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
