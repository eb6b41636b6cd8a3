"""Choose learning rates on validation once, for notebooks too slow to tune inline on a CPU.

Chapters 0-3 have moved to reference studies (``ftcourse study 01`` ...; the chosen rates live
in ``benchmarks/results/studies/`` and the notebooks read them there). For the others this
script runs a grid (validation only, no test set), writes every run to a CSV and prints the
chosen rates, which go into the profile table; the notebook plots the CSV as its evidence and
``tests/test_bench.py`` checks that the profile holds what the CSV chooses. Appendix A1 does
this for its two measurements (gloss classification, knowledge unlocked) into
``lr_selection_A1.csv`` and ``foundation.lr_selected``; chapter 4 for each of its arms
into ``lr_selection_04.csv`` and ``additive.lr_selected``; chapter 5 likewise into
``lr_selection_05.csv`` and ``lora.lr_selected``; chapter 6 for its tuned arms into
``lr_selection_06.csv`` and ``instruct.lr_selected``; chapter 8 for its four arms at every
label budget into ``lr_selection_08.csv`` and ``semi.lr_selected``.

    python benchmarks/select_lr.py --notebook A1_foundation_model   # about 9 minutes
    python benchmarks/select_lr.py --notebook 04_additive           # about 15 minutes
    python benchmarks/select_lr.py --notebook 05_lora               # about 12 minutes
    python benchmarks/select_lr.py --notebook 06_instruction_tuning # about 13 minutes
    python benchmarks/select_lr.py --notebook 08_semi_supervised    # about 12 minutes
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from ftcourse import data, experiments
from ftcourse.precision import resolve_device
from ftcourse.profiles import get_profile

RESULTS_A1 = Path(__file__).parent / "results" / "lr_selection_A1.csv"
RESULTS_04 = Path(__file__).parent / "results" / "lr_selection_04.csv"
RESULTS_05 = Path(__file__).parent / "results" / "lr_selection_05.csv"
RESULTS_06 = Path(__file__).parent / "results" / "lr_selection_06.csv"
RESULTS_08 = Path(__file__).parent / "results" / "lr_selection_08.csv"
FIELDS = ["notebook", "model", "labels_per_class", "arm", "lr", "seed", "val_acc", "best_step"]


def foundation_rows(profile: str, device: torch.device) -> tuple[list[dict], dict]:
    """Appendix A1: gloss classification (fine-tune vs scratch, every label budget) and the
    knowledge-unlocking SFT (pretrained vs random init), every seed, every lr."""
    import copy
    import functools

    from transformers import AutoModelForCausalLM

    from ftcourse import lm, models
    from ftcourse.data import text

    cfg = get_profile(profile).section("foundation")
    base = models.load(cfg["model"])
    tok, model = base.tokenizer, base.model
    classes = text.GLOSS_CATEGORIES
    pool = lm.classification_dataset(tok, text.gloss_task("train")[0], cfg["max_length"])
    val_pool = lm.classification_dataset(tok, text.gloss_task("validation")[0], cfg["max_length"])
    arms = {
        "fine-tune": lambda train: lm.Classifier(
            copy.deepcopy(model), len(classes), tok.pad_token_id
        ),
        "scratch": lambda train: lm.Classifier(
            AutoModelForCausalLM.from_config(model.config), len(classes), tok.pad_token_id
        ),
    }
    rows = []
    budget = experiments.Budget.from_profile(cfg)
    for labels in cfg["labels_per_class"]:
        start = time.perf_counter()
        rows += experiments.grid_search(
            arms,
            lambda seed, labels=labels: (
                data.few_label_split(pool, labels, 0, seed=seed)[0],
                data.few_label_split(val_pool, cfg["val_per_class"], 0, seed=seed)[0],
            ),
            seeds=cfg["seeds"],
            lrs=cfg["lrs"],
            budget=budget,
            device=device,
            notebook="A1_foundation_model",
            model=cfg["model"],
            task="gloss",
            labels_per_class=labels,
        )
        print(f"gloss, {labels} labels per class: {time.perf_counter() - start:.0f} s", flush=True)
    qa = text.fact_qa(cfg["relation"], base.card["seed"])
    start = time.perf_counter()
    rows += experiments.grid_search(
        {
            "pretrained": lambda train: copy.deepcopy(model),
            "random init": lambda train: AutoModelForCausalLM.from_config(model.config),
        },
        lambda seed: (qa["train"], qa["validation"][: cfg["sft_val_words"]]),
        seeds=cfg["seeds"],
        lrs=cfg["sft_lrs"],
        budget=experiments.Budget(
            cfg["sft_max_steps"], cfg["sft_eval_every"], None, cfg["batch_size"]
        ),
        device=device,
        fit=functools.partial(lm.sft, tokenizer=tok),
        notebook="A1_foundation_model",
        model=cfg["model"],
        task="unlock",
        labels_per_class="",
    )
    print(f"unlock: {time.perf_counter() - start:.0f} s", flush=True)
    chosen = {
        "gloss": {
            arm: [
                experiments.chosen_lr(rows, task="gloss", arm=arm, labels_per_class=labels)
                for labels in cfg["labels_per_class"]
            ]
            for arm in ("fine-tune", "scratch")
        },
        "unlock": {
            arm: experiments.chosen_lr(rows, task="unlock", arm=arm)
            for arm in ("pretrained", "random init")
        },
    }
    return rows, chosen


def additive_rows(profile: str, device: torch.device) -> tuple[list[dict], dict]:
    """Chapter 4: every arm (full, head, adapters, prompts, int8 adapter; the author task's
    prompt) on every seed and learning rate of its grid, validation only."""
    from ftcourse import lm

    return peft_rows(
        profile, device, "additive", "04_additive", lm.peft_arms, {"int8-adapter": "adapter"}
    )


def lora_rows(profile: str, device: torch.device) -> tuple[list[dict], dict]:
    """Chapter 5: full fine-tuning, LoRA at every rank, the placement pair, QLoRA and the
    author task's LoRA, on every seed and learning rate of its grid, validation only."""
    from ftcourse import lm

    return peft_rows(
        profile, device, "lora", "05_lora", lm.lora_arms, {"lora-all": "lora", "qlora": "lora"}
    )


