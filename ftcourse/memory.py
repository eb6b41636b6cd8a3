"""Parameter counts and memory figures.

Chapter 0 prints them for the tiny models; chapters 3-5 compare methods by trainable
parameters and memory.
"""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); optionally only trainable ones."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def parameter_bytes(model: nn.Module) -> int:
    """Bytes taken by the model's parameters and buffers in their current dtypes."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
