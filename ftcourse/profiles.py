"""Run profiles, device choice and seeding.

Every notebook reads one profile name (``smoke``, ``cpu`` or ``gpu``) and takes its sizes,
step counts and model ids from :data:`PROFILES`, so that the same code path runs in the test
suite, on a laptop and on a GPU. Introduced in chapter 0 (quickstart); used by every chapter.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

PROFILE_ENV = "FTCOURSE_PROFILE"
DEFAULT_PROFILE = "cpu"


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets for one way of running the course.

    ``settings`` holds per-notebook values (``profile.get("quickstart.labels_per_class")``)
    so that notebooks never branch on the profile name themselves.
    """

    name: str
    description: str
    budget_seconds: int
    num_threads: int | None
    settings: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """Return the setting ``key``; a missing key names the keys that exist."""
        if key not in self.settings:
            known = ", ".join(sorted(self.settings))
            raise KeyError(f"profile {self.name!r} has no setting {key!r}; known: {known}")
        return self.settings[key]


_COMMON: dict[str, Any] = {
    # Chapter 0: tiny-cnn (pretrained on Fashion-MNIST classes 0-4) -> classes 5-9.
    "quickstart.model": "tiny-cnn",
    "quickstart.labels_per_class": 10,
    "quickstart.lr_finetune": 3e-3,
    "quickstart.lr_scratch": 3e-3,
    "quickstart.batch_size": 32,
    # Chapter 3: layer freezing near/far, BitFit, sparse fine-tuning.
    "partial.labels_per_class": 20,
    "partial.lr": 3e-3,
    "partial.sparse_fraction": 0.005,
    # Chapter 2: full fine-tuning, sweep, forgetting, overfitting.
    "full.lrs": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "full.batch_sizes": [8, 32, 128],
    "full.weight_decays": [0.0, 0.05, 0.5],
    "full.few_labels": 10,
    # Chapter 1: self-prediction, contrastive learning, transfer across label budgets.
    "pretraining.labels_per_class": [5, 20, 100],
    "pretraining.simclr_batch": 128,
    "pretraining.probe_labels": 20,
}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="tests and CI: tiny sizes, few steps; only checks that the code path runs",
        budget_seconds=30,
        num_threads=2,
        settings={
            **_COMMON,
            "quickstart.num_epochs": 2,
            "quickstart.seeds": [0],
            "quickstart.test_size": 500,
            "partial.num_epochs": 1,
            "partial.seeds": [0],
            "partial.test_size": 200,
            "full.labels_per_class": 20,
            "full.num_epochs": 1,
            "full.few_epochs": 2,
            "full.seeds": [0],
            "full.test_size": 200,
            "pretraining.lm_steps": 10,
            "pretraining.lm_val_windows": 20,
            "pretraining.simclr_images": 2000,
            "pretraining.simclr_steps": 3,
            "pretraining.seeds": [0],
            "pretraining.epochs": 1,
            "pretraining.test_size": 200,
        },
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop or the book build (2 CPU cores): meaningful results, claims checked",
        budget_seconds=240,
        num_threads=None,
        settings={
            **_COMMON,
            "quickstart.num_epochs": 30,
            "quickstart.seeds": [0, 1, 2, 3, 4],
            "quickstart.test_size": 5000,
            "partial.num_epochs": 15,
            "partial.seeds": [0, 1, 2],
            "partial.test_size": 1000,
            "full.labels_per_class": 100,
            "full.num_epochs": 8,
            "full.few_epochs": 30,
            "full.seeds": [0, 1],
            "full.test_size": 1000,
            "pretraining.lm_steps": 100,
            "pretraining.lm_val_windows": 100,
            "pretraining.simclr_images": 20000,
            "pretraining.simclr_steps": 150,
            "pretraining.seeds": [0, 1, 2],
            "pretraining.epochs": 30,
            "pretraining.test_size": 1000,
        },
    ),
    "gpu": Profile(
        name="gpu",
        description="one GPU: more seeds, the full test set; hub models where reachable",
        budget_seconds=600,
        num_threads=None,
        settings={
            **_COMMON,
            "quickstart.num_epochs": 30,
            "quickstart.seeds": list(range(10)),
            "quickstart.test_size": 5000,
            "partial.num_epochs": 15,
            "partial.seeds": [0, 1, 2, 3, 4],
            "partial.test_size": 5000,
            "full.labels_per_class": 500,
            "full.num_epochs": 10,
            "full.few_epochs": 30,
            "full.seeds": [0, 1, 2],
            "full.test_size": 5000,
            "pretraining.lm_steps": 1000,
            "pretraining.lm_val_windows": 618,
            "pretraining.simclr_images": 60000,
            "pretraining.simclr_steps": 1000,
            "pretraining.seeds": [0, 1, 2, 3, 4],
            "pretraining.epochs": 30,
            "pretraining.test_size": 5000,
        },
    ),
}


def get_profile(name: str | None = None, **overrides: Any) -> Profile:
    """Return the profile ``name`` (default: ``$FTCOURSE_PROFILE`` or ``cpu``).

    Keyword overrides replace single settings, e.g. ``get_profile("cpu", **{"x.y": 3})``.
    """
    name = name or os.environ.get(PROFILE_ENV, DEFAULT_PROFILE)
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if overrides:
        unknown = set(overrides) - set(profile.settings)
        if unknown:
            raise KeyError(f"unknown settings {sorted(unknown)} for profile {name!r}")
        profile = replace(profile, settings={**profile.settings, **overrides})
    if profile.num_threads:
        torch.set_num_threads(profile.num_threads)
    return profile


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks cuda > mps > cpu; any other string is passed to ``torch.device``."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way.

    Pass the generator to data loaders and samplers so that data order is reproducible.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