def instruct_rows(
    profile: str, device: torch.device, only: list[str] | None = None
) -> tuple[list[dict], dict]:
    """Chapter 6: SFT, SFT with the loss on every token, SFT from random init and LoRA-SFT on
    the instruction tasks, every seed and learning rate of each arm's grid, validation only
    (the no-end-token ablation reuses SFT's rate). With ``only``, just those arms run and the
    other arms' rows are read back from the existing CSV (the runs are deterministic)."""
    from ftcourse import lm, models
    from ftcourse.data import text

    cfg = get_profile(profile).section("instruct")
    base = models.load(cfg["model"])
    seed = base.card.get("seed", 0)
    pairs = {
        split: [(i.prompt, i.answer) for i in text.instruction_items(split, **kw, seed=seed)]
        for split, kw in (("train", {}), ("validation", {"limit": cfg["val_items"]}))
    }
    budget = experiments.Budget.from_profile(cfg)
    rows = []
    if only:
        with open(RESULTS_06) as f:
            rows = [r for r in csv.DictReader(f) if r["arm"] not in only]
    for arm, (make, fit, grid) in lm.sft_arms(cfg, base.model, base.tokenizer).items():
        if arm == "no end token" or (only and arm not in only):
            continue
        start = time.perf_counter()
        rows += experiments.grid_search(
            {arm: make},
            lambda seed: (pairs["train"], pairs["validation"]),
            seeds=cfg["seeds"],
            lrs=cfg["lrs"][grid],
            budget=budget,
            device=device,
            fit=fit,
            notebook="06_instruction_tuning",
            model=cfg["model"],
            task="instructions",
            labels_per_class="",
        )
        print(f"{arm}: {time.perf_counter() - start:.0f} s", flush=True)
    chosen = {arm: experiments.chosen_lr(rows, arm=arm) for arm in {r["arm"] for r in rows}}
    return rows, chosen


