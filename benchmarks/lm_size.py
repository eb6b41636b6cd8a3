"""Choose tiny-lm's size by measurement: equal wall-clock pretraining of a few widths.

Each candidate trains on the tiny-lm v2 corpus (``ftcourse.pretrain.lm_data``) for the same
number of seconds in fp32 on this machine's CPU, with the recipe of ``pretrain_lm``; the
held-out loss per source is measured after. Writes ``benchmarks/results/lm_size.csv``.
Run on an idle machine: ``python benchmarks/lm_size.py --seconds 150``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from ftcourse import lm, precision
from ftcourse.models import build_lm
from ftcourse.pretrain import lm_data

CANDIDATES = {
    "w96-l4": dict(
        hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4
    ),
    "w128-l4": dict(
        hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4
    ),
    "w192-l4": dict(
        hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4
    ),
}
OUT = Path(__file__).parent / "results" / "lm_size.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=150)
    args = parser.parse_args()
    os.environ.setdefault("FTCOURSE_PRECISION", "fp32")
    _, tokenizer, train_tokens, held_out = lm_data()
    cpu = precision.cpu_info()
    rows = []
    for name, size in CANDIDATES.items():
        torch.manual_seed(0)
        model = build_lm(len(tokenizer), **size)
        # Steps that fit the time: measure 10 steps first, then train a full schedule.
        t0 = time.perf_counter()
        lm.train_lm(model, train_tokens, num_steps=10, lr=3e-3, warmup=5, progress=False)
        per_step = (time.perf_counter() - t0) / 10
        steps = int(args.seconds / per_step)
        torch.manual_seed(0)
        model = build_lm(len(tokenizer), **size)
        t0 = time.perf_counter()
        lm.train_lm(
            model,
            train_tokens,
            num_steps=steps,
            lr=3e-3,
            warmup=min(100, steps // 10),
            progress=False,
        )
        seconds = time.perf_counter() - t0
        row = {
            "candidate": name,
            "params": sum(p.numel() for p in model.parameters()),
            "steps": steps,
            "seconds": round(seconds, 1),
            "tokens_per_s": round(steps * 32 * 128 / seconds),
            **{
                f"loss_{s}": round(lm.lm_loss(model, t, max_windows=200), 4)
                for s, t in held_out.items()
            },
            "cpu": f"{cpu.model} ({cpu.cores} cores, {cpu.capability})",
            "precision": os.environ["FTCOURSE_PRECISION"],
        }
        print(row, flush=True)
        rows.append(row)
    with open(OUT, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
