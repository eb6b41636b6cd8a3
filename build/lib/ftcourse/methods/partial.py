"""Partial fine-tuning, from scratch: freezing, top-k blocks, BitFit and sparse masks.

Every function here works on plain ``torch.nn`` modules by switching ``requires_grad`` (or by
masking gradients), so the models train with the ordinary :func:`ftcourse.train.fit`, which
optimises only parameters with ``requires_grad=True``. Taught in chapter 3 (partial
fine-tuning).

Two pitfalls the chapter discusses:

* **BatchNorm statistics.** ``requires_grad=False`` freezes BatchNorm's gamma and beta, but in
  train mode BatchNorm still normalises with batch statistics and updates its running mean and
  variance, so a "frozen" block still changes. :func:`freeze_batchnorm_stats` keeps frozen
  BatchNorm layers in eval mode, even across the ``model.train()`` that ``fit`` calls.
* **Weight decay with sparse masks.** :func:`apply_masks` zeroes the gradient of masked-out
  entries. With Adam/AdamW their moments then stay zero and the entries do not move, *but only
  with* ``weight_decay=0``: decoupled weight decay shrinks every weight of an optimised tensor,
  gradient or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..memory import count_parameters
from ..precision import autocast

__all__ = [
    "apply_masks",
    "bitfit",
    "freeze",
    "freeze_batchnorm_stats",
    "target_batchnorm_stats",
    "precompute",
    "split_frozen",
    "gradient_scores",
    "mask_fraction",
    "sparse_masks",
    "trainable_fraction",
    "unfreeze",
    "unfreeze_top_blocks",
]


# --------------------------------------------------------------------------- freezing


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter; returns ``model``.

    Taught in chapter 3 (partial fine-tuning).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unfreeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=True`` on every parameter of ``module``; returns ``module``.

    Taught in chapter 3 (partial fine-tuning).
    """
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def unfreeze_top_blocks(model: nn.Module, blocks: list[nn.Module], k: int) -> nn.Module:
    """Freeze ``model``, then unfreeze its head (``blocks[-1]``) and the ``k`` blocks below it.

    ``blocks`` runs from input to output, e.g. :func:`ftcourse.models.blocks`. ``k=0``
    trains the head only; ``k=len(blocks) - 1`` trains every block. Taught in chapter 3
    (partial fine-tuning).

    Raises:
        ValueError: ``blocks`` is empty or ``k`` is not in ``0..len(blocks) - 1``.
    """
    if not blocks:
        raise ValueError("blocks is empty; pass the model's blocks from input to head")
    top = len(blocks) - 1
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= top:
        raise ValueError(
            f"k must be an integer in 0..{top} (0 = head only, {top} = all {len(blocks)} "
            f"blocks), not {k!r}"
        )
    freeze(model)
    for block in blocks[top - k :]:
        unfreeze(block)
    return model


