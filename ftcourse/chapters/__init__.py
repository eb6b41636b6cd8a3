"""One module per chapter experiment: its task, its arms, its reference study and its claims.

The notebook's live run and the stored reference study import the same module, so the page
compares like with like (:mod:`ftcourse.studies`). Modules are named after the chapter's
section of the profile table (``chapter.start(section="quickstart")``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# study name (the notebook's number) -> module
STUDIES = {
    "00": "quickstart",
    "01": "pretraining",
    "02": "full",
    "03": "partial",
    "04": "additive",
    "05": "lora",
    "06": "instruct",
    "08": "semi",
    "smollm2": "smollm2",  # chapters 4 and 5 on SmolLM2-135M
    "widths": "widths",  # chapters 4 and 5 on tiny-lm at other widths
}


def module_for(chapter: str) -> ModuleType:
    """The chapter module of a study: ``"00"``, ``"0"`` or ``"quickstart"``."""
    name = STUDIES.get(chapter.zfill(2) if chapter.isdigit() else chapter, chapter)
    if name not in STUDIES.values():
        known = ", ".join(f"{k} ({v})" for k, v in STUDIES.items())
        raise KeyError(f"no reference study for chapter {chapter!r}; known: {known}")
    return importlib.import_module(f"{__name__}.{name}")
