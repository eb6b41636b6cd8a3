"""Fine-tuning techniques, one module per family, each findable by its name.

* :mod:`ftcourse.methods.partial` (chapter 3): freezing, top-k blocks, BitFit, sparse masks.
* Chapters 4-5 add ``adapters``, ``prompt``, ``lora`` and ``quant`` beside it.

Every technique works on a plain ``nn.Module``. The names of :mod:`~ftcourse.methods.partial`
are re-exported here, so ``methods.bitfit(model)`` (chapter 3) keeps working.
"""

from . import partial
from .partial import *  # noqa: F403 - the chapter-3 names, listed in partial.__all__
from .partial import __all__ as _partial_all

__all__ = ["partial", *_partial_all]
