"""One small training and evaluation loop, used by every chapter.

Two ways to say how long to train:

* :func:`fit_steps` trains for at most ``max_steps`` optimizer steps, measures validation
  accuracy every ``eval_every`` steps, stops early when it has not improved for ``patience``
  steps and restores the best checkpoint. Its :class:`Curve` says which step was best and how
  many training seconds it took to get there. Comparisons use it (see
  :mod:`ftcourse.experiments`): a budget in steps, the length chosen on validation.
* :func:`fit` trains for ``num_epochs`` epochs and returns a per-epoch :class:`History`; the
  zoo's pretraining recipe uses it.

Both optimise only parameters with ``requires_grad=True`` (what partial fine-tuning, chapter 3,
relies on), use AdamW, run the forward pass under :func:`ftcourse.precision.autocast` (bf16 only
where the hardware has it) and show a tqdm bar unless ``$FTCOURSE_PROGRESS=0``.
Introduced in chapter 0.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .precision import autocast


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way.

    Pass the generator to data loaders and samplers so that data order is reproducible.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


PROGRESS_ENV = "FTCOURSE_PROGRESS"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Augment = Callable[[torch.Tensor], torch.Tensor]
ExtraLoss = Callable[[nn.Module], torch.Tensor]


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


@dataclass
class Curve:
    """The validation checkpoints of one :func:`fit_steps` run (lists aligned with ``step``).

    ``seconds`` counts training time only (forward, backward, optimizer step), not the time
    spent evaluating, so that runs with different evaluation schedules compare fairly.
    """

    lr: float
    step: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_step: int = 0
    best_val_acc: float = float("nan")
    steps_run: int = 0
    extra: dict = field(default_factory=dict)  # what a training loop adds (chapter 8's rounds)

    @property
    def best_seconds(self) -> float:
        """Training seconds up to the best checkpoint."""
        return self.seconds[self.step.index(self.best_step)] if self.step else 0.0

    def reached(self, target: float) -> tuple[int, float] | None:
        """``(step, seconds)`` of the first checkpoint with validation accuracy >= ``target``."""
        for step, acc, sec in zip(self.step, self.val_acc, self.seconds, strict=True):
            if acc >= target:
                return step, sec
        return None


class Checkpoints:
    """Choose a run's length on validation: each checkpoint's score goes into a
    :class:`Curve`, the best weights are kept (BatchNorm statistics included), ``patience``
    says when to stop, and :meth:`finish` puts the best weights back.

    The one validation-checkpoint loop of :func:`fit_steps` (chapter 0), :func:`ftcourse.lm.sft`
    (chapter 6) and :func:`ftcourse.align.reward.train_reward_model` (chapter 7)::

        checkpoints = Checkpoints(model, lr, patience=50)
        for step in ...:
            ...  # one training step
            if step % eval_every == 0 and checkpoints.record(step, score, seconds=s, train_loss=l):
                break  # patience steps without a better score
        curve = checkpoints.finish(steps_run=step)
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        patience: int | None = None,
        restore_best: bool = True,
    ) -> None:
        self.model, self.patience, self.restore_best = model, patience, restore_best
        self.curve = Curve(lr=lr)
        self._best_state: dict | None = None

    def record(
        self,
        step: int,
        score: float,
        *,
        seconds: float,
        train_loss: float,
        train_acc: float | None = None,
    ) -> bool:
        """Add the checkpoint at ``step`` (``seconds``: training time so far; ``train_loss``,
        ``train_acc``: since the last checkpoint); keep its weights if its score is the best
        so far (ties keep the earlier, shorter run). Returns True when ``patience`` steps have
        passed without a better score."""
        curve = self.curve
        curve.step.append(step)
        curve.val_acc.append(score)
        curve.seconds.append(seconds)
        curve.train_loss.append(train_loss)
        if train_acc is not None:
            curve.train_acc.append(train_acc)
        if not score <= curve.best_val_acc:  # also true for the first checkpoint (nan)
            curve.best_step, curve.best_val_acc = step, score
            if self.restore_best:
                self._best_state = _state(self.model)
        return self.patience is not None and step - curve.best_step >= self.patience

    def finish(self, steps_run: int) -> Curve:
        """The curve, with ``steps_run`` set; the model gets its best weights back."""
        self.curve.steps_run = steps_run
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return self.curve


