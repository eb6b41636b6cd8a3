"""Where datasets live: the cache folder (``$FTCOURSE_DATA``), checksums, the error that names
the fix. Chapter 0 on (through :mod:`ftcourse.data`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "FTCOURSE_DATA"
OFFLINE_ENV = "FTCOURSE_OFFLINE"


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither cached nor installed; the message names the command that fixes it."""


def cache_dir(value: str | None = None) -> Path:
    """Where fetched datasets live: ``$FTCOURSE_DATA`` or ``~/.cache/ftcourse/data``.

    ``$FTCOURSE_DATA`` (or ``value``, checked the same way) must be an absolute path to a
    folder (or to nothing yet): an empty value would make the current folder the cache, and a
    relative one would change with it.
    """
    value = os.environ.get(CACHE_ENV) if value is None else value
    if value is None:
        return Path.home() / ".cache" / "ftcourse" / "data"
    if not value.strip():
        raise ValueError(
            f"{CACHE_ENV} is set but empty: unset it (the cache is then "
            "~/.cache/ftcourse/data) or give an absolute folder"
        )
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        raise ValueError(f"{CACHE_ENV}={value!r} is relative: give an absolute folder")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{CACHE_ENV}={value!r} is a file, not a folder")
    return folder


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
