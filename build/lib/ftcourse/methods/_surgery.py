"""Finding modules by name and swapping them in place: what every additive or
reparameterizing method (adapters, int8 layers, LoRA) does to a model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def modules_named(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules whose name is one of ``targets`` or ends with ``"." + target``
    (``"o_proj"`` matches ``model.layers.0.self_attn.o_proj``)."""
    return [
        name
        for name, _ in model.named_modules()
        if name and any(name == t or name.endswith("." + t) for t in targets)
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` was; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
