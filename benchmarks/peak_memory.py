"""Peak memory of one training step, per fine-tuning method, on tiny-lm and SmolLM2-135M.

The source says LoRA needs about 3x less memory than full fine-tuning. Whether it does depends
on what dominates a step: the weights' gradients and optimizer state (which LoRA removes) or
the weights and activations (which it keeps). For every arm of the SmolLM2 study
(``ftcourse.chapters.smollm2.ARMS``) this measures one AdamW step of the gloss classifier with
:func:`ftcourse.memory.measure` (exact bytes of weights, gradients, optimizer state and saved
activations; the peak from the PyTorch profiler's memory timeline) at two shapes: the study's
batch (16 definitions of at most 32 tokens) and 8 texts of 256 tokens. Each model and shape
runs in the precision of this process (``FTCOURSE_PRECISION``; ``auto`` is bf16 autocast on a
CPU with native bf16). Writes ``benchmarks/results/peak_memory.csv`` (rows of another
precision stay); chapters 4 and 5 read it.

    python benchmarks/peak_memory.py                          # about 6 minutes on 2 cores
    FTCOURSE_PRECISION=fp32 python benchmarks/peak_memory.py  # the same steps in fp32
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ftcourse import lm, memory, precision
from ftcourse.chapters import smollm2
from ftcourse.chapters.additive import base_model, parse_arm

OUT = Path(__file__).parent / "results" / "peak_memory.csv"
MODELS = ("tiny-lm", "smollm2-135m")
SHAPES = smollm2.MEMORY_SHAPES
FIELDS = [
    "model",
    "arm",
    "trainable",
    "batch",
    "tokens",
    "weights",
    "gradients",
    "optimizer",
    "activations",
    "peak",
    "precision",
    "cpu",
    "seconds",
]


def measure_arm(model: str, arm: str, batch: int, tokens: int) -> tuple[memory.Memory, int]:
    """One measured AdamW step of ``arm``'s classifier on random ids (no padding, so every
    position is a real token: memory does not depend on which tokens), and how many
    parameters train."""
    base, tok = base_model(model)
    method, size = parse_arm(arm)
    clf = lm.peft_classifier(base, 10, tok.pad_token_id, method, size, smollm2.ALPHA)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (batch, tokens), generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        with precision.autocast("cpu"):
            return torch.nn.functional.cross_entropy(m(ids).float(), labels)

    trainable = memory.count_parameters(clf, trainable_only=True)
    return memory.measure(clf, loss_fn), trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    args = parser.parse_args()
    cpu = precision.cpu_info()
    rows = []
    jobs = [(m, a, b, t) for m in args.models.split(",") for a in smollm2.ARMS for b, t in SHAPES]
    for model, arm, batch, tokens in tqdm(jobs, desc="peak memory"):
        start = time.perf_counter()
        mem, trainable = measure_arm(model, arm, batch, tokens)
        rows.append(
            {
                "model": model,
                "arm": arm,
                "trainable": trainable,
                "batch": batch,
                "tokens": tokens,
                **mem.as_dict(),
                "precision": precision.describe(),
                "cpu": f"{cpu.model} ({cpu.cores} cores, {cpu.capability})",
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        tqdm.write(
            f"{model} {arm} {batch}x{tokens}: peak {memory.bytes_str(mem.peak)} "
            f"(weights {memory.bytes_str(mem.weights)})"
        )
    # Keep the rows of the other precision (a second run with FTCOURSE_PRECISION=fp32).
    mine = {r["precision"] for r in rows}
    if OUT.exists():
        with open(OUT, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["precision"] not in mine] + rows
    with open(OUT, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
