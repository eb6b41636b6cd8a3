"""ftcourse: the companion package of the fine-tuning course.

Modules (imported on demand, so ``import ftcourse`` stays cheap), in the order a reader meets
them:

* :mod:`ftcourse.chapter` - the first and last cell of every notebook (set-up, runtime)
* :mod:`ftcourse.profiles` - run profiles (smoke / cpu / gpu): sizes, steps, seeds per chapter
* :mod:`ftcourse.precision` - the device, and mixed precision only where it computes bf16
* :mod:`ftcourse.data` - datasets (re-exports): ``data.registry`` (entries, ``locate``,
  ``fetch``), ``data.sources``, ``data.cache``, ``data.images``, and ``data.text`` (corpora,
  WordNet, text tasks, facts and instructions)
* :mod:`ftcourse.models` - the model zoo and :func:`ftcourse.models.load`
* :mod:`ftcourse.pretrain` - the recipes that make the zoo's tiny models
* :mod:`ftcourse.train` - seeding, the training / evaluation loop
* :mod:`ftcourse.experiments` - fair comparisons: every arm tuned on validation
* :mod:`ftcourse.studies` - reference studies: stored evidence, intervals, claims
* :mod:`ftcourse.chapters` - one module per chapter experiment (task, arms, study, claims)
* :mod:`ftcourse.methods` - the techniques by name: partial fine-tuning (chapter 3), adapters
  and prompt tuning (4), LoRA (5), quantized weights (4, 5)
* :mod:`ftcourse.lm` - language-model helpers (tokens in, losses and text out; chapters 1, 4-7)
* :mod:`ftcourse.align` - RLHF step by step: feedback, reward model, PPO, DPO (chapter 7)
* :mod:`ftcourse.semi` - semi-supervised fine-tuning (chapter 8)
* :mod:`ftcourse.memory` - parameter counts and memory, measured and estimated (chapter 4)
* :mod:`ftcourse.distributed` - chapters 5 and 6's jobs on several processes: DDP, FSDP2 and
  Accelerate (appendix B1); ``ftcourse/configs`` holds Accelerate's configs (read from the
  checkout: ``make setup`` installs the package editable)
* :mod:`ftcourse.report` - recorded measurements, invariants and findings
* :mod:`ftcourse.plots` - the book's plot types
* :mod:`ftcourse.bench` - measured runtimes, read back
* :mod:`ftcourse.cli` - the ``ftcourse`` command
* :mod:`ftcourse.sphinxext` - the book's Sphinx extension
"""

import os as _os

__version__ = "0.1.0"

# FTCOURSE_PROGRESS=0 (the book build and the tests) turns off every tqdm bar, the Hugging Face
# Trainer's and the datasets library's too: in Jupyter those are widgets, and a page with a
# widget fetches JavaScript from CDNs. The libraries read these variables when they are
# imported, so this comes before any import of them.
if _os.environ.get("FTCOURSE_PROGRESS") == "0":
    for _name in (
        "TQDM_DISABLE",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
        "HF_HUB_DISABLE_PROGRESS_BARS",
    ):  # noqa: E501
        _os.environ.setdefault(_name, "1")
