"""Bottleneck adapters (Houlsby et al., 2019), taught in chapter 4.

A small module inserted after a frozen sublayer: project the sublayer's output down to a few
dimensions, apply a nonlinearity, project back up, and add the result to the output (a residual).
With the up-projection initialised to zero the adapter starts as the identity, so the adapted
model computes exactly what the base model computed until training moves it.

peft has no bottleneck adapter (its "adapters" are LoRA-like), and AdapterHub pins an older
transformers, so this module is the course's implementation; ``tests/test_methods.py`` checks
the identity at initialisation and that removing the adapters restores the base model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._surgery import modules_named, replace_module
from .partial import freeze

# The output projection of each transformer sublayer, for the model families the course uses:
# Llama/Mistral/Qwen (o_proj after attention, down_proj after the MLP), GPT-2 (attn.c_proj and
# mlp.c_proj), BERT-like (attention.output.dense, output.dense) and OPT/BART (out_proj, fc2).
SUBLAYER_OUTPUTS = ("o_proj", "down_proj", "c_proj", "output.dense", "out_proj", "fc2")

__all__ = [
    "SUBLAYER_OUTPUTS",
    "Adapted",
    "BottleneckAdapter",
    "add_adapters",
    "adapter_parameters",
    "remove_adapters",
    "train_adapters",
]


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``: Houlsby et al.'s adapter, identity at initialisation.

    ``down``: ``dim -> bottleneck``, ``up``: ``bottleneck -> dim``, both with biases. The
    down-projection gets a small normal initialisation (std ``init_std``) and the
    up-projection is zero, so ``adapter(h) == h`` exactly at the start (the paper uses a
    near-zero initialisation for both; zero is the limit that makes the identity exact).
    Trainable parameters: ``2 * dim * bottleneck + dim + bottleneck``.
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        activation: type[nn.Module] = nn.GELU,
        init_std: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if bottleneck < 1 or dim < 1:
            raise ValueError(f"dim and bottleneck must be >= 1, not {dim} and {bottleneck}")
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = activation()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.act(self.down(h)))


class Adapted(nn.Module):
    """A frozen sublayer followed by its adapter; ``base`` is the original module, unchanged."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - passes through
        return self.adapter(self.base(*args, **kwargs))


def _output_dim(module: nn.Module) -> int:
    for attr in ("out_features", "nf"):  # nn.Linear; GPT-2's Conv1D
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot tell the output width of {type(module).__name__}")


def add_adapters(
    model: nn.Module,
    bottleneck: int,
    targets: Sequence[str] = SUBLAYER_OUTPUTS,
    activation: type[nn.Module] = nn.GELU,
) -> list[str]:
    """Insert a :class:`BottleneckAdapter` after every module whose name ends with one of
    ``targets`` (by default the output projections of attention and MLP sublayers, the two
    places of Houlsby et al.'s Figure 2). Returns the names of the adapted modules.

    The model is changed in place and nothing is frozen (see :func:`train_adapters`). The
    adapters are created in the dtype and device of the modules they follow.

    Raises:
        ValueError: no module matches ``targets``, or the model already has adapters.
    """
    if any(isinstance(m, Adapted) for m in model.modules()):
        raise ValueError("the model already has adapters; remove_adapters(model) first")
    names = modules_named(model, targets)
    if not names:
        raise ValueError(f"no module of the model is named like {list(targets)}")
    for name in names:
        base = model.get_submodule(name)
        weight = next(t for t in (*base.parameters(), *base.buffers()) if t.is_floating_point())
        adapter = BottleneckAdapter(
            _output_dim(base), bottleneck, activation, device=weight.device, dtype=weight.dtype
        )
        replace_module(model, name, Adapted(base, adapter))
    return names


def remove_adapters(model: nn.Module) -> int:
    """Put the original modules back (the adapters are dropped); returns how many were removed.
    The base weights were never changed by adapter training, so this restores the base model
    bit for bit."""
    removed = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, Adapted):
            replace_module(model, name, module.base)
            removed += 1
    return removed


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every adapter in ``model``."""
    return [p for m in model.modules() if isinstance(m, BottleneckAdapter) for p in m.parameters()]


def train_adapters(
    model: nn.Module, extra: Sequence[nn.Module] = (), norms: bool = True
) -> nn.Module:
    """Freeze ``model``, then unfreeze its adapters, the normalisation layers (with ``norms``,
    as Houlsby et al. do: "the layer normalization parameters are also trained") and the
    ``extra`` modules (e.g. a new classifier head). Returns ``model``."""
    freeze(model)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
    if norms:
        for name, module in model.named_modules():
            if "norm" in type(module).__name__.lower() or name.rsplit(".", 1)[-1].endswith("norm"):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    for module in extra:
        for p in module.parameters():
            p.requires_grad_(True)
    return model
