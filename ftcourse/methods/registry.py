"""Every fine-tuning method of chapters 4 and 5 by name, in one table.

A classifier (:class:`ftcourse.lm.Classifier`: a pretrained ``body`` and a new ``head``) is
turned into one method's trainable model by that method's entry: which weights train, what is
added, what is stored in fewer bits. peft does the same with a table of layer types
(``_create_new_module``); here a new method is one :func:`register` call, and
:func:`ftcourse.lm.peft_classifier`, the notebooks, the reference studies and
``benchmarks/select_lr.py`` all create their arms through :func:`apply`.

    >>> from ftcourse.methods import registry
    >>> registry.names()
    ('full', 'head', 'adapter', 'prompt', 'int8-adapter', 'lora', 'lora-all', 'qlora')
    >>> registry.METHODS["lora"].size
    'rank'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn


class HasBodyAndHead(Protocol):
    body: nn.Module
    head: nn.Module


Apply = Callable[[HasBodyAndHead, int | None, float | None], None]


@dataclass(frozen=True)
class Method:
    """One entry: its name, what its size means (``None``: it takes none), the chapter that
    teaches it, a line of description, and the function that applies it to a classifier in
    place (``(classifier, size, alpha) -> None``)."""

    name: str
    size: str | None
    chapter: int
    description: str
    apply: Apply


METHODS: dict[str, Method] = {}


def register(
    name: str, size: str | None, chapter: int, description: str
) -> Callable[[Apply], Apply]:
    """Decorator: add a method to ``METHODS`` (a name registered twice is an error)."""

    def add(fn: Apply) -> Apply:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered already")
        METHODS[name] = Method(name, size, chapter, description, fn)
        return fn

    return add


def names() -> tuple[str, ...]:
    """The registered methods, in the order the chapters introduce them."""
    return tuple(METHODS)


def apply(
    classifier: HasBodyAndHead, method: str, size: int | None = None, alpha: float | None = None
) -> HasBodyAndHead:
    """Make ``classifier`` train the way ``method`` says (in place; returned for chaining).
    Raises ``ValueError`` for an unknown method or a missing size."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {names()}, not {method!r}")
    entry = METHODS[method]
    if entry.size is not None and not size:
        raise ValueError(f"method {method!r} needs a size ({entry.size})")
    entry.apply(classifier, size, alpha)
    return classifier


# --------------------------------------------------------------------------- the methods


@register("full", None, 2, "every weight trains")
def _full(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
    pass


@register("head", None, 3, "the new head only; the body is frozen")
def _head(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
    from .partial import freeze

    freeze(clf.body)


@register("adapter", "bottleneck", 4, "bottleneck adapters after every attention and MLP")
def _adapter(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
    # Houlsby et al. also train the layer norms; here every pretrained weight stays frozen,
    # so removing the adapters gives the pretrained model back (chapter 4 measures it).
    from . import adapters

    adapters.add_adapters(clf.body, size)
    adapters.train_adapters(clf, extra=[clf.head], norms=False)


@register("prompt", "prompt length", 4, "a soft prompt of learnable vectors; body frozen")
def _prompt(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
    from . import prompt
    from .partial import freeze

    freeze(clf.body)
    clf.body = prompt.PromptTuned(clf.body, size)


@register("int8-adapter", "bottleneck", 4, "adapters on a body stored in int8")
def _int8_adapter(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
    from . import quant

    quant.quantize_model_int8(clf.body)
    _adapter(clf, size, alpha)


def _lora_on(targets: str, nf4: bool = False) -> Apply:
    def add(clf: HasBodyAndHead, size: int | None, alpha: float | None) -> None:
        from . import lora, quant

        if nf4:
            quant.quantize_model_nf4(clf.body, double=True)
        lora.add_lora(clf.body, size, alpha, getattr(lora, targets))
        lora.train_lora(clf, extra=[clf.head])

    return add


register("lora", "rank", 5, "LoRA on the attention's query and value projections")(
    _lora_on("ATTENTION")
)
register("lora-all", "rank", 5, "LoRA on every linear layer of the blocks")(_lora_on("ALL_LINEAR"))
register("qlora", "rank", 5, "LoRA on a body stored in NF4 with double quantization")(
    _lora_on("ATTENTION", nf4=True)
)
