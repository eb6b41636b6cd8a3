"""Choose learning rates on validation once, for notebooks too slow to tune inline on a CPU.

Chapter 1's transfer curve needs both arms tuned at every label budget; a grid of learning
rates x seeds x budgets x arms does not fit the `cpu` profile's 4-minute budget. This script
runs that grid (validation only, no test set), writes every run to
``benchmarks/results/lr_selection.csv`` and prints the chosen rates, which go into the profile
table (``pretraining.lr_selected`` in ``ftcourse/profiles.py``). The notebook plots this CSV as
its evidence; ``tests/test_bench.py`` checks that the profile holds what the CSV chooses.

    python benchmarks/select_lr.py            # about 9 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from ftcourse import data, experiments
from ftcourse.profiles import get_profile, resolve_device

RESULTS = Path(__file__).parent / "results" / "lr_selection.csv"
FIELDS = ["notebook", "model", "labels_per_class", "arm", "lr", "seed", "val_acc", "best_step"]


def transfer_rows(profile: str, device: torch.device) -> list[dict]:
    """Chapter 1: fine-tune vs scratch, every label budget, every seed, every lr."""
    cfg = get_profile(profile).section("pretraining")
    pool = data.image_task("fashion-mnist", range(5, 10), "train")
    rows = []
    for labels, steps in zip(cfg["labels_per_class"], cfg["max_steps"], strict=True):
        start = time.perf_counter()
        budget = experiments.Budget(steps, cfg["eval_every"], None, cfg["batch_size"])
        rows += experiments.grid_search(
            experiments.pretrained_vs_scratch(cfg["model"], 5),
            lambda seed, labels=labels: data.few_label_split(
                pool, labels, cfg["val_per_class"], seed=seed
            ),
            seeds=cfg["seeds"],
            lrs=cfg["lrs"],
            budget=budget,
            device=device,
            notebook="01_pretraining_vs_finetuning",
            model=cfg["model"],
            labels_per_class=labels,
        )
        print(f"{labels} labels per class: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    rows = transfer_rows(args.profile, resolve_device("auto"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in FIELDS} for row in rows)
    cfg = get_profile(args.profile).section("pretraining")
    chosen = {
        arm: [
            experiments.chosen_lr(rows, arm=arm, labels_per_class=labels)
            for labels in cfg["labels_per_class"]
        ]
        for arm in ("fine-tune", "scratch")
    }
    print(f"wrote {RESULTS}\nput into pretraining.lr_selected: {{{cfg['model']!r}: {chosen}}}")


if __name__ == "__main__":
    main()