def bitfit(model: nn.Module, train_head: bool = True) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022): train only the bias terms (and the head).

    Freezes everything, then unfreezes every parameter whose name ends with ``"bias"`` and,
    with ``train_head``, the classifier ``model.get_classifier()`` (timm models; skipped when
    the model has none). In a timm ResNet the convolutions have no bias, so the biases are
    BatchNorm's ``bias`` (beta) plus the head's; BatchNorm's ``weight`` (gamma) stays frozen.
    Taught in chapter 3 (partial fine-tuning).
    """
    freeze(model)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    if train_head and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module):
            unfreeze(head)
    return model


def freeze_batchnorm_stats(model: nn.Module, only_frozen: bool = True) -> list[RemovableHandle]:
    """Keep every BatchNorm layer whose parameters are all frozen in eval mode.

    With ``only_frozen=False`` *every* BatchNorm layer keeps its running statistics, trainable
    or not: what chapter 3 does in all its arms, so that arms differ only in which weights
    change (BitFit's trainable BatchNorm shifts then see the same statistics as head-only).

    In eval mode BatchNorm normalises with its running statistics and does not update them, so
    a frozen block computes exactly what it computed after pre-training. A forward pre-hook sets
    the mode before each call, so it survives the ``model.train()`` that
    :func:`ftcourse.train.fit` runs every epoch. Call it *after* choosing what to freeze (a
    layer with any trainable parameter, e.g. BatchNorm under :func:`bitfit`, keeps training
    normally; a BatchNorm without affine parameters counts as frozen). Remove the returned
    handles (``h.remove()``) to undo. Taught in chapter 3 (partial fine-tuning).
    """
    handles = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (
            only_frozen and any(p.requires_grad for p in module.parameters())
        ):
            module.eval()
            handles.append(module.register_forward_pre_hook(_set_eval))
    return handles


@torch.no_grad()
def target_batchnorm_stats(
    model: nn.Module, data: torch.utils.data.Dataset, batch_size: int = 256
) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``data``'s inputs.

    A pretrained model's statistics describe its *source* images. Frozen with
    :func:`freeze_batchnorm_stats`, they would normalise a target's images with the source's
    mean and variance: harmless for a near target, a bias against a far one (digits instead
    of clothes). Measured on the target's own training images first, every arm of chapter 3
    starts from statistics of its target. No weight changes; returns ``model``.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for x, _ in torch.utils.data.DataLoader(data, batch_size=batch_size):
        model(x.to(device))
    for m, value in zip(layers, momentum, strict=True):
        m.momentum = value
    model.train(was_training)
    return model


def _set_eval(module: nn.Module, args: tuple) -> None:
    module.training = False


def split_frozen(blocks: list[nn.Module]) -> tuple[nn.Sequential, nn.Sequential]:
    """Split ``blocks`` (input to output) into the frozen bottom and the rest.

    The bottom is every block before the first one with a trainable parameter. When its
    BatchNorm layers keep their statistics (:func:`freeze_batchnorm_stats`) and it has no
    dropout, it computes the same output for an image at every step, so that output can be
    computed once (:func:`precompute`) and only the rest trained: partial fine-tuning's real
    saving in compute. Both parts share the model's parameters. Taught in chapter 3.
    """
    first = next(
        (i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())),
        len(blocks),
    )
    return nn.Sequential(*blocks[:first]), nn.Sequential(*blocks[first:])


@torch.no_grad()
def precompute(
    bottom: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device | str = "cpu"
) -> torch.utils.data.TensorDataset:
    """``(bottom(x), y)`` for every example, computed once in eval mode without gradients
    (under :func:`ftcourse.precision.autocast`), stored as fp32 on the CPU.

    Taught in chapter 3 (partial fine-tuning).
    """
    was_training = bottom.training
    bottom.eval()
    xs, ys = [], []
    with torch.no_grad(), autocast(device):
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=256):
            xs.append(bottom(x.to(device)).float().cpu())
            ys.append(y)
    bottom.train(was_training)
    return torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))


# --------------------------------------------------------------------------- sparse masks


def gradient_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    num_batches: int | None = 8,
) -> dict[str, Tensor]:
    """Sum of ``|gradient|`` of the loss per parameter over a few batches (sparse FT scores).

    ``batches`` is a DataLoader or any iterable of ``(x, y)`` batches; at most ``num_batches``
    are used (``None``: all). Every parameter is scored, frozen or not. The model runs in eval
    mode (BatchNorm running statistics and dropout untouched), and its ``requires_grad`` flags,
    ``.grad`` fields and train/eval mode are left as they were. Taught in chapter 3 (partial
    fine-tuning).
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, not {num_batches}")
    named = list(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters")
    params = [p for _, p in named]
    device = params[0].device
    scores = {name: torch.zeros_like(p) for name, p in named}
    flags = [p.requires_grad for p in params]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        for x, y in batches:
            if num_batches is not None and seen >= num_batches:
                break
            loss = loss_fn(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for (name, _), g in zip(named, grads, strict=True):
                if g is not None:
                    scores[name] += g.abs()
            seen += 1
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty")
    return scores


def sparse_masks(
    model: nn.Module, fraction: float, scores: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Boolean masks (``True`` = may change) that select the top ``fraction`` of all weights.

    The ``round(fraction * N)`` entries with the largest scores are chosen *globally*, where
    ``N`` is the model's parameter count, so some tensors get many entries and others none.
    The head competes like any other tensor (no special case); to always train it, set its
    masks to all-``True`` afterwards. ``scores`` maps parameter names to tensors of the same
    shape, e.g. from :func:`gradient_scores`; the default is ``|p.grad|`` from the model's last
    backward pass. Parameters without a score get an all-``False`` mask. Taught in chapter 3
    (partial fine-tuning).

    Raises:
        ValueError: ``fraction`` not in (0, 1], no scores, bad shapes or non-finite scores.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
    named = dict(model.named_parameters())
    if scores is None:
        scores = {n: p.grad.detach().abs() for n, p in named.items() if p.grad is not None}
        if not scores:
            raise ValueError(
                "no scores given and the model has no gradients: pass scores=gradient_scores("
                "model, loader) or run a backward pass first"
            )
    for name, score in scores.items():
        if name not in named:
            raise ValueError(f"scores has {name!r}, which is not a parameter of the model")
        if score.shape != named[name].shape:
            raise ValueError(
                f"score of {name!r} has shape {tuple(score.shape)}, "
                f"the parameter {tuple(named[name].shape)}"
            )
    names = [n for n in named if n in scores]
    flat = torch.cat([scores[n].detach().flatten().float().cpu() for n in names])
    if not torch.isfinite(flat).all():
        raise ValueError("scores contain NaN or infinite values")
    k = max(1, round(fraction * count_parameters(model)))
    if k > flat.numel():
        raise ValueError(f"cannot select {k} entries: only {flat.numel()} have scores")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in named.items()}
    for name, piece in zip(names, chosen.split([scores[n].numel() for n in names]), strict=True):
        masks[name] = piece.view(named[name].shape).to(named[name].device)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> list[RemovableHandle]:
    """Train only the masked-in entries: zero the gradient of every entry whose mask is False.

    A parameter with an all-``False`` mask gets ``requires_grad=False``; one with any ``True``
    gets ``requires_grad=True`` and (unless all-``True``) a gradient hook. Parameters missing
    from ``masks`` are left as they are. Remove the returned handles (``h.remove()``) to undo
    the hooks.

    Masked-out entries stay bit-identical under Adam/AdamW/SGD **only with**
    ``weight_decay=0`` (the default of :func:`ftcourse.train.fit`): their gradients and
    optimizer moments are zero, but decoupled weight decay shrinks every weight of an
    optimised tensor. Taught in chapter 3 (partial fine-tuning).
    """
    named = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(named))
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
    handles = []
    for name, mask in masks.items():
        p = named[name]
        if mask.shape != p.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask of {name!r} must be a bool tensor of shape {tuple(p.shape)}")
        if not mask.any():
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        if not mask.all():
            keep = mask.to(p.device)
            handles.append(p.register_hook(lambda g, keep=keep: g.masked_fill(~keep, 0.0)))
    return handles


# --------------------------------------------------------------------------- counting


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (shared tensors counted once).

    Taught in chapter 3 (partial fine-tuning).
    """
    total = count_parameters(model)
    return count_parameters(model, trainable_only=True) / total if total else math.nan


def mask_fraction(masks: dict[str, Tensor], model: nn.Module) -> float:
    """Entries that may change (``True`` in ``masks``) / all parameters of ``model``.

    Taught in chapter 3 (partial fine-tuning).
    """
    total = count_parameters(model)
    return sum(int(m.sum()) for m in masks.values()) / total if total else math.nan
