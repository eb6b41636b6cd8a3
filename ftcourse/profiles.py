"""Run profiles: the table of sizes, step counts and models per chapter and profile.

Every notebook reads one profile name (``smoke``, ``cpu`` or ``gpu``) and takes its sizes,
step counts and model ids from :data:`PROFILES`, so that the same code path runs in the test
suite, on a laptop and on a GPU. Introduced in chapter 0 (quickstart); used by every chapter.
The device choice is :func:`ftcourse.precision.resolve_device`; seeding is
:func:`ftcourse.train.seed_everything`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

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

    def section(self, prefix: str) -> dict[str, Any]:
        """The settings of one notebook, without their prefix: ``section("quickstart")``."""
        out = {
            k.split(".", 1)[1]: v for k, v in self.settings.items() if k.startswith(prefix + ".")
        }
        if not out:
            raise KeyError(f"profile {self.name!r} has no settings starting with {prefix + '.'!r}")
        return out

    def get(self, key: str) -> Any:
        """Return the setting ``key``; a missing key names the keys that exist."""
        if key not in self.settings:
            known = ", ".join(sorted(self.settings))
            raise KeyError(f"profile {self.name!r} has no setting {key!r}; known: {known}")
        return self.settings[key]


# Every setting is given for every profile (a test checks it). One dict per chapter and
# profile keeps a chapter's choices side by side; `_table` merges them.
_QUICKSTART = {
    "smoke": {
        "model": "tiny-cnn",
        "labels_per_class": 2,
        "val_per_class": 2,
        "lrs": [3e-3],
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 8,
        "seeds": [0],
        "test_size": 40,
        "untuned_epochs": 1,
    },
    "cpu": {
        "model": "tiny-cnn",
        "labels_per_class": 10,
        "val_per_class": 40,
        # The grid a run tunes over when the reference study has no rate for its model and
        # budget; for tiny-cnn at this budget the rates come from the study (its CSV).
        "lrs": [1e-2, 3e-2, 1e-1, 3e-1],
        "max_steps": 400,
        "eval_every": 20,
        "batch_size": 32,
        # a glimpse (the reference study has 10 seeds). 4 seeds took 281 s on a 2-core AMD
        # EPYC with AVX2 only (the two arms 146 s of it, the ImageNet probe 55 s); 3 fit 4 min
        "seeds": [0, 1, 2],
        "test_size": 1000,
        "untuned_epochs": 30,
    },
    "gpu": {
        "model": "efficientnet-lite0",
        "labels_per_class": 10,
        "val_per_class": 40,
        "lrs": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
        "max_steps": 300,
        "eval_every": 20,
        "batch_size": 32,
        "seeds": [0, 1, 2, 3, 4],
        "test_size": 5000,
        "untuned_epochs": 30,
    },
}
_QUICKSTART_COMMON = {
    "probe_model": "efficientnet-lite0",
    "untuned_lr": 3e-3,  # the first edition's recipe: this lr, fixed epochs, for both arms
    "patience": None,
}

# Chapters 1-3: filled in below (kept in the old shape until each chapter is rewritten).
_PRETRAINING = {
    "smoke": {
        "model": "tiny-cnn",
        "lm_steps": 3,
        "lm_val_windows": 10,
        "simclr_images": 2000,
        "simclr_steps": 3,
        "probe_draws": 2,
        "probe_test_size": 200,
        "labels_per_class": [2, 4],
        "val_per_class": 2,
        "lrs": [3e-3],
        "max_steps": [4, 4],
        "batch_size": 8,
        "seeds": [0],
        "test_size": 100,
        "untuned_epochs": 1,
    },
    "cpu": {
        "model": "tiny-cnn",
        "lm_steps": 40,
        "lm_val_windows": 100,
        "simclr_images": 20000,
        "simclr_steps": 60,
        "probe_draws": 5,
        "probe_test_size": 2000,
        "labels_per_class": [5, 20, 100],
        "val_per_class": 40,
        # The grid a run tunes over when the reference study has no choice for its model and
        # budget; with tiny-cnn and the study's budgets (ftcourse.chapters.pretraining) the
        # rates come from the study (benchmarks/results/studies/01).
        "lrs": [1e-2, 3e-2, 1e-1, 3e-1],
        "max_steps": [200, 300, 300],
        "batch_size": 32,
        "seeds": [0, 1],  # a glimpse within 4 minutes; the reference study has 10
        "test_size": 1000,
        "untuned_epochs": 30,
    },
    "gpu": {
        "model": "efficientnet-lite0",
        "lm_steps": 1000,
        "lm_val_windows": 618,
        "simclr_images": 60000,
        "simclr_steps": 400,
        "probe_draws": 5,
        "probe_test_size": 5000,
        "labels_per_class": [5, 20, 100],
        "val_per_class": 40,
        "lrs": [1e-4, 3e-4, 1e-3, 3e-3],
        "max_steps": [200, 300, 500],
        "batch_size": 32,
        "seeds": [0, 1, 2, 3, 4],
        "test_size": 5000,
        "untuned_epochs": 30,
    },
}
_PRETRAINING_COMMON = {"simclr_batch": 128, "probe_labels": 20, "eval_every": 20, "patience": None}
_FULL = {
    "smoke": {
        "model": "tiny-cnn",
        "labels_per_class": 4,
        "val_per_class": 2,
        "lrs": [1e-4, 1e-2],
        "scratch_lrs": [3e-3],
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 8,
        "seeds": [0],
        "test_size": 100,
        "refit_labels": 10,
    },
    "cpu": {
        "model": "tiny-cnn",
        "labels_per_class": 100,
        "val_per_class": 40,
        # the ends of the study's sweep and its middle (the study runs every 1-3-10 rate)
        "lrs": [1e-4, 1e-3, 1e-2],
        "scratch_lrs": [3e-3, 1e-2, 3e-2],
        "max_steps": 200,  # the reference study's budget (ftcourse.chapters.full)
        "eval_every": 20,
        "batch_size": 32,
        "seeds": [0, 1, 2],
        "test_size": 1000,
        "refit_labels": 100,
    },
    "gpu": {
        "model": "efficientnet-lite0",
        "labels_per_class": 100,
        "val_per_class": 40,
        "lrs": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
        "scratch_lrs": [1e-3, 3e-3, 1e-2],
        "max_steps": 300,
        "eval_every": 20,
        "batch_size": 32,
        "seeds": [0, 1, 2],
        "test_size": 2000,
        "refit_labels": 200,
    },
}
_FULL_COMMON = {"patience": None, "l2sp_alphas": [0.01, 1.0]}
_PARTIAL = {
    "smoke": {
        "model": "tiny-cnn",
        "labels_per_class": 4,
        "val_per_class": 2,
        "lrs": [3e-3],
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 8,
        "seeds": [0, 1],
        "test_size": 50,
    },
    "cpu": {
        "model": "tiny-cnn",
        "labels_per_class": 20,
        "val_per_class": 40,
        "lrs": [3e-3, 1e-2, 3e-2],
        "max_steps": 150,  # the reference study's budget (ftcourse.chapters.partial)
        "inner_ks": [2],  # blocks unfrozen between the head alone and all (None: every k)
        "eval_every": 10,
        "batch_size": 32,
        "seeds": [0, 1, 2],
        "test_size": 500,
    },
    "gpu": {
        "model": "efficientnet-lite0",
        "labels_per_class": 20,
        "val_per_class": 40,
        "lrs": [3e-4, 1e-3, 3e-3, 1e-2],
        "max_steps": 150,
        "eval_every": 15,
        "batch_size": 32,
        "seeds": [0, 1, 2],
        "test_size": 500,
    },
}
# The far target: five MNIST digits, as many classes as the near target (Fashion 5-9).
_PARTIAL_COMMON = {
    "sparse_fraction": 0.005,
    "far_classes": [0, 1, 2, 3, 4],
    "patience": None,
    "inner_ks": None,  # every k in smoke and gpu; the cpu profile sets its own
}

# Appendix A1: the foundation model. Two feasibility measurements, every arm tuned on
# validation: gloss classification (probe and fine-tuning, tiny-lm vs random init) and
# knowledge unlocked by a short SFT (held-out known vs unknown words, tiny-lm vs random init).
_FOUNDATION = {
    "smoke": {
        "model": "tiny-lm",
        "labels_per_class": [2],
        "val_per_class": 4,
        "test_per_class": 5,
        "lrs": [1e-3],
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 8,
        "seeds": [0],
        "sft_lrs": [1e-3],
        "sft_max_steps": 4,
        "sft_eval_every": 2,
        "sft_val_words": 8,
        "sft_test_words": 8,
        "lr_selected": None,  # None: tune inline on the first seed
        "probe_words": 20,
        "ppl_windows": 20,
    },
    "cpu": {
        "model": "tiny-lm",
        "labels_per_class": [8, 64],
        "val_per_class": 20,
        "test_per_class": 100,
        "lrs": [3e-4, 1e-3, 3e-3, 1e-2],
        "max_steps": 80,
        "eval_every": 10,
        "batch_size": 32,
        "seeds": [0, 1, 2],
        "sft_lrs": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
        "sft_max_steps": 150,
        "sft_eval_every": 25,
        "sft_val_words": 72,
        "sft_test_words": 168,
        "probe_words": None,
        "ppl_windows": None,
        # Chosen on validation by `benchmarks/select_lr.py --notebook A1_foundation_model`
        # (evidence: benchmarks/results/lr_selection_A1.csv, plotted in the notebook).
        # Gloss: one rate per label budget; unlock: random init scores <= 0.02 at every rate.
        "lr_selected": {
            "gloss": {"fine-tune": [1e-3, 3e-3], "scratch": [3e-3, 1e-3]},
            "unlock": {"pretrained": 1e-4, "random init": 3e-3},
        },
    },
    "gpu": {
        "model": "tiny-lm",
        "labels_per_class": [8, 32, 128],
        "val_per_class": 40,
        "test_per_class": 100,
        "lrs": [1e-4, 3e-4, 1e-3, 3e-3],
        "max_steps": 300,
        "eval_every": 25,
        "batch_size": 32,
        "seeds": [0, 1, 2, 3, 4],
        "sft_lrs": [3e-5, 1e-4, 3e-4, 1e-3],
        "sft_max_steps": 400,
        "sft_eval_every": 25,
        "sft_val_words": 72,
        "sft_test_words": 168,
        "probe_words": None,
        "ppl_windows": None,
        "lr_selected": None,
    },
}
_FOUNDATION_COMMON = {"patience": None, "relation": "hypernym", "max_length": 32}

# Chapter 4: memory of full fine-tuning, bottleneck adapters, prompt tuning, on the gloss task
# (tiny-lm, A1's task) with one label budget; every arm tuned on validation.
_ADDITIVE = {
    "smoke": {
        "model": "tiny-lm",
        "labels_per_class": 2,
        "val_per_class": 4,
        "test_per_class": 5,
        "max_steps": 4,
        "eval_every": 2,
        "seeds": [0],
        "adapter_sizes": [2, 8],
        "prompt_lengths": [1, 4],
        "lrs": {"full": [1e-3], "head": [1e-2], "adapter": [3e-3], "prompt": [1e-2]},
        "lr_selected": None,  # None: tune inline on the first seed
        "memory_settings": [[1, 16], [4, 32]],
        "timing_steps": 2,
        "ppl_windows": 8,
        "author_per_class": 4,
        "whatif_models": ["tiny-lm"],
    },
    "cpu": {
        "model": "tiny-lm",
        "labels_per_class": 64,
        "val_per_class": 20,
        "test_per_class": 100,
        "max_steps": 100,
        "eval_every": 20,
        "seeds": [0, 1, 2],
        "adapter_sizes": [2, 8, 32],
        "prompt_lengths": [1, 4, 16],
        # A first grid one step lower chose the top rate for full, adapter 2 and prompt 1: the
        # grids were moved up so that every choice can be an interior one.
        "lrs": {
            "full": [3e-4, 1e-3, 3e-3, 1e-2],
            "head": [3e-3, 1e-2, 3e-2, 1e-1],
            "adapter": [3e-3, 1e-2, 3e-2, 1e-1],
            "prompt": [1e-2, 3e-2, 1e-1, 3e-1],
        },
        # Chosen on validation by `benchmarks/select_lr.py --notebook 04_additive` (evidence:
        # benchmarks/results/lr_selection_04.csv, plotted in the notebook); one rate per arm.
        "lr_selected": {
            "gloss/full": 3e-3,
            "gloss/head": 3e-2,
            "gloss/adapter 2": 3e-2,
            "gloss/adapter 8": 1e-2,
            "gloss/adapter 32": 1e-2,
            "gloss/prompt 1": 1e-1,
            "gloss/prompt 4": 3e-2,
            "gloss/prompt 16": 1e-2,
            "gloss/int8 adapter 8": 1e-2,
            "author/prompt 4": 1e-1,
        },
        "memory_settings": [[1, 32], [8, 32], [8, 128], [16, 128]],
        "timing_steps": 12,
        "ppl_windows": 100,
        "author_per_class": 100,
        "whatif_models": ["smollm2-135m", "llama-7b"],
    },
    "gpu": {
        "model": "smollm2-135m",
        "labels_per_class": 64,
        "val_per_class": 20,
        "test_per_class": 100,
        # Not run yet on a GPU (no device was lent when chapter 4 was written): tuned inline,
        # 10 arms x 3 rates on the first seed; sized to fit about 10 minutes on one H100.
        "max_steps": 200,
        "eval_every": 25,
        "seeds": [0, 1, 2],
        "adapter_sizes": [4, 16, 64],
        "prompt_lengths": [4, 16, 32],
        "lrs": {
            "full": [1e-5, 3e-5, 1e-4],
            "head": [1e-3, 3e-3, 1e-2],
            "adapter": [3e-4, 1e-3, 3e-3],
            "prompt": [3e-3, 1e-2, 3e-2],
        },
        "lr_selected": None,
        "memory_settings": [[1, 128], [8, 128], [8, 512], [32, 512]],
        "timing_steps": 20,
        "ppl_windows": 200,
        "author_per_class": 100,
        "whatif_models": ["smollm2-135m", "llama-7b"],
    },
}
_ADDITIVE_COMMON = {"patience": None, "batch_size": 16, "max_length": 32}
# The soft-prompt length of the two tasks that share one frozen model (section 5): one of
# prompt_lengths, so the gloss task's run is reused.
# int8_size: the bottleneck of the reference adapter (the int8 backbone, the timing, what PEFT
# protects), one of adapter_sizes.
_ADDITIVE_SWAP = {"smoke": (1, 8), "cpu": (4, 8), "gpu": (16, 16)}
for _profile, (_length, _size) in _ADDITIVE_SWAP.items():
    _ADDITIVE[_profile].update(swap_length=_length, int8_size=_size)

# Chapter 5: LoRA (rank, placement, merging, swapping) and QLoRA, on chapter 4's gloss task and
# label budget; every arm tuned on validation. The real-model run (SmolLM2-135M, LoRA on
# Shakespeare's style) has its own small budget.
_LORA = {
    "smoke": {
        "model": "tiny-lm",
        "labels_per_class": 2,
        "val_per_class": 4,
        "test_per_class": 5,
        "max_steps": 4,
        "eval_every": 2,
        "seeds": [0],
        "ranks": [1, 4],
        "placement_rank": 1,
        "qlora_rank": 4,
        "swap_rank": 4,
        "lrs": {"full": [1e-3], "lora": [1e-2]},
        "lr_selected": None,  # None: tune inline on the first seed
        "memory_setting": [4, 32],
        "timing_steps": 2,
        "merge_timing": [4, 32, 2],
        "author_per_class": 4,
        "real_model": "tiny-lm",
        "real_steps": 2,
        "real_batch": 2,
        "real_context": 32,
        "real_lr": 1e-3,
        "real_eval_windows": 4,
        "real_qlora": True,  # the peft + bitsandbytes 4-bit run of section 6 (code path only)
    },
    "cpu": {
        "model": "tiny-lm",
        "labels_per_class": 64,
        "val_per_class": 20,
        "test_per_class": 100,
        "max_steps": 100,
        "eval_every": 20,
        "seeds": [0, 1, 2],
        # Three ranks 16x apart: 3 seeds x 8 arms x 100 steps is most of the 4-minute budget.
        "ranks": [1, 4, 16],
        # LoRA on every linear layer at this rank, against query + value LoRA at the rank of
        # the sweep with the nearest parameter count (16 for tiny-lm: 8,192 vs 7,392 per
        # block, so all-linear has 10 % fewer; an exact match, rank 24 vs 5, costs one arm).
        "placement_rank": 3,
        "qlora_rank": 4,
        "swap_rank": 4,
        "lrs": {"full": [1e-3, 3e-3, 1e-2], "lora": [3e-3, 1e-2, 3e-2, 1e-1]},
        # Chosen on validation by `benchmarks/select_lr.py --notebook 05_lora` (evidence:
        # benchmarks/results/lr_selection_05.csv, plotted in the notebook); every choice is an
        # interior point of its grid.
        "lr_selected": {
            "gloss/full": 3e-3,
            "gloss/lora 1": 1e-2,
            "gloss/lora 4": 1e-2,
            "gloss/lora 16": 1e-2,
            "gloss/lora-all 3": 1e-2,
            "gloss/qlora 4": 1e-2,
            "author/lora 4": 1e-2,
        },
        "memory_setting": [8, 128],
        "timing_steps": 12,
        "merge_timing": [16, 128, 10],
        "author_per_class": 100,
        "real_model": "smollm2-135m",
        "real_steps": 20,
        "real_batch": 4,
        "real_context": 64,
        "real_lr": 1e-3,
        "real_eval_windows": 16,
        "real_qlora": False,  # no room in the 4-minute budget for a second SmolLM2 run
    },
    "gpu": {
        "model": "smollm2-135m",
        "labels_per_class": 64,
        "val_per_class": 20,
        "test_per_class": 100,
        # Not run yet on a GPU (no device was lent when chapter 5 was written): sized, not
        # measured; tuned inline on the first seed.
        "max_steps": 200,
        "eval_every": 25,
        "seeds": [0, 1, 2],
        "ranks": [1, 2, 4, 8, 16, 64],
        # SmolLM2: all-linear rank 3 has 30,528 LoRA parameters per block, query + value rank 16
        # has 30,720
        "placement_rank": 3,
        "qlora_rank": 16,
        "swap_rank": 16,
        "lrs": {"full": [1e-5, 3e-5, 1e-4], "lora": [1e-4, 3e-4, 1e-3, 3e-3]},
        "lr_selected": None,
        "memory_setting": [8, 512],
        "timing_steps": 20,
        "merge_timing": [32, 512, 20],
        "author_per_class": 100,
        "real_model": "smollm2-135m",
        "real_steps": 300,
        "real_batch": 16,
        "real_context": 256,
        "real_lr": 3e-4,
        "real_eval_windows": 64,
        "real_qlora": True,
    },
}
_LORA_COMMON = {
    "patience": None,
    "batch_size": 16,
    "max_length": 32,
    "lora_alpha": 8,
    "real_rank": 8,
}

# Chapter 6: instruction tuning of tiny-lm on the course's instruction tasks (synthetic tasks
# and questions about the facts table); every arm tuned on validation.
_INSTRUCT = {
    "smoke": {
        "model": "tiny-lm",
        "seeds": [0],
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 8,
        "val_items": 14,  # None: the whole validation split
        "test_per_task": 4,  # None: every test item (fact tasks: known and unknown words)
        "lrs": {"full": [1e-3], "unmasked": [1e-3], "scratch": [3e-3], "lora": [1e-2]},
        "lr_selected": None,  # None: tune inline on the first seed
        "no_end_seeds": [0],
        "ppl_windows": 4,
        # smoke only checks the code path: the "real model" cells run on tiny-lm (loading
        # SmolLM2 took a quarter of the 30-second budget)
        "real_model": "tiny-lm",
        "real_per_task": 1,
        "real_max_new_tokens": 16,
        "lima_share": 0.25,
        # the prompting baseline: worked examples of the same task in plain text (the longest
        # prompts of 4 examples take about 140 of tiny-lm's 256 positions)
        "few_shot_k": 4,
    },
    "cpu": {
        "model": "tiny-lm",
        "seeds": [0, 1, 2],
        # 120 steps of 16 pairs (1.4 passes over the training items): 14 runs must fit the
        # 4-minute budget at 50-60 ms per step on 2 cores (200 steps took 236 s in all, 150
        # steps 224 s); validation on 200 items at steps 40, 80 and 120.
        "max_steps": 120,
        "eval_every": 40,
        "batch_size": 16,
        "val_items": 200,
        # at most 120 held-out items per task (fact tasks: known and unknown words each)
        "test_per_task": 120,
        # a first grid (full 3e-4..3e-3, LoRA 3e-3..3e-2) chose its lowest rates: moved down;
        # with 150 steps the loss on every token prefers a higher rate than SFT: its own grid
        "lrs": {
            "full": [1e-4, 3e-4, 1e-3],
            "unmasked": [3e-4, 1e-3, 3e-3],
            "scratch": [1e-3, 3e-3, 1e-2],
            "lora": [1e-3, 3e-3, 1e-2],
        },
        # Chosen on validation by `benchmarks/select_lr.py --notebook 06_instruction_tuning`
        # (evidence: benchmarks/results/lr_selection_06.csv, plotted in the notebook); every
        # choice is an interior point of its grid.
        "lr_selected": {
            "SFT": 3e-4,
            "loss on every token": 1e-3,
            "random init": 3e-3,
            "LoRA": 3e-3,
        },
        "no_end_seeds": [0],
        "ppl_windows": 64,
        "real_model": "smollm2-135m",
        "real_per_task": 2,
        "real_max_new_tokens": 40,
        "lima_share": 0.25,
        "few_shot_k": 4,
    },
    "gpu": {
        # Not run yet on a GPU (no device was lent when chapter 6 was written): sized, not
        # measured; tuned inline on the first seed. MODEL=smollm2-135m runs every cell on the
        # real instruct model.
        "model": "tiny-lm",
        "seeds": [0, 1, 2, 3, 4],
        "max_steps": 600,
        "eval_every": 50,
        "batch_size": 32,
        "val_items": None,
        "test_per_task": None,
        "lrs": {
            "full": [1e-4, 3e-4, 1e-3, 3e-3],
            "unmasked": [1e-4, 3e-4, 1e-3, 3e-3],
            "scratch": [1e-3, 3e-3, 1e-2],
            "lora": [3e-3, 1e-2, 3e-2],
        },
        "lr_selected": None,
        "no_end_seeds": [0, 1, 2],
        "ppl_windows": 256,
        "real_model": "smollm2-135m",
        "real_per_task": 20,
        "real_max_new_tokens": 48,
        "lima_share": 0.25,
        "few_shot_k": 4,
    },
}
_INSTRUCT_COMMON = {
    "patience": None,
    "max_new_tokens": 12,  # every answer of the tasks fits in 12 tokens
    "stop_max_new_tokens": 24,
    "lora_rank": 8,
    "lora_alpha": 16,
}

# Chapter 7: RLHF on tiny-lm. An SFT model (chapter 6's recipe, a share of its answers polite),
# a simulated rater, a reward model, PPO with a KL sweep, DPO and TRL's GRPO.
_RLHF = {
    "smoke": {
        "model": "tiny-lm",
        "seeds": [0],
        # enough SFT for a few right answers, or the rater finds nothing to prefer
        "sft_lr": 3e-3,
        "sft_steps": 30,
        "train_items": 32,  # None: every training item of the tasks (else spread over them)
        "val_items": 24,
        "test_per_task": 6,
        "samples_per_prompt": 2,
        "rm_steps": 3,
        "rm_eval_every": 3,
        "ppo_kl_coefs": [0.0, 1.0],
        "ppo_steps": 2,
        "prompts_per_step": 2,
        "group_size": 2,
        "eval_every": 2,
        "eval_items": 6,
        "dpo_steps": 2,
        "dpo_lrs": [1e-4],
        "best_of_n": 2,
    },
    "cpu": {
        "model": "tiny-lm",
        "seeds": [0, 1, 2],
        # chapter 6's SFT recipe (lr 3e-4 chosen on validation there, 120 steps of 16)
        "sft_lr": 3e-4,
        "sft_steps": 120,
        "train_items": None,
        "val_items": None,
        "test_per_task": 40,  # 154 held-out questions over the four tasks
        "samples_per_prompt": 4,  # two pairs per training prompt
        "rm_steps": 100,
        "rm_eval_every": 25,
        # 9 PPO runs of 20 steps (8 prompts x 4 samples) at ~0.4 s per step on 2 cores
        "ppo_kl_coefs": [0.0, 0.3, 1.0],
        "ppo_steps": 20,
        "prompts_per_step": 8,
        "group_size": 4,
        "eval_every": 5,
        "eval_items": 64,
        "dpo_steps": 40,
        # chosen inline on the first seed, on validation (a first grid 1e-4..1e-3 chose 1e-4)
        "dpo_lrs": [3e-5, 1e-4, 3e-4],
        "best_of_n": 8,
    },
    "gpu": {
        # Not run yet on a GPU (no device was lent when chapter 7 was written): sized, not
        # measured.
        "model": "tiny-lm",
        "seeds": [0, 1, 2, 3, 4],
        "sft_lr": 3e-4,
        "sft_steps": 300,
        "train_items": None,
        "val_items": None,
        "test_per_task": None,
        "samples_per_prompt": 8,
        "rm_steps": 400,
        "rm_eval_every": 50,
        "ppo_kl_coefs": [0.0, 0.1, 0.3, 1.0, 3.0],
        "ppo_steps": 100,
        "prompts_per_step": 32,
        "group_size": 8,
        "eval_every": 10,
        "eval_items": None,
        "dpo_steps": 300,
        "dpo_lrs": [3e-5, 1e-4, 3e-4, 1e-3],
        "best_of_n": 16,
    },
}
_RLHF_COMMON = {
    # the tasks chapter 6's SFT model learned (exact match above 0.2); first, repeat and next
    # stayed near 0, so a rater would find nothing right to prefer there
    "tasks": ["count", "hypernym", "category", "antonym"],
    "batch_size": 16,
    "greeting_share": 0.3,  # share of SFT answers that open with a greeting
    "label_noise": 0.2,  # share of the rater's labels flipped: raters disagree
    "max_new_tokens": 16,
    "rm_lr": 3e-4,
    "rm_batch_size": 32,
    "ppo_lr": 1e-4,
    "ppo_epochs": 2,
    "ppo_clip": 0.2,
    "ppo_max_new_tokens": 12,
    "dpo_beta": 0.1,  # the DPO paper's typical value
    "dpo_sft_weight": 1.0,
}

# Chapter 8: semi-supervised fine-tuning. The validation split is as small as the training
# split (val_per_class = labels_per_class): with 2 labels per class, nobody has 40 more.
_SEMI = {
    "smoke": {
        "model": "tiny-cnn",
        "labels_per_class": [2, 5],
        "max_steps": [4, 4],
        "eval_every": 2,
        "seeds": [0],
        "batch_size": 10,  # 25 labelled images in batches of 8 would leave a batch of one
        "test_size": 100,
        "unlabelled": 300,
        "rounds": 1,
        "unlabelled_batch": 16,
        "simclr_steps": 2,
        "simclr_batch": 32,
        "lrs": [3e-2],
        "lr_selected": {},
        # a 4-step model may be sure of nothing: select every image, so each path runs
        "threshold": 0.0,
        "low_threshold": 0.0,
    },
    "cpu": {
        "model": "tiny-cnn",
        "labels_per_class": [2, 5, 20],
        "max_steps": [50, 70, 100],
        "eval_every": 10,
        "seeds": [0, 1, 2],
        "batch_size": 16,  # 32 made the notebook too slow for 4 minutes on an AVX2 CPU
        "test_size": 1000,
        "unlabelled": 4000,
        "rounds": 2,
        "unlabelled_batch": 32,  # FixMatch's 7 per labelled image does not fit: 2 here
        "simclr_steps": 60,
        "simclr_batch": 128,
        "lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        # Chosen on validation by benchmarks/select_lr.py --notebook 08_semi_supervised
        # (evidence: lr_selection_08.csv, plotted in the notebook; tests/test_bench.py checks).
        "lr_selected": {
            "tiny-cnn": {
                "supervised": [3e-3, 1e-2, 1e-2],
                "pseudo-label": [3e-3, 1e-2, 1e-2],
                "FixMatch": [3e-2, 3e-2, 3e-2],
                "SimCLR + fine-tune": [1e-1, 3e-2, 1e-2],
            }
        },
        "threshold": 0.95,  # FixMatch's value, for pseudo-labels and the consistency loss
        "low_threshold": 0.5,  # the too-low threshold of the confirmation-bias experiment
    },
    "gpu": {
        "model": "efficientnet-lite0",
        "labels_per_class": [2, 5, 20, 50],
        "max_steps": [150, 200, 300, 400],
        "eval_every": 25,
        "seeds": [0, 1, 2, 3, 4],
        "batch_size": 32,
        "test_size": 5000,
        "unlabelled": 20000,
        "rounds": 3,
        "unlabelled_batch": 224,  # FixMatch's ratio: 7 unlabelled images per labelled one
        "simclr_steps": 400,
        "simclr_batch": 256,
        "lrs": [3e-4, 1e-3, 3e-3],
        "lr_selected": {},
        "threshold": 0.95,
        "low_threshold": 0.5,
    },
}
_SEMI_COMMON = {
    "patience": None,
    "fixmatch_weight": 1.0,
    "simclr_lr": 2e-3,
}

_CHAPTERS = {
    "quickstart": (_QUICKSTART, _QUICKSTART_COMMON),
    "pretraining": (_PRETRAINING, _PRETRAINING_COMMON),
    "full": (_FULL, _FULL_COMMON),
    "partial": (_PARTIAL, _PARTIAL_COMMON),
    "foundation": (_FOUNDATION, _FOUNDATION_COMMON),
    "additive": (_ADDITIVE, _ADDITIVE_COMMON),
    "lora": (_LORA, _LORA_COMMON),
    "instruct": (_INSTRUCT, _INSTRUCT_COMMON),
    "rlhf": (_RLHF, _RLHF_COMMON),
    "semi": (_SEMI, _SEMI_COMMON),
}


def _settings(profile: str) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, (per_profile, common) in _CHAPTERS.items()
        for key, value in {**common, **per_profile[profile]}.items()
    }


#: The three run profiles by name, ``smoke``, ``cpu`` and ``gpu``.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="tests and CI: tiny sizes, few steps; only checks that the code path runs",
        budget_seconds=30,
        num_threads=2,
        settings=_settings("smoke"),
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop or the book build (2 CPU cores): meaningful results, claims checked",
        budget_seconds=240,
        num_threads=None,
        settings=_settings("cpu"),
    ),
    "gpu": Profile(
        name="gpu",
        description="one GPU: more seeds and data, the ImageNet model by default",
        budget_seconds=600,
        num_threads=None,
        settings=_settings("gpu"),
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