def _state(model: nn.Module) -> dict[str, Any]:
    """A detached copy of ``model``'s weights and buffers (what a checkpoint keeps)."""
    return {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in model.state_dict().items()
    }


def _batches(data: Dataset | DataLoader, batch_size: int = 512) -> DataLoader:
    return data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)


@torch.no_grad()
def predict(
    model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits of ``model`` for every example of ``data`` (``(x, y)`` pairs), in eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    with autocast(device):
        for x, _ in _batches(data):
            outs.append(model(x.to(device)).float().cpu())
    model.train(was_training)
    if not outs:
        raise ValueError("cannot evaluate on an empty dataset")
    return torch.cat(outs)


@torch.no_grad()
def features(
    model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features ``[N, D]`` and labels ``[N]`` of a timm classifier.

    Runs ``forward_features`` and ``forward_head(pre_logits=True)`` in eval mode (through the
    model's input adapter, if it has one), so the head is never used. Introduced in chapter 0
    (the linear probe of an ImageNet model).
    """
    was_training = model.training
    model.eval()
    adapter = getattr(model, "input_adapter", None)
    feats, labels = [], []
    with autocast(device):
        for x, y in _batches(data, batch_size=256):
            x = x.to(device)
            x = adapter(x) if adapter is not None else x
            feats.append(
                model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()
            )
            labels.append(y)
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    l2: float = 1e-3,
    max_iter: int = 200,
    per_item: bool = False,
) -> float | torch.Tensor:
    """Test accuracy of a logistic-regression head fitted on frozen features.

    ``train`` and ``test`` are ``(features [N, D], labels [N])``. Features are standardised
    with the training statistics; the head is fitted by L-BFGS with an L2 penalty ``l2``
    (a fixed recipe, not tuned). The standard way to ask "how good are these features?"
    (chapters 0, 1 and 3). ``per_item=True`` returns each test example's correctness (a bool
    tensor) instead of the accuracy.
    """
    (xtr, ytr), (xte, yte) = train, test
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    head = nn.Linear(xtr.shape[1], int(max(ytr.max(), yte.max())) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(xtr), ytr) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        right = head(xte).argmax(1) == yte
    return right if per_item else right.float().mean().item()


def correct(
    model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-example correctness (a bool tensor) of ``model`` on ``(x, y)`` pairs: what a
    reference study stores, so that intervals include the luck of the test sample
    (:func:`ftcourse.studies.interval`). Chapter 0."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad(), autocast(device):
        for x, y in _batches(data):
            out.append(model(x.to(device)).argmax(dim=-1).cpu() == y)
    model.train(was_training)
    if not out:
        raise ValueError("cannot evaluate on an empty dataset")
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu"
) -> float:
    """Accuracy of ``model`` (logits out) on a dataset or loader of ``(x, y)`` pairs."""
    correct = total = 0
    was_training = model.training
    model.eval()
    with autocast(device):
        for x, y in _batches(data):
            correct += (model(x.to(device)).argmax(dim=-1).cpu() == y).sum().item()
            total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return correct / total


def _optimizer(
    model: nn.Module, lr: float, weight_decay: float, param_groups: Iterable[dict] | None
) -> torch.optim.Optimizer:
    groups = list(param_groups) if param_groups is not None else None
    if groups is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters (all requires_grad=False)")
        groups = [{"params": trainable}]
    # foreach: one fused update over all tensors, about a quarter faster per step on a CPU
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device | str,
    augment: Augment | None = None,
    extra_loss: ExtraLoss | None = None,
) -> tuple[float, int]:
    """One optimizer step; returns (summed loss, number correct) for the batch.

    ``augment`` transforms the batch's inputs first; ``extra_loss(model)`` is added to the
    batch's loss (chapter 8: a consistency loss on unlabelled images).
    """
    x, y = x.to(device), y.to(device)
    if augment is not None:
        x = augment(x)
    with autocast(device):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    if extra_loss is not None:
        loss = loss + extra_loss(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(y), (logits.argmax(dim=-1) == y).sum().item()


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
    loss_fn: LossFn | None = None,
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
    optimizer = _optimizer(model, lr, weight_decay, param_groups)
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
            loss_sum, right = _step(model, optimizer, loss_fn, x, y, device)
            total_loss += loss_sum
            correct += right
            seen += len(y)
        history.epoch.append(epoch)
        history.train_loss.append(total_loss / seen)
        history.train_acc.append(correct / seen)
        if val_set is not None:
            history.val_acc.append(evaluate(model, val_set, device))
        bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val=f"{history.final_val_acc:.3f}")
    history.seconds = time.perf_counter() - start
    return history


def cosine_schedule(
    num_steps: int,
    warmup_fraction: float = 0.05,
    *,
    warmup: int | None = None,
    floor: float = 0.0,
) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then a cosine from 1 to ``floor`` at
    ``num_steps``. The warm-up lasts ``warmup`` steps, or ``warmup_fraction`` of the steps
    (at least one). ``floor=0.1`` is the pretraining recipe of :func:`ftcourse.lm.train_lm`."""
    if warmup is None:
        warmup = max(1, round(warmup_fraction * num_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, num_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adamw_cosine(
    params: Iterable[nn.Parameter], lr: float, num_steps: int, weight_decay: float = 0.0
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its schedule (5 % warm-up, then a cosine to zero over ``num_steps``): the
    optimizer of the chat-level loops (``lm.sft``, chapter 7's reward model and DPO)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(num_steps))


def clipped_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_norm: float = 1.0,
) -> None:
    """Backward, clip the gradient norm of ``params`` to ``max_norm``, step the optimizer and
    the schedule: one step of the language-model loops (``lm.train_lm``, ``lm.sft``, chapter 7's
    reward model and DPO)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def shuffled_batches(
    num_items: int,
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
    label: str = "train",
) -> Iterator[tuple[int, list[int]]]:
    """``(step, indices)`` for steps 1..``num_steps``: batches of item indices drawn epoch by
    epoch, each epoch shuffled with ``generator`` (seed 0 by default); an epoch's last batch
    may be smaller. Shows a progress bar named ``progress`` (a string) or ``label``."""
    generator = generator or torch.Generator().manual_seed(0)
    order: list[int] = []
    desc = progress if isinstance(progress, str) else label
    for step in tqdm(
        range(1, num_steps + 1), desc=desc, disable=not show_progress(progress), leave=False
    ):
        if not order:
            order = torch.randperm(num_items, generator=generator).tolist()
        yield step, [order.pop() for _ in range(min(batch_size, len(order)))]


@torch.no_grad()
def ema_decay(ema: float, step: int) -> float:
    """The moving average's decay after ``step`` steps: ``ema``, warmed up as
    ``(1 + step) / (10 + step)`` while that is smaller (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``), so that a short run's average is not
    mostly its starting point (``0.99 ** 50`` would leave 60 % of it). Chapter 8."""
    return min(ema, (1 + step) / (10 + step))


def _ema_update(average: dict[str, Any], model: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model``; counters are copied."""
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            average[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            average[k] = v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def _endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def fit_steps(
    model: nn.Module,
    train_set: Dataset,
    *,
    lr: float,
    max_steps: int,
    val_set: Dataset,
    eval_every: int = 10,
    patience: int | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    param_groups: Iterable[dict] | None = None,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    schedule: str = "cosine",
    restore_best: bool = True,
    progress: bool | str = True,
    augment: Augment | None = None,
    extra_loss: ExtraLoss | None = None,
    drop_last: bool = False,
    ema: float | None = None,
) -> Curve:
    """Train for at most ``max_steps`` AdamW steps; choose the length on ``val_set``.

    Every ``eval_every`` steps (and after the last step) the validation accuracy is measured.
    Training stops early once ``patience`` steps have passed without a better validation
    accuracy (``None``: never). With ``restore_best`` the model ends with the weights (and
    BatchNorm statistics) of its best checkpoint. Batches are drawn epoch by epoch, shuffled
    by ``generator``. ``schedule="cosine"`` warms the learning rate up linearly over the first
    5 % of ``max_steps`` and decays it to zero at ``max_steps`` along a cosine, so that every
    learning rate ends in a calm phase whose checkpoints validation can compare (with a constant
    rate, ``"constant"``, a high rate leaves noisy curves whose best point is partly luck).
    Taught in chapter 0 (fair comparisons: a step budget, the length chosen on validation).
    ``augment`` transforms every training batch's inputs (e.g. :func:`ftcourse.semi.weak`)
    and ``extra_loss(model)`` adds a term to every step's loss (e.g.
    :class:`ftcourse.semi.FixMatch`'s consistency loss on unlabelled images); both chapter 8.
    ``drop_last`` skips an epoch's last, smaller batch (a batch of one cannot train BatchNorm:
    chapter 8's pseudo-labelled sets change size every round).
    ``ema`` (e.g. 0.999, as FixMatch) keeps an exponential moving average of the weights and
    buffers, updated after every step with a warmed-up decay (:func:`ema_decay`); validation
    scores the average, and the model ends with the best average (or the last one, without
    ``restore_best``). Chapter 8.

    Returns:
        the :class:`Curve` of validation checkpoints, with ``best_step`` and ``steps_run``.
    Raises:
        ValueError: an empty training set, ``max_steps`` or ``eval_every`` below 1, or a
            model without trainable parameters.
    """
    if max_steps < 1 or eval_every < 1:
        raise ValueError(f"max_steps and eval_every must be >= 1, not {max_steps}, {eval_every}")
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    model.to(device)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")
    if ema is not None and not 0 < ema < 1:
        raise ValueError(f"ema must be between 0 and 1, not {ema}")
    average = _state(model) if ema is not None else None
    optimizer = _optimizer(model, lr, weight_decay, param_groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(max_steps) if schedule == "cosine" else (lambda step: 1.0)
    )
    loss_fn = loss_fn or nn.functional.cross_entropy
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drop_last and len(train_set) >= batch_size,
    )
    checkpoints = Checkpoints(model, lr, patience=patience, restore_best=restore_best)
    curve = checkpoints.curve
    train_seconds = loss_sum = correct = seen = 0.0
    label = progress if isinstance(progress, str) else f"lr {lr:g}"
    bar = tqdm(total=max_steps, desc=label, disable=not show_progress(progress), leave=False)
    batches = _endless(loader)
    model.train()
    for step in range(1, max_steps + 1):
        x, y = next(batches)
        start = time.perf_counter()
        batch_loss, right = _step(model, optimizer, loss_fn, x, y, device, augment, extra_loss)
        scheduler.step()
        if average is not None:
            _ema_update(average, model, ema_decay(ema, step))
        train_seconds += time.perf_counter() - start
        loss_sum, correct, seen = loss_sum + batch_loss, correct + right, seen + len(y)
        bar.update()
        if step % eval_every and step != max_steps:
            continue
        live = None
        if average is not None:  # score (and keep) the average, then train on from live
            live = _state(model)
            model.load_state_dict(average)
        acc = evaluate(model, val_set, device)
        stop = checkpoints.record(
            step,
            acc,
            seconds=train_seconds,
            train_loss=loss_sum / seen,
            train_acc=correct / seen,
        )
        if live is not None:
            model.load_state_dict(live)
            model.train()
        loss_sum = correct = seen = 0.0
        bar.set_postfix(val=f"{acc:.3f}", best=f"{curve.best_val_acc:.3f}@{curve.best_step}")
        if stop:
            break
    bar.close()
    if average is not None:
        model.load_state_dict(average)  # the last average, unless finish restores the best
    checkpoints.finish(steps_run=step)
    if math.isnan(curve.best_val_acc):
        raise RuntimeError("no validation checkpoint was taken")
    return curve
