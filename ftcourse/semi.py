"""Semi-supervised fine-tuning: a few labels and many unlabelled images.

Three ways to use the unlabelled images, each taught in chapter 8:

* **pseudo-labelling** (self-training, Lee 2013): the fine-tuned model labels the unlabelled
  pool; the examples it is confident about (:func:`select`, above a threshold) join the
  training set, and the model is trained again; repeat (:func:`fit_self_training`);
* **consistency regularisation** (FixMatch, Sohn et al. 2020): on every step a weakly
  augmented view of an unlabelled batch sets a pseudo-label where the model is confident,
  and the strongly augmented view of the same image is trained to predict it
  (:func:`consistency_loss`, :class:`FixMatch`, :func:`fit_fixmatch`);
* **self-supervised pretraining, then fine-tuning**: chapter 1's SimCLR loss
  (:func:`simclr_loss`) trains an encoder on the unlabelled images (:func:`simclr_pretrain`),
  which is then fine-tuned on the few labels.

The unlabelled pool is passed as a ``TensorDataset`` of images *and* their true labels so
that the chapter can measure how precise the pseudo-labels are; training never reads those
labels (a test swaps them and checks that the trained weights do not change).
Augmentations work on the course's images (``[N, 1, 28, 28]``, normalised to [-1, 1]).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from . import data
from .precision import autocast
from .train import Curve, evaluate, fit_steps, predict, show_progress

BACKGROUND = -1.0  # the course's images are normalised to [-1, 1]; black is -1

# --------------------------------------------------------------------------- augmentations


def _affine(
    x: torch.Tensor,
    rotate: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    flip: torch.Tensor,
    shear: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample each image of ``x`` with its own rotation (radians), scale, shift (in units of
    half the image), horizontal flip (+-1) and shear; outside pixels are background."""
    n = len(x)
    cos, sin = torch.cos(rotate), torch.sin(rotate)
    shear = torch.zeros(n) if shear is None else shear
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / scale * flip, (-sin + shear) / scale
    theta[:, 1, 0], theta[:, 1, 1] = sin / scale * flip, cos / scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x - BACKGROUND, grid, align_corners=False)  # zeros outside
    return out + BACKGROUND


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _flip(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)


