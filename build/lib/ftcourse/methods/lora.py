"""LoRA, low-rank adaptation (Hu et al., 2022); chapter 5 teaches it.

A frozen linear layer ``W`` gets a trainable low-rank update ``ΔW = B A`` (``A [r, in]``,
``B [out, r]``), scaled by ``alpha / r``: ``y = W x + (alpha / r) B A x``. ``B`` starts at zero,
so the model starts exactly as the base model; only ``A`` and ``B`` train. After training,
``ΔW`` can be merged into ``W`` (inference then costs what the base model costs) and unmerged
again. Same initialisation and arithmetic as peft's ``LoraConfig`` (``tests/test_lora.py``
checks equal outputs for equal ``A`` and ``B``).

QLoRA (Dettmers et al., 2023) is the same LoRA on a base layer stored in 4 bits
(:class:`ftcourse.methods.quant.NF4Linear`). Merging into such a layer cannot be undone exactly:
the sum is rounded to 16 levels again, so :meth:`LoRALinear.merge` refuses and
:func:`merge_into_quantized` does it on request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._surgery import modules_named, replace_module
from .partial import freeze
from .quant import NF4Linear

__all__ = [
    "ALL_LINEAR",
    "ATTENTION",
    "LoRALinear",
    "add_lora",
    "load_lora",
    "lora_parameter_count",
    "lora_parameters",
    "lora_state_dict",
    "merge_into_quantized",
    "merge_lora",
    "remove_lora",
    "train_lora",
    "unmerge_lora",
]


ATTENTION = ("q_proj", "v_proj")
"""The LoRA paper's default targets, the attention's query and value projections."""
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Llama-style block (QLoRA's choice)."""


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` around a frozen ``nn.Linear``.

    ``A`` is initialised like a linear layer (Kaiming-uniform, as peft does), ``B`` with zeros.
    :meth:`merge` adds ``scale * B @ A`` to the base weight (in place) and the forward pass then
    skips the low-rank path; :meth:`unmerge` subtracts it again.
    """

    def __init__(
        self, base: nn.Linear | NF4Linear, r: int, alpha: float | None = None, dropout: float = 0.0
    ):
        super().__init__()
        if r < 1:
            raise ValueError(f"the rank r must be >= 1, not {r}")
        self.base = base
        self.r = r
        self.scale = (alpha if alpha is not None else r) / r
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self) -> Tensor:
        """``ΔW = scale * B @ A``, shaped like the base weight ``[out, in]``."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        if not isinstance(self.base, nn.Linear):
            raise TypeError(
                "the base layer is quantized: merging would round the update to its levels and "
                "could not be undone; use lora.merge_into_quantized(model) if that is what you want"
            )
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scale * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    def extra_repr(self) -> str:
        return f"r={self.r}, scale={self.scale:g}, merged={self.merged}"


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float | None = None,
    targets: Sequence[str] = ATTENTION,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every ``nn.Linear`` named like one of ``targets`` in a :class:`LoRALinear`
    (default: the attention's query and value projections, the LoRA paper's choice). Returns
    the wrapped names. Nothing is frozen here (see :func:`train_lora`).

    Raises:
        ValueError: no linear layer matches ``targets``, or the model already has LoRA layers.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA layers; remove_lora(model) first")
    names = _linear_names(model, targets)
    if not names:
        raise ValueError(f"no nn.Linear of the model is named like {list(targets)}")
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return names


def _linear_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The plain or NF4 linear layers named like one of ``targets``."""
    return [
        n
        for n in modules_named(model, targets)
        if type(model.get_submodule(n)) in (nn.Linear, NF4Linear)
    ]


def lora_parameter_count(model: nn.Module, r: int, targets: Sequence[str]) -> int:
    """How many parameters :func:`add_lora` with rank ``r`` on ``targets`` would add:
    ``r * (in + out)`` per wrapped layer (the model is not changed)."""
    layers = [model.get_submodule(n) for n in _linear_names(model, targets)]
    return sum(r * (m.in_features + m.out_features) for m in layers)


def _lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``A`` and ``B`` of the model."""
    return [p for m in _lora_layers(model) for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA factors, by their names in ``model`` (what a LoRA file stores; save it
    with ``safetensors.torch.save_file``)."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.endswith(("lora_A", "lora_B"))
    }


@torch.no_grad()
def load_lora(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy LoRA factors saved by :func:`lora_state_dict` into the LoRA layers of ``model``
    (swapping tasks on one base model).

    Raises:
        KeyError: the names do not match the model's LoRA layers.
    """
    own = {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise KeyError(f"LoRA names differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state.items():
        own[k].copy_(v)


def train_lora(model: nn.Module, extra: Sequence[nn.Module] = ()) -> nn.Module:
    """Freeze ``model``, then unfreeze its LoRA factors and the ``extra`` modules (e.g. a new
    head). Returns ``model``."""
    freeze(model)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    for module in extra:
        for p in module.parameters():
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA update into its base weight; returns how many layers."""
    layers = _lora_layers(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Subtract every merged LoRA update again; returns how many layers."""
    layers = _lora_layers(model)
    for layer in layers:
        layer.unmerge()
    return len(layers)


@torch.no_grad()
def merge_into_quantized(model: nn.Module) -> int:
    """Merge every LoRA update whose base layer is quantized
    (:class:`~ftcourse.methods.quant.NF4Linear`) by re-quantizing ``W + ΔW``, and put the base
    layer back in the LoRA layer's place. The sum is rounded to the 16 levels again: an update
    that is small compared with the gap between two levels largely rounds away (chapter 5
    measures how much). Returns how many layers."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear) and isinstance(module.base, NF4Linear):
            module.base.requantize(module.base.weight + module.delta())
            replace_module(model, name, module.base)
            merged += 1
    return merged


def remove_lora(model: nn.Module, merge: bool = False) -> int:
    """Put the base linear layers back, with the update merged into them (``merge=True``) or
    dropped (the base weights as they were; up to fp32 rounding where the update had been
    merged and is subtracted again). Returns how many layers."""
    removed = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            if merge:
                module.merge()
            else:
                module.unmerge()
            replace_module(model, name, module.base)
            removed += 1
    return removed
