"""One small training and evaluation loop, used by every chapter.

:func:`fit` trains a classifier with AdamW, shows a tqdm progress bar and returns a
:class:`History` (per-epoch loss and accuracy) for plots. Only parameters with
``requires_grad=True`` are optimised, which is what partial fine-tuning (chapter 3) and the
parameter-efficient methods (chapters 4-5) rely on. Introduced in chapter 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

PROGRESS_ENV = "FTCOURSE_PROGRESS"


def show_progress(progress: bool | str = True) -> bool:
    """Whether to draw a progress bar: ``progress`` unless ``$FTCOURSE_PROGRESS`` is ``0``.

    The book build and the tests set ``FTCOURSE_PROGRESS=0`` so that executed notebooks do
    not store hundreds of progress-bar lines.
    """
    return progress is not False and os.environ.get(PROGRESS_ENV) != "0"


@dataclass
class History:
    """Per-epoch metrics of one :func:`fit` run (lists aligned with ``epoch``)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_val_acc(self) -> float:
        """Validation accuracy after the last epoch (``nan`` when no validation set was given)."""
        return self.val_acc[-1] if self.val_acc else float("nan")


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu"
) -> float:
    """Accuracy of ``model`` (logits out) on a dataset or loader of ``(x, y)`` pairs."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=512)
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(dim=-1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return correct / total


def fit(
    model: nn.Module,
    train_set: Dataset,
    *,
    num_epochs: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    val_set: Dataset | None = None,
    param_groups: Iterable[dict] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool | str = True,
) -> History:
    """Train ``model`` on ``train_set`` for ``num_epochs`` epochs with AdamW.

    Args:
        param_groups: optimizer parameter groups (e.g. discriminative learning rates); the
            default is every parameter with ``requires_grad=True`` at ``lr``.
        generator: seeds the shuffling, so two runs with equally seeded generators and models
            give identical weights.
        progress: ``False`` hides the bar; a string is used as its label.
    Returns:
        the :class:`History`; training accuracy is measured on the fly (in train mode).
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, not {num_epochs}")
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    model.to(device)
    groups = list(param_groups) if param_groups is not None else None
    if groups is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters (all requires_grad=False)")
        groups = [{"params": trainable}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    loss_fn = loss_fn or nn.functional.cross_entropy
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    history = History()
    start = time.perf_counter()
    label = progress if isinstance(progress, str) else "train"
    bar = tqdm(
        range(1, num_epochs + 1), desc=label, disable=not show_progress(progress), leave=False
    )
    for epoch in bar:
        model.train()
        total_loss = correct = seen = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(dim=-1) == y).sum().item()
            seen += len(y)
        history.epoch.append(epoch)
        history.train_loss.append(total_loss / seen)
        history.train_acc.append(correct / seen)
        if val_set is not None:
            history.val_acc.append(evaluate(model, val_set, device))
        bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val=f"{history.final_val_acc:.3f}")
    history.seconds = time.perf_counter() - start
    return history