def weak(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FixMatch's weak augmentation: a random horizontal flip and a shift of up to 12.5 % of
    the image (3.5 pixels) each way. Also the labelled batches' augmentation of every arm of
    chapter 8, so that no arm wins by augmentation alone."""
    n = len(x)
    zero = torch.zeros(n)
    shift = _uniform(2 * n, -0.25, 0.25, generator).view(n, 2)  # 0.25 of the half-width
    return _affine(x, zero, torch.ones(n), shift, _flip(n, generator))


def strong(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A strong augmentation in the spirit of FixMatch's RandAugment + Cutout, for grey
    28x28 images: flip, rotation (up to 30 degrees), shear, scale 0.75-1.25, shift, random
    contrast and brightness, and a grey 12x12 square cut out at a random place."""
    n = len(x)
    out = _affine(
        x,
        _uniform(n, -math.pi / 6, math.pi / 6, generator),
        _uniform(n, 0.75, 1.25, generator),
        _uniform(2 * n, -0.3, 0.3, generator).view(n, 2),
        _flip(n, generator),
        _uniform(n, -0.3, 0.3, generator),
    )
    contrast = _uniform(n, 0.5, 1.5, generator).view(n, 1, 1, 1).to(x)
    bright = _uniform(n, -0.3, 0.3, generator).view(n, 1, 1, 1).to(x)
    out = ((out - BACKGROUND) * contrast + BACKGROUND + bright).clamp(-1, 1)
    size, (h, w) = 12, x.shape[-2:]
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    hole = (rows >= top.view(n, 1, 1)) & (rows < top.view(n, 1, 1) + size)
    hole = hole & (cols >= left.view(n, 1, 1)) & (cols < left.view(n, 1, 1) + size)
    return out.masked_fill(hole.unsqueeze(1).to(out.device), 0.0)  # 0 is mid-grey


def simclr_views(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Chapter 1's contrastive augmentation: random crop-and-resize (scale 0.6-1), horizontal
    flip and Gaussian noise (std 0.1)."""
    n = len(x)
    scale = 0.6 + 0.4 * torch.rand(n, generator=generator)
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return out + 0.1 * torch.randn(out.shape, generator=generator).to(out)


# --------------------------------------------------------------------------- pseudo-labels


@dataclass(frozen=True)
class PseudoLabels:
    """The examples of an unlabelled pool that a model labels above a confidence threshold."""

    index: torch.Tensor  # positions in the pool, [K]
    label: torch.Tensor  # the predicted class, [K]
    confidence: torch.Tensor  # its softmax probability, [K]
    pool_size: int
    num_classes: int

    @property
    def class_counts(self) -> list[int]:
        """How many pseudo-labels each class got (is the selection balanced?)."""
        return torch.bincount(self.label, minlength=self.num_classes).tolist()

    @property
    def coverage(self) -> float:
        """The fraction of the pool that got a pseudo-label."""
        return len(self.index) / self.pool_size if self.pool_size else 0.0

    def precision(self, true_labels: torch.Tensor) -> float:
        """The fraction of pseudo-labels that equal the true labels (``nan`` if none)."""
        if len(self.index) == 0:
            return float("nan")
        return (true_labels[self.index] == self.label).float().mean().item()


def select(probs: torch.Tensor, threshold: float, balance: bool = False) -> PseudoLabels:
    """Pseudo-label every row of ``probs`` ``[N, C]`` whose largest probability is at least
    ``threshold``, with that class. ``threshold=0`` keeps every row.

    With ``balance``, every class keeps the same number of rows, its most confident ones: as
    many as the rarest class above the threshold has (a class with no row above it gets none
    and does not stop the others). Without it, the classes the model finds easy can flood the
    training set. Taught in chapter 8.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], not {tuple(probs.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    confidence, label = probs.max(dim=1)
    keep = torch.nonzero(confidence >= threshold).flatten()
    if balance and len(keep):
        per_class = [keep[label[keep] == c] for c in range(probs.shape[1])]
        quota = min(len(rows) for rows in per_class if len(rows))
        keep = torch.cat(
            [
                rows[confidence[rows].argsort(descending=True, stable=True)[:quota]]
                for rows in per_class
            ]
        )
        keep = keep.sort().values
    return PseudoLabels(keep, label[keep], confidence[keep], len(probs), probs.shape[1])


def pseudo_label(
    model: nn.Module,
    images: torch.Tensor,
    threshold: float,
    device: Any = "cpu",
    balance: bool = False,
) -> PseudoLabels:
    """:func:`select` on ``model``'s softmax over ``images`` (eval mode, no augmentation)."""
    dummy = torch.zeros(len(images), dtype=torch.long)
    probs = predict(model, TensorDataset(images, dummy), device).softmax(dim=1)
    return select(probs, threshold, balance)


def fit_self_training(
    model: nn.Module,
    train_set: Dataset,
    *,
    unlabelled: TensorDataset,
    rounds: int,
    threshold: float,
    balance: bool = True,
    score_set: Dataset | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = weak,
    label_share: float | None = None,
    **fit_kwargs: Any,
) -> Curve:
    """Pseudo-labelling: fine-tune on the labels, then ``rounds`` times label the pool and
    fine-tune again, from the same start, on the labels plus the confident pseudo-labels.

    ``label_share`` up-weights the real labels: each round repeats them so that they make
    about that share of its training data (``None``: once each, however many pseudo-labels
    join them).

    Called like :func:`ftcourse.train.fit_steps` (``lr``, ``max_steps``, ``val_set``... go to
    every round's ``fit_steps``; each round's length is chosen on validation), so
    :func:`ftcourse.experiments.run_arm` can tune and test it as any arm. The model ends
    with the last round's weights. ``balance`` selects the same number of pseudo-labels per
    class (:func:`select`). ``unlabelled`` holds images and true labels; the labels only
    measure the pseudo-labels' precision. ``score_set`` (e.g. the test set) is scored
    after each round for the record; no choice reads it.

    Returns:
        the last round's :class:`~ftcourse.train.Curve`; its ``extra["rounds"]`` lists, per
        round (0 is labels only), ``val_acc``, ``score`` (or ``None``), ``best_step``,
        ``seconds``, ``train_size``, ``label_repeats``, and ``coverage``, ``precision`` and
        ``class_counts`` of the pseudo-labels it trained on. Taught in chapter 8.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, not {rounds}")
    if label_share is not None and not 0 < label_share < 1:
        raise ValueError(f"label_share must be between 0 and 1, not {label_share}")
    images, truth = unlabelled.tensors
    device = fit_kwargs.get("device", "cpu")
    progress = fit_kwargs.pop("progress", False)
    start = copy.deepcopy(model.state_dict())
    history: list[dict[str, Any]] = []
    data, chosen, repeats = train_set, None, 1
    for r in range(rounds + 1):
        if r:
            chosen = pseudo_label(model, images, threshold, device, balance)
            pseudo = TensorDataset(images[chosen.index], chosen.label)
            if label_share is not None:  # labels : pseudo-labels = share : 1 - share
                wanted = label_share / (1 - label_share) * len(pseudo) / len(train_set)
                repeats = max(1, round(wanted))
            data = ConcatDataset([train_set] * repeats + [pseudo]) if len(pseudo) else train_set
            model.load_state_dict(start)
        label = f"{progress} round {r}" if isinstance(progress, str) else progress
        curve = fit_steps(
            model, data, augment=augment, progress=label, drop_last=bool(r), **fit_kwargs
        )
        history.append(
            {
                "round": r,
                "val_acc": curve.best_val_acc,
                "score": evaluate(model, score_set, device) if score_set is not None else None,
                "best_step": curve.best_step,
                "seconds": curve.best_seconds,
                "train_size": len(data),
                "label_repeats": repeats if r else 1,
                "coverage": chosen.coverage if chosen else 0.0,
                "precision": chosen.precision(truth) if chosen else float("nan"),
                "class_counts": chosen.class_counts if chosen else [],
            }
        )
    curve.extra["rounds"] = history
    return curve


# --------------------------------------------------------------------------- consistency


def consistency_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss: where the weak view's top probability reaches
    ``threshold``, cross-entropy of the strong view against the weak view's class.

    The pseudo-label is a constant (no gradient flows through the weak view), and the sum is
    divided by the whole batch, not by the confident rows, as in the paper: while the model is
    unsure, the term is small. Returns ``(loss, mask)``, ``mask`` marking the confident rows.
    Taught in chapter 8.
    """
    probs = weak_logits.detach().float().softmax(dim=1)
    confidence, target = probs.max(dim=1)
    mask = confidence >= threshold
    per_row = nn.functional.cross_entropy(strong_logits.float(), target, reduction="none")
    return (per_row * mask).sum() / len(per_row), mask


class FixMatch:
    """The unlabelled half of a FixMatch step, as an ``extra_loss`` for
    :func:`ftcourse.train.fit_steps`: draw ``batch_size`` unlabelled images, label their weak
    view, train their strong view (``weight`` x :func:`consistency_loss`).

    Keeps, per step, the fraction of the batch above the threshold (``mask_rate``) and, if
    the true labels are given, the precision of those pseudo-labels (``precision``).
    Taught in chapter 8.
    """

    def __init__(
        self,
        images: torch.Tensor,
        true_labels: torch.Tensor | None = None,
        *,
        threshold: float = 0.95,
        weight: float = 1.0,
        batch_size: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        if len(images) == 0:
            raise ValueError("FixMatch needs unlabelled images")
        self.images, self.true_labels = images, true_labels
        self.threshold, self.weight, self.batch_size = threshold, weight, batch_size
        self.generator = generator
        self.mask_rate: list[float] = []
        self.precision: list[float] = []

    def __call__(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        idx = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
        x = self.images[idx]
        weak_x, strong_x = weak(x, self.generator), strong(x, self.generator)
        with autocast(device):
            with torch.no_grad():
                weak_logits = model(weak_x.to(device))
            strong_logits = model(strong_x.to(device))
        loss, mask = consistency_loss(weak_logits, strong_logits, self.threshold)
        mask = mask.cpu()
        self.mask_rate.append(mask.float().mean().item())
        if self.true_labels is not None:
            right = weak_logits.argmax(dim=1).cpu() == self.true_labels[idx]
            self.precision.append(right[mask].float().mean().item() if mask.any() else math.nan)
        return self.weight * loss


def fit_fixmatch(
    model: nn.Module,
    train_set: Dataset,
    *,
    unlabelled: TensorDataset,
    threshold: float = 0.95,
    weight: float = 1.0,
    unlabelled_batch: int = 64,
    **fit_kwargs: Any,
) -> Curve:
    """FixMatch: :func:`ftcourse.train.fit_steps` on weakly augmented labelled batches plus
    :class:`FixMatch`'s consistency loss on unlabelled ones.

    Called like ``fit_steps`` (so :func:`ftcourse.experiments.run_arm` tunes and tests it);
    the curve's ``extra`` holds ``mask_rate`` and ``precision`` per step. Taught in chapter 8.
    """
    images, truth = unlabelled.tensors
    fixmatch = FixMatch(
        images, truth, threshold=threshold, weight=weight, batch_size=unlabelled_batch
    )
    curve = fit_steps(model, train_set, augment=weak, extra_loss=fixmatch, **fit_kwargs)
    curve.extra.update(mask_rate=fixmatch.mask_rate, precision=fixmatch.precision)
    return curve


# --------------------------------------------------------------------------- SimCLR


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Chapter 1's NT-Xent loss for two views ``z1``, ``z2`` ``[N, D]`` (row i of both: the
    same image): each view must pick its partner among the other ``2N - 1``."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(sim, targets)


def simclr_pretrain(
    encoder: nn.Module,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    temperature: float = 0.2,
    generator: torch.Generator | None = None,
    device: Any = "cpu",
    progress: bool | str = "SimCLR",
) -> list[float]:
    """Train ``encoder`` (a model without head: pooled features out, e.g.
    ``models.build(name, num_classes=0)``) on unlabelled ``images`` with chapter 1's recipe:
    a 2-layer projection head, two :func:`simclr_views` per image, :func:`simclr_loss`,
    AdamW (weight decay 1e-4). The projection head is thrown away. Returns the loss per step.
    Taught in chapters 1 and 8.
    """
    from tqdm.auto import tqdm

    encoder.to(device).train()
    width = encoder.num_features
    projector = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 64)).to(device)
    optimizer = torch.optim.AdamW(
        [*encoder.parameters(), *projector.parameters()], lr=lr, weight_decay=1e-4
    )
    losses = []
    for _ in tqdm(range(steps), desc=str(progress), disable=not show_progress(progress)):
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = images[idx]
        with autocast(device):
            z1, z2 = (projector(encoder(simclr_views(x, generator).to(device))) for _ in "12")
        loss = simclr_loss(z1.float(), z2.float(), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def with_head(encoder: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A classifier from ``build()`` (the same architecture with a new head) carrying
    ``encoder``'s weights; every weight but the head's must match. Chapter 8."""
    model = build()
    try:
        missing, unexpected = model.load_state_dict(encoder.state_dict(), strict=False)
    except RuntimeError as err:  # shapes differ
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        raise ValueError(f"encoder does not fit: {detail}") from None
    classifier = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is classifier)
    head = {f"{name}.{p}" for p, _ in classifier.named_parameters()}
    if unexpected or set(missing) - head:
        raise ValueError(f"encoder does not fit: missing {missing}, unexpected {unexpected}")
    return model


# --------------------------------------------------------------------------- the chapter's task

CLASSES = range(5, 10)  # Fashion-MNIST's sandal, shirt, sneaker, bag, ankle boot (chapter 1's)


@dataclass(frozen=True)
class Task:
    """Chapter 8's data: a labelled pool to draw the few labels from, a disjoint unlabelled
    pool (images, and true labels kept only to measure pseudo-labels), and a test set."""

    labelled_pool: TensorDataset
    unlabelled: TensorDataset
    test: Dataset

    def splits(self, labels_per_class: int) -> Callable[[int], tuple[Dataset, Dataset]]:
        """``seed -> (train, val)`` with ``labels_per_class`` images per class in each: a
        validation split as small as the training split, as it would be in this regime."""
        return lambda seed: data.few_label_split(
            self.labelled_pool, labels_per_class, labels_per_class, seed=seed
        )


def task(unlabelled: int, test_size: int, seed: int = 0) -> Task:
    """Hold out ``unlabelled`` random training images of Fashion-MNIST classes 5-9 as the
    unlabelled pool; the rest is the labelled pool; ``test_size`` test images."""
    pool = data.image_task("fashion-mnist", CLASSES, "train")
    x, y = pool.tensors
    if not 0 < unlabelled < len(x):
        raise ValueError(f"unlabelled must be between 1 and {len(x) - 1}, not {unlabelled}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    hold, rest = order[:unlabelled], order[unlabelled:]
    test = data.random_subset(data.image_task("fashion-mnist", CLASSES, "test"), test_size)
    return Task(TensorDataset(x[rest], y[rest]), TensorDataset(x[hold], y[hold]), test)


def arms(
    model: str,
    cfg: dict[str, Any],
    unlabelled: TensorDataset,
    encoder: nn.Module | None = None,
    score_set: Dataset | None = None,
) -> dict[str, tuple[Callable[[Dataset], nn.Module], Callable[..., Curve]]]:
    """Chapter 8's arms as ``name -> (make_model, fit)`` for
    :func:`ftcourse.experiments.run_arm`; every arm sees the labelled batches weakly
    augmented. ``cfg`` is the profile's ``semi`` section; ``encoder`` (a SimCLR-trained
    ``model`` without head) adds the arm "SimCLR + fine-tune"; ``score_set`` is scored after
    each pseudo-labelling round, for the record."""
    from . import models

    num_classes = len(CLASSES)

    def pretrained(train: Dataset) -> nn.Module:
        return models.load(model, num_classes=num_classes).model

    out = {
        "supervised": (pretrained, functools.partial(fit_steps, augment=weak)),
        "pseudo-label": (
            pretrained,
            functools.partial(
                fit_self_training,
                unlabelled=unlabelled,
                rounds=cfg["rounds"],
                threshold=cfg["threshold"],
                score_set=score_set,
            ),
        ),
        "FixMatch": (
            pretrained,
            functools.partial(
                fit_fixmatch,
                unlabelled=unlabelled,
                threshold=cfg["threshold"],
                weight=cfg["fixmatch_weight"],
                unlabelled_batch=cfg["unlabelled_batch"],
            ),
        ),
    }
    if encoder is not None:
        out["SimCLR + fine-tune"] = (
            lambda train: with_head(encoder, lambda: models.build(model, num_classes)),
            functools.partial(fit_steps, augment=weak),
        )
    return out


def simclr_encoder(
    model: str, images: torch.Tensor, cfg: dict[str, Any], seed: int = 0, device: Any = "cpu"
) -> tuple[nn.Module, list[float]]:
    """``model``'s architecture from random weights, without head, trained by
    :func:`simclr_pretrain` on ``images`` with the profile's ``simclr_*`` settings."""
    from . import models
    from .train import seed_everything

    generator = seed_everything(seed)
    encoder = models.build(model, num_classes=0)
    losses = simclr_pretrain(
        encoder,
        images,
        steps=cfg["simclr_steps"],
        batch_size=cfg["simclr_batch"],
        lr=cfg["simclr_lr"],
        generator=generator,
        device=device,
    )
    return encoder.cpu(), losses
