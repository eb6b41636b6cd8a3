"""The course's benchmarks (``make bench``): results as CSV in ``benchmarks/results/``.

* ``fit``: ``ftcourse.train.fit_steps`` against a bare PyTorch loop and against Hugging Face
  ``Trainer`` on the same job (tiny-cnn, same data, batch, steps, optimizer, schedule and
  precision), interleaved in one process; steps per second and the ratios.
* ``lm``: tiny-lm pretraining throughput (tokens/s) in fp32 and, where the CPU has native bf16,
  under bf16 autocast, beside the machine's measured matmul throughput.
* ``smollm2``: SmolLM2-135M (the zoo's real small LLM) on this CPU: generation tokens/s at
  batch 1 and 8, LoRA and full fine-tuning steps/s.
* ``notebooks``: the runtime of every notebook per profile (``--profiles smoke,cpu``), with the
  CPU; the notebooks' runtime lines, the introduction and ``ftcourse doctor`` read this file.
* ``page``: writes ``book/benchmarks.md`` and ``book/_runtimes.md`` from the CSVs, and
  ``book/_workshop.md`` (the instructor guide's workshop plans, :data:`WORKSHOP_PLANS`).

    python benchmarks/run.py all            # what `make bench` runs (~20 min on 2 cores)
    python benchmarks/run.py notebooks --profiles cpu --only 00_quickstart

Never time anything while another job runs on the machine: two torch processes on two cores
slow each other down by far more than 2x.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as dt
import json
import os
import re
import statistics
import time
from pathlib import Path

import torch

from ftcourse import bench, data, models, precision, report
from ftcourse import lm as lmlib
from ftcourse.train import fit_steps, seed_everything

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _machine() -> dict[str, str]:
    cpu = precision.cpu_info()
    return {
        "cpu": f"{cpu.model} ({cpu.cores} cores, {cpu.capability})",
        "native_bf16": str(cpu.native_bf16),
        "fp32_gflops": f"{precision.matmul_gflops(None, seconds=0.5):.1f}",
        "date": dt.date.today().isoformat(),
    }


def _write(name: str, rows: list[dict], append: bool = False) -> Path:
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or not append
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- fit


def _job(steps: int):
    pool = data.image_task("fashion-mnist", range(5, 10), "train")
    train, val = data.few_label_split(pool, 100, 10, seed=0)
    return train, val, steps


def _bare(train, steps: int, lr: float, batch: int) -> float:
    """The shortest honest loop: same model, data order, AdamW, schedule and precision."""
    from ftcourse.train import cosine_schedule

    generator = seed_everything(0)
    model = models.load("tiny-cnn", num_classes=5).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(steps))
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, generator=generator)
    done, start = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            with precision.autocast("cpu"):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - start)


def _ours(train, val, steps: int, lr: float, batch: int) -> float:
    generator = seed_everything(0)
    model = models.load("tiny-cnn", num_classes=5).model
    start = time.perf_counter()
    fit_steps(
        model,
        train,
        lr=lr,
        max_steps=steps,
        val_set=val,
        eval_every=steps,
        batch_size=batch,
        generator=generator,
        progress=False,
    )
    return steps / (time.perf_counter() - start)


class _ForTrainer(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return {"loss": loss, "logits": logits}


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, dataset) -> None:
        self.x, self.y = dataset.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _trainer(train, steps: int, lr: float, batch: int, out: Path) -> float:
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    seed_everything(0)
    model = _ForTrainer(models.load("tiny-cnn", num_classes=5).model)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(0.05 * steps)),
        optim="adamw_torch",
        bf16=precision.autocast_dtype("cpu") is torch.bfloat16,
        use_cpu=True,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Dicts(train))
    start = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - start)


def bench_fit(steps: int = 150, repeats: int = 3) -> Path:
    train, val, steps = _job(steps)
    lr, batch = 1e-2, 32
    speeds: dict[str, list[float]] = {"bare": [], "ftcourse": [], "hf_trainer": []}
    tmp = RESULTS / "_trainer_tmp"
    for r in range(repeats + 1):  # the first round warms up and is dropped
        got = {
            "bare": _bare(train, steps, lr, batch),
            "ftcourse": _ours(train, val, steps, lr, batch),
            "hf_trainer": _trainer(train, steps, lr, batch, tmp),
        }
        if r:
            for k, v in got.items():
                speeds[k].append(v)
        print(
            f"round {r}: " + ", ".join(f"{k} {v:.1f} steps/s" for k, v in got.items()), flush=True
        )
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(tmp)
    machine = _machine()
    med = {k: statistics.median(v) for k, v in speeds.items()}
    rows = [
        {
            "loop": k,
            "steps_per_s_median": f"{med[k]:.2f}",
            "steps_per_s_min": f"{min(v):.2f}",
            "steps_per_s_max": f"{max(v):.2f}",
            "ratio_to_bare": f"{med[k] / med['bare']:.3f}",
            "steps": steps,
            "repeats": repeats,
            "precision": precision.describe("cpu"),
            **machine,
        }
        for k, v in speeds.items()
    ]
    return _write("fit_loops.csv", rows)


# --------------------------------------------------------------------------- lm


def bench_lm(steps: int = 30) -> Path:
    lm = models.load("tiny-lm")
    works = data.load_shakespeare()
    tokens = lmlib.encode_corpus(lm.tokenizer, works[:5])
    params = sum(p.numel() for p in lm.model.parameters())
    machine = _machine()
    choices = ["fp32"] + (["bf16"] if precision.native_bf16("cpu") else [])
    rows = []
    for choice in choices:
        os.environ[precision.PRECISION_ENV] = choice
        model = models.build_lm(len(lm.tokenizer))
        lmlib.train_lm(model, tokens, num_steps=3, lr=3e-3, warmup=1, progress=False)  # warm-up
        start = time.perf_counter()
        lmlib.train_lm(model, tokens, num_steps=steps, lr=3e-3, warmup=1, progress=False)
        seconds = time.perf_counter() - start
        tps = steps * 32 * 128 / seconds
        matmul = precision.matmul_gflops(torch.bfloat16 if choice == "bf16" else None, seconds=0.5)
        train_gflops = 6 * params * tps / 1e9  # forward + backward, the usual 6 N per token
        rows.append(
            {
                "precision": choice,
                "tokens_per_s": f"{tps:.0f}",
                "steps": steps,
                "model_params": params,
                "train_gflops_6N": f"{train_gflops:.1f}",
                "matmul_gflops": f"{matmul:.1f}",
                "fraction_of_matmul": f"{train_gflops / matmul:.3f}",
                **machine,
            }
        )
        print(rows[-1], flush=True)
    os.environ.pop(precision.PRECISION_ENV, None)
    return _write("lm_throughput.csv", rows)


# --------------------------------------------------------------------------- smollm2


def bench_smollm2(new_tokens: int = 32, steps: int = 5) -> Path:
    """SmolLM2-135M on this CPU: greedy generation tokens/s (batch 1 and 8) and LoRA / full
    fine-tuning steps/s (batch 8 x 64 tokens, AdamW), fp32 and, where native, bf16."""
    from peft import LoraConfig, get_peft_model

    machine = _machine()
    choices = ["fp32"] + (["bf16"] if precision.native_bf16("cpu") else [])
    rows = []
    start = time.perf_counter()
    smol = models.load("smollm2-135m")
    load_seconds = time.perf_counter() - start
    tok = smol.tokenizer
    prompts = [f"Write a sentence about the number {i}." for i in range(8)]
    for choice in choices:
        os.environ[precision.PRECISION_ENV] = choice
        model = smol.model
        for batch in (1, 8):
            lmlib.generate(model, tok, prompts[:batch], max_new_tokens=4)  # warm-up
            start = time.perf_counter()
            torch.manual_seed(0)
            ids, mask = lmlib.pad(
                [lmlib.encode_chat(tok, p)[0] for p in prompts[:batch]], tok.pad_token_id, "left"
            )
            with torch.no_grad(), precision.autocast("cpu"):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=tok.pad_token_id,
                )
            seconds = time.perf_counter() - start
            made = (out.shape[1] - ids.shape[1]) * batch
            rows.append(
                {
                    "what": f"generate, batch {batch}",
                    "precision": choice,
                    "per_second": f"{made / seconds:.1f}",
                    "unit": "tokens",
                    "load_seconds": f"{load_seconds:.1f}",
                    **machine,
                }
            )
            print(rows[-1], flush=True)
        ids = torch.randint(0, len(tok), (8, 64), generator=torch.Generator().manual_seed(0))
        for mode in ("lora r=8 (q,v)", "full"):
            m = copy.deepcopy(smol.model)
            if mode != "full":
                m = get_peft_model(m, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
            params = [p for p in m.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)
            for i in range(steps + 1):
                if i == 1:
                    start = time.perf_counter()  # after one warm-up step
                with precision.autocast("cpu"):
                    loss = lmlib.next_token_loss(m, ids)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "what": f"train step ({mode}), batch 8 x 64 tokens",
                    "precision": choice,
                    "per_second": f"{steps / seconds:.2f}",
                    "unit": "steps",
                    "load_seconds": f"{load_seconds:.1f}",
                    **machine,
                }
            )
            print(rows[-1], flush=True)
            del m, opt
    os.environ.pop(precision.PRECISION_ENV, None)
    return _write("smollm2.csv", rows)


# --------------------------------------------------------------------------- notebooks


def bench_notebooks(profiles: list[str], only: list[str] | None = None) -> Path:
    from ftcourse.cli import run_notebook

    machine = _machine()
    path = RESULTS / bench.RUNTIMES_CSV
    for profile in profiles:
        for nb in NOTEBOOKS:
            if only and nb.stem not in only:
                continue
            out = RESULTS / "_reports"
            start = time.perf_counter()
            run_notebook(nb, profile, report_dir=out, output_dir=RESULTS / "_executed")
            wall = time.perf_counter() - start
            seconds = report.read(out / f"{nb.stem}.json")["seconds"]
            row = {
                "notebook": nb.stem,
                "profile": profile,
                "seconds": f"{seconds:.1f}",
                **machine,
                "precision": precision.describe("cpu"),  # FTCOURSE_PRECISION may force fp32
            }
            _write(bench.RUNTIMES_CSV, [row], append=True)
            print(
                f"{nb.stem} ({profile}): {seconds:.1f} s in the notebook, {wall:.1f} s with "
                "the kernel's start",
                flush=True,
            )
    return path


# --------------------------------------------------------------------------- page


def _read(name: str) -> list[dict]:
    path = RESULTS / name
    return list(csv.DictReader(open(path))) if path.exists() else []


def write_page() -> Path:
    runtimes = bench.runtimes(RESULTS)
    lines = [
        "| notebook | profile | runtime | CPU | numerics |",
        "|---|---|---|---|---|",
    ]
    order = {"smoke": 0, "cpu": 1, "gpu": 2}
    for r in sorted(runtimes, key=lambda r: (r.notebook, order.get(r.profile, 9), r.cpu)):
        lines.append(f"| {r.notebook} | `{r.profile}` | {r.text} | {r.cpu} | {r.numerics} |")
    table = "\n".join(lines) if runtimes else "*Not measured yet: run `make bench`.*"
    (ROOT / "book" / "_runtimes.md").write_text(
        "<!-- generated by benchmarks/run.py page from benchmarks/results; do not edit -->\n"
        + table
        + "\n"
    )
    fit = _read("fit_loops.csv")
    lm = _read("lm_throughput.csv")
    parts = [
        "# Benchmarks",
        "",
        "<!-- generated by `benchmarks/run.py page` (`make bench`) from benchmarks/results/*.csv;"
        " do not edit by hand -->",
        "",
        "Every figure on this page was measured by `make bench` on the machine named beside "
        "it; the CSV files in `benchmarks/results/` hold the raw rows.",
        "",
        "## Notebook runtimes",
        "",
        "Seconds from the notebook's first cell to its last (the kernel's start-up, a few "
        "seconds, is not included). The notebooks' runtime lines read this table.",
        "",
        table,
        "",
        "The CPU column names the kernels PyTorch used (`torch.backends.cpu.get_cpu_capability()`)."
        " A CPU without native bf16 can be imitated on one that has it: "
        "`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 make bench` makes PyTorch use only "
        "AVX2 kernels, and `ftcourse.precision` then sees no native bf16 and trains in fp32. "
        "Rows labelled AVX2 on a CPU whose other rows say AVX512 were measured that way; how "
        "much time a run takes also varies, by up to a fifth between two runs of one notebook "
        "here (a shared cloud machine).",
        "",
        "## The training loop against a bare loop and Hugging Face `Trainer`",
        "",
    ]
    if fit:
        m = fit[0]
        parts += [
            f"The same job for each — tiny-cnn fine-tuned on 500 Fashion-MNIST images, batch 32, "
            f"{m['steps']} AdamW steps with a cosine schedule, {m['precision']} — interleaved in "
            f"one process, {m['repeats']} rounds after a warm-up round; {m['cpu']}, "
            f"{m['date']}.",
            "",
            "| loop | steps/s (median) | min–max | ratio to the bare loop |",
            "|---|---|---|---|",
        ]
        names = {
            "bare": "bare PyTorch loop",
            "ftcourse": "`ftcourse.train.fit_steps`",
            "hf_trainer": "Hugging Face `Trainer`",
        }
        for r in fit:
            parts.append(
                f"| {names[r['loop']]} | {float(r['steps_per_s_median']):.1f} | "
                f"{float(r['steps_per_s_min']):.1f}–{float(r['steps_per_s_max']):.1f} | "
                f"{float(r['ratio_to_bare']):.3f} |"
            )
        parts.append("")
    else:
        parts += ["*Not measured yet.*", ""]
    parts += ["## Language-model pretraining throughput", ""]
    if lm:
        parts += [
            f"tiny-lm ({int(lm[0]['model_params']):,} parameters), batch 32 × 128 tokens, "
            f"{lm[0]['steps']} steps after a warm-up; {lm[0]['cpu']}, {lm[0]['date']}. "
            "Training FLOP/s are estimated as 6 × parameters × tokens/s, and set against the "
            "same precision's measured 512×512 matmul throughput.",
            "",
            "| precision | tokens/s | training GFLOP/s (6N) | matmul GFLOP/s | fraction |",
            "|---|---|---|---|---|",
        ]
        for r in lm:
            parts.append(
                f"| {r['precision']} | {int(r['tokens_per_s']):,} | {r['train_gflops_6N']} | "
                f"{r['matmul_gflops']} | {float(r['fraction_of_matmul']):.1%} |"
            )
        parts.append("")
    else:
        parts += ["*Not measured yet.*", ""]
    sizes = _read("lm_size.csv")
    if sizes:
        parts += [
            "## Choosing tiny-lm's size",
            "",
            "`benchmarks/lm_size.py` trains each candidate on tiny-lm's corpus for about the "
            f"same wall-clock time ({sizes[0]['precision']}, {sizes[0]['cpu']}; the steps that "
            "fit were estimated from ten timed steps) and measures the held-out loss (nats per "
            "token, lower is better). The two narrower widths are equal at this horizon, the "
            "widest is behind; tiny-lm uses width 128, the larger of the two, for a 20-minute "
            "run.",
            "",
            "| candidate | parameters | steps | seconds | tokens/s | Shakespeare | Austen "
            "| facts |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sizes:
            parts.append(
                f"| {r['candidate']} | {int(r['params']):,} | {r['steps']} | {r['seconds']} | "
                f"{int(r['tokens_per_s']):,} | {r['loss_shakespeare']} | {r['loss_austen']} | "
                f"{r['loss_facts']} |"
            )
        parts.append("")
    smol = _read("smollm2.csv")
    parts += ["## SmolLM2-135M on this CPU", ""]
    if smol:
        parts += [
            f"The zoo's real small LLM (`smollm2-135m`, 134.5 M parameters, fp32 after loading "
            f"the 4-bit GGUF file in {float(smol[0]['load_seconds']):.0f} s); {smol[0]['cpu']}, "
            f"{smol[0]['date']}. Greedy generation of 32 new tokens per prompt; training steps on "
            "random token batches of 8 × 64 with AdamW, after one warm-up step.",
            "",
            "| what | precision | per second |",
            "|---|---|---|",
        ]
        for r in smol:
            parts.append(f"| {r['what']} | {r['precision']} | {r['per_second']} {r['unit']} |")
        parts.append("")
    else:
        parts += ["*Not measured yet: `python benchmarks/run.py smollm2`.*", ""]
    gpu = sorted((RESULTS / "gpu").glob("*.json"))
    parts += ["## Stored GPU runs", ""]
    if gpu:
        parts += [
            "Notebooks run in the `gpu` profile by `benchmarks/run_plain.py` on a lent GPU "
            "machine; the reports are kept in `benchmarks/results/gpu/` and cited by the "
            "notebooks.",
            "",
            "| notebook | model | seconds | device | date |",
            "|---|---|---|---|---|",
        ]
        for path in gpu:
            r = json.loads(path.read_text())
            on = r.get("measured_on", {})
            parts.append(
                f"| {r['notebook']} | {r['metrics'].get('model', '')} | {r['seconds']:.0f} | "
                f"{on.get('device', '')} | {on.get('date', '')} |"
            )
        parts.append("")
    else:
        parts += ["*None yet.*", ""]
    path = ROOT / "book" / "benchmarks.md"
    path.write_text("\n".join(parts))
    return path


# --------------------------------------------------------------------------- workshop plans

# The workshop plans of the instructor guide (book/instructor.md): a name, the plan's length in
# minutes and its chapters in teaching order, each with the minutes of its slot (explaining,
# running the notebook, exercises). The minutes left over are for the introduction, the
# `make doctor` check, breaks and questions. `write_workshop` sets them beside the measured
# runtimes.
WORKSHOP_PLANS: tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...] = (
    ("90 minutes", 90, (("00_quickstart", 35), ("05_lora", 40))),
    (
        "Half day (3.5 h)",
        210,
        (
            ("00_quickstart", 35),
            ("02_full_finetuning", 35),
            ("03_partial_finetuning", 35),
            ("05_lora", 40),
            ("06_instruction_tuning", 35),
        ),
    ),
    (
        "Full day (6.5 h)",
        390,
        (
            ("00_quickstart", 30),
            ("01_pretraining_vs_finetuning", 35),
            ("02_full_finetuning", 35),
            ("03_partial_finetuning", 35),
            ("A1_foundation_model", 35),
            ("04_additive", 40),
            ("05_lora", 40),
            ("06_instruction_tuning", 35),
            ("07_rlhf", 40),
        ),
    ),
)

_EXERCISE = re.compile(r"^(?::{3,}|`{3,})\{exercise\}[^\n]*\n(?::label:\s*(\S+))?", re.M)


def exercises(stem: str) -> list[str]:
    """The labels of the ``{exercise}`` directives in the markdown cells of notebook ``stem``
    (an exercise without a label counts as ``?``)."""
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return [m.group(1) or "?" for m in _EXERCISE.finditer(text)]


def _slowest(runtimes: list[bench.Runtime], stem: str, profile: str) -> bench.Runtime | None:
    """The run group of ``stem`` in ``profile`` on the CPU with the largest median time."""
    found = [r for r in runtimes if r.notebook == stem and r.profile == profile]
    return max(found, key=lambda r: statistics.median(r.seconds), default=None)


def write_workshop() -> Path:
    """Write ``book/_workshop.md``: per plan, each chapter's slot, its measured `cpu` and `smoke`
    runtime (median of the runs on the slowest measured CPU) and its exercises, with totals."""
    runtimes = bench.runtimes(RESULTS)
    parts = [
        "<!-- generated by benchmarks/run.py page from WORKSHOP_PLANS, the notebooks and "
        "benchmarks/results/notebook_runtimes.csv; do not edit -->",
        "",
        "*Compute* is the median runtime of the notebook's measured runs on the slowest CPU "
        "measured for it (`make bench`); the CPU is named beside it. *Exercises* counts the "
        "notebook's exercises and links to each.",
        "",
    ]
    for name, minutes, chapters in WORKSHOP_PLANS:
        rows, slots, cpu_total, smoke_total, count, missing = [], 0, 0.0, 0.0, 0, 0
        for i, (stem, slot) in enumerate(chapters, 1):
            cpu, smoke = _slowest(runtimes, stem, "cpu"), _slowest(runtimes, stem, "smoke")
            labels = exercises(stem)
            slots, count = slots + slot, count + len(labels)
            cells = []
            for r in (cpu, smoke):
                if r is None:
                    missing += 1
                    cells.append("not measured")
                else:
                    cells.append(f"{statistics.median(r.seconds):.0f} s")
            cpu_total += statistics.median(cpu.seconds) if cpu else 0.0
            smoke_total += statistics.median(smoke.seconds) if smoke else 0.0
            where = f"{cpu.cpu}, {cpu.numerics}" if cpu else ""
            listed = ", ".join(
                f"{{numref}}`{label}`" if label != "?" else "unlabelled" for label in labels
            )
            rows.append(
                f"| {i} | {{doc}}`/notebooks/{stem}` | {slot} min | {cells[0]} | {where} | "
                f"{cells[1]} | {len(labels)}{': ' + listed if labels else ''} |"
            )
        at_least = "at least " if missing else ""
        parts += [
            f"**{name}**: {len(chapters)} chapters in slots of {slots} of the {minutes} minutes "
            f"({minutes - slots} min left for the introduction, `make doctor`, breaks and "
            f"questions); compute {at_least}{cpu_total / 60:.1f} min per learner in `cpu`, "
            f"{at_least}{smoke_total / 60:.1f} min for the demos in `smoke`; {count} exercises.",
            "",
            "| # | chapter | slot | compute in `cpu` | measured on | compute in `smoke` "
            "| exercises |",
            "|---|---|---|---|---|---|---|",
            *rows,
            f"| | **total** | **{slots} min** | **{at_least}{cpu_total / 60:.1f} min** | | "
            f"**{at_least}{smoke_total / 60:.1f} min** | **{count}** |",
            "",
        ]
    path = ROOT / "book" / "_workshop.md"
    path.write_text("\n".join(parts))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["fit", "lm", "smollm2", "notebooks", "page", "all"])
    parser.add_argument("--profiles", default="smoke,cpu")
    parser.add_argument("--only", default="", help="comma-separated notebook stems")
    args = parser.parse_args()
    os.environ.setdefault("FTCOURSE_PROGRESS", "0")
    if args.what in ("fit", "all"):
        print(f"wrote {bench_fit()}")
    if args.what in ("lm", "all"):
        print(f"wrote {bench_lm()}")
    if args.what in ("smollm2", "all"):
        print(f"wrote {bench_smollm2()}")
    if args.what in ("notebooks", "all"):
        only = [s for s in args.only.split(",") if s] or None
        print(f"wrote {bench_notebooks(args.profiles.split(','), only)}")
    print(f"wrote {write_page()}")
    print(f"wrote {write_workshop()}")


if __name__ == "__main__":
    main()
