"""Fine-tuning techniques, one module per family, each findable by its name.

* :mod:`ftcourse.methods.partial` (chapter 3): freezing, top-k blocks, BitFit, sparse masks.
* :mod:`ftcourse.methods.adapters` (chapter 4): Houlsby bottleneck adapters.
* :mod:`ftcourse.methods.prompt` (chapter 4): prompt tuning (soft prompts).
* :mod:`ftcourse.methods.quant` (chapter 4): int8 frozen weights; chapter 5 adds 4-bit NF4.
* :mod:`ftcourse.methods.lora` (chapter 5): LoRA layers, injection by name, merge and unmerge.
* :mod:`ftcourse.methods.registry` (chapters 4-5): every method by name, one entry each;
  ``registry.apply(classifier, "lora", 4)``.

Every technique works on a plain ``nn.Module``. The names of :mod:`~ftcourse.methods.partial`
are re-exported here, so ``methods.bitfit(model)`` (chapter 3) keeps working.
"""

from . import adapters, lora, partial, prompt, quant, registry
from .partial import *  # noqa: F403 - the chapter-3 names, listed in partial.__all__
from .partial import __all__ as _partial_all

__all__ = ["adapters", "lora", "partial", "prompt", "quant", "registry", *_partial_all]