def peft_rows(
    profile: str, device: torch.device, section: str, notebook: str, arms_of, grid_of: dict
) -> tuple[list[dict], dict]:
    """The grid of chapters 4 and 5: ``arms_of(cfg)`` (or ``arms_of(cfg, model)``) gives the
    arms as ``(arm, task, method, size)``; ``grid_of`` maps a method to the grid it shares."""
    import inspect

    from ftcourse import lm, models
    from ftcourse.chapters.additive import text_task

    cfg = get_profile(profile).section(section)
    base = models.load(cfg["model"])
    tok, model = base.tokenizer, base.model
    arms = arms_of(cfg, model) if len(inspect.signature(arms_of).parameters) == 2 else arms_of(cfg)
    labels = {"gloss": cfg["labels_per_class"], "author": cfg["author_per_class"]}
    tasks = {  # the notebooks' tasks (validation only is used here)
        task: text_task(task, tok, labels[task], cfg["val_per_class"], 1, cfg["max_length"])
        for task in labels
    }
    budget = experiments.Budget.from_profile(cfg)
    alpha = cfg.get("lora_alpha")
    rows = []
    for arm, task, method, size in arms:
        start = time.perf_counter()
        num_classes = len(tasks[task].classes)
        rows += experiments.grid_search(
            {
                arm: lambda train, m=method, s=size, c=num_classes: lm.peft_classifier(
                    model, c, tok.pad_token_id, m, s, alpha
                )
            },
            tasks[task].splits,
            seeds=cfg["seeds"],
            lrs=cfg["lrs"][grid_of.get(method, method)],
            budget=budget,
            device=device,
            notebook=notebook,
            model=cfg["model"],
            task=task,
            labels_per_class=labels[task],
        )
        print(f"{task} {arm}: {time.perf_counter() - start:.0f} s", flush=True)
    chosen = {
        f"{task}/{arm}": experiments.chosen_lr(rows, task=task, arm=arm) for arm, task, _, _ in arms
    }
    return rows, chosen


def semi_rows(profile: str, device: torch.device) -> tuple[list[dict], dict]:
    """Chapter 8: supervised, pseudo-labelling, FixMatch and SimCLR + fine-tune, every label
    budget (validation as small as the training split), every seed, every lr. The SimCLR
    encoder is trained once, as in the notebook."""
    from ftcourse import semi

    cfg = get_profile(profile).section("semi")
    task = semi.task(cfg["unlabelled"], cfg["test_size"])
    encoder, _ = semi.simclr_encoder(cfg["model"], task.unlabelled.tensors[0], cfg, device=device)
    rows = []
    for labels, steps in zip(cfg["labels_per_class"], cfg["max_steps"], strict=True):
        budget = experiments.Budget(steps, cfg["eval_every"], cfg["patience"], cfg["batch_size"])
        for arm, (make, fit) in semi.arms(cfg["model"], cfg, task.unlabelled, encoder).items():
            start = time.perf_counter()
            rows += experiments.grid_search(
                {arm: make},
                task.splits(labels),
                seeds=cfg["seeds"],
                lrs=cfg["lrs"],
                budget=budget,
                device=device,
                fit=fit,
                notebook="08_semi_supervised",
                model=cfg["model"],
                task="fashion-mnist 5-9",
                labels_per_class=labels,
            )
            print(f"{labels} labels, {arm}: {time.perf_counter() - start:.0f} s", flush=True)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    chosen = {
        cfg["model"]: {
            arm: [
                experiments.chosen_lr(rows, arm=arm, labels_per_class=labels)
                for labels in cfg["labels_per_class"]
            ]
            for arm in arms
        }
    }
    return rows, chosen


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write the grid's rows (only ``fields``, in that order) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({k: row[k] for k in fields} for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument(
        "--notebook",
        required=True,
        choices=[
            "A1_foundation_model",
            "04_additive",
            "05_lora",
            "06_instruction_tuning",
            "08_semi_supervised",
        ],
    )
    parser.add_argument(
        "--arms", default="", help="06 only: comma-separated arms to re-run (others kept)"
    )
    args = parser.parse_args()
    device = resolve_device("auto")
    with_task = ["notebook", "model", "task", *FIELDS[2:]]
    rows_of, path, key = {
        "A1_foundation_model": (foundation_rows, RESULTS_A1, "foundation"),
        "04_additive": (additive_rows, RESULTS_04, "additive"),
        "05_lora": (lora_rows, RESULTS_05, "lora"),
        "06_instruction_tuning": (instruct_rows, RESULTS_06, "instruct"),
        "08_semi_supervised": (semi_rows, RESULTS_08, "semi"),
    }[args.notebook]
    if args.notebook == "06_instruction_tuning" and args.arms:
        rows, chosen = instruct_rows(args.profile, device, args.arms.split(","))
    else:
        rows, chosen = rows_of(args.profile, device)
    write_rows(path, rows, with_task)
    print(f"wrote {path}\nput into {key}.lr_selected: {chosen}")


if __name__ == "__main__":
    main()
