"""The image datasets as arrays and tensors, few-label splits and subsets (chapters 0-3, 8);
Shakespeare's texts as a list (chapter 1)."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .registry import locate

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
