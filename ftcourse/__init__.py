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

__version__ = "0.1.0"
