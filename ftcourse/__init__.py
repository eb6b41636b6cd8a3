"""ftcourse: the companion package of the fine-tuning course.

Modules (imported on demand, so ``import ftcourse`` stays cheap):

* :mod:`ftcourse.profiles` - run profiles (smoke / cpu / gpu), device and seed helpers
* :mod:`ftcourse.data` - the dataset registry and loaders
* :mod:`ftcourse.models` - the model zoo and :func:`ftcourse.models.load`
* :mod:`ftcourse.pretrain` - the recipes that make the zoo's models
* :mod:`ftcourse.train` - the training / evaluation loop
* :mod:`ftcourse.methods` - partial fine-tuning: freezing, BitFit, sparse masks (chapter 3)
* :mod:`ftcourse.report` - recorded measurements and claim checks
* :mod:`ftcourse.plots` - the book's plot types
* :mod:`ftcourse.memory` - parameter counts and memory figures
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
