"""Beyond one machine (appendix B1): chapter 5's LoRA fine-tune and chapter 6's SFT on several
processes, with the engines the field uses: PyTorch's DDP and FSDP2 under ``torchrun``, and
Hugging Face Accelerate (which TRL and peft build on).

Every step draws one *global* batch from a seeded sampler that every process runs alike, and
process ``r`` of ``W`` trains on the ``r``-th of ``W`` contiguous slices of it. Each process's
loss is its slice's *summed* loss divided by the global batch's number of units (examples for
the classifier, labelled tokens for SFT), times ``W``: DDP and FSDP2 average the gradients
over the processes, so the update is exactly the one-process update on the whole batch. (The
mean of per-process means is not the mean over tokens when the slices hold different numbers
of tokens: that is the bug this avoids.) The same script runs as::

    python -m ftcourse.distributed --job sft                          # one process
    torchrun --standalone --nproc_per_node 2 -m ftcourse.distributed --job sft --engine ddp
    torchrun --standalone --nproc_per_node 2 -m ftcourse.distributed --job sft --engine fsdp2
    accelerate launch --config_file ftcourse/configs/accelerate_cpu.yaml \\
        -m ftcourse.distributed --job lora --engine accelerate

``gloo`` carries the messages on CPUs, ``nccl`` on GPUs. ``tests/test_distributed.py`` checks
that two processes give the one-process losses and weights, that a sharded FSDP2 checkpoint
loads back to the same model, and that a seed makes a run repeat exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import lm, memory, precision

ENGINES = ("single", "ddp", "fsdp2", "accelerate")
JOBS = ("lora", "sft")
CONFIGS = Path(__file__).resolve().parent / "configs"
ACCELERATE_CONFIG = CONFIGS / "accelerate_cpu.yaml"
"""``accelerate launch --config_file`` for two processes on one machine's CPU (DDP)."""
ACCELERATE_FSDP_CONFIG = CONFIGS / "accelerate_fsdp.yaml"
"""Accelerate's FSDP2 config for the GPUs of one machine (on a CPU it runs as DDP)."""


@dataclass
class Job:
    """A fine-tuning job split into per-process slices.

    ``loss(model, items, units)``: the summed loss of ``items`` (indices into the training
    set) divided by ``units``; ``units(items)``: what the loss averages over (examples or
    labelled tokens); ``layers``: the blocks FSDP2 shards one by one."""

    name: str
    model: nn.Module
    num_items: int
    loss: Callable[[nn.Module, list[int], int], Tensor]
    units: Callable[[list[int]], int]
    layers: Callable[[nn.Module], Sequence[nn.Module]]
    unit_name: str


def lora_job(seed: int = 0, rank: int = 16, alpha: float = 8.0) -> Job:
    """Chapter 5's LoRA: tiny-lm's gloss classifier with LoRA of ``rank`` on query and value,
    trained on seed ``seed``'s labelled definitions (chapter 4's task and split)."""
    from .chapters import additive

    base, tok = additive.base_model()
    task = additive.text_task(
        "gloss", tok, additive.LABELS_PER_CLASS, additive.VAL_PER_CLASS, 1, additive.MAX_LENGTH
    )
    train, _ = task.splits(seed)
    ids, labels = (torch.stack([train[i][k] for i in range(len(train))]) for k in (0, 1))
    torch.manual_seed(seed)  # the same new weights (head, LoRA A) in every process
    model = lm.peft_classifier(base, len(task.classes), tok.pad_token_id, "lora", rank, alpha)

    def loss(net: nn.Module, items: list[int], units: int) -> Tensor:
        device = _device(net)
        with precision.autocast(device):
            logits = net(ids[items].to(device))
        y = labels[items].to(device)
        return nn.functional.cross_entropy(logits.float(), y, reduction="sum") / units

    return Job("lora", model, len(ids), loss, len, lambda m: list(m.body.layers), "examples")


def sft_job(seed: int = 0) -> Job:
    """Chapter 6's SFT: every weight of tiny-lm (fresh chat-token embeddings) on the
    instruction pairs, the loss on each response and its end token."""
    from .chapters import additive
    from .data import text

    base, tok = additive.base_model()
    pairs = [(i.prompt, i.answer) for i in text.instruction_items("train")]
    model = copy.deepcopy(base).train()
    lm.reinit_chat_tokens(model, tok, seed)

    def labelled(items: list[int]) -> int:
        labels = lm.collate(tok, [pairs[i] for i in items])["labels"]
        return int((labels[:, 1:] != lm.IGNORE).sum())

    def loss(net: nn.Module, items: list[int], units: int) -> Tensor:
        batch = lm.collate(tok, [pairs[i] for i in items])
        with precision.autocast(_device(net)):
            return lm.next_token_loss(net, **batch, reduction="sum") / units

    return Job("sft", model, len(pairs), loss, labelled, lambda m: list(m.model.layers), "tokens")


MAKE_JOB: dict[str, Callable[[int], Job]] = {"lora": lora_job, "sft": sft_job}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Result:
    """What one run measured (written by process 0 as ``result.json``)."""

    job: str
    engine: str
    world: int
    steps: int
    batch_size: int
    seed: int
    lr: float
    losses: list[float] = field(default_factory=list)  # the global batch's loss, per step
    seconds: float = 0.0  # training steps only (no start-up, no saving)
    units_per_second: float = 0.0
    unit_name: str = ""
    memory: list[dict[str, int]] = field(default_factory=list)  # per process, after a step
    threads: int = 0
    precision: str = ""
    device: str = ""
    checkpoint_max_diff: float | None = None
    wrapped: str = ""  # what the engine made of the model (DistributedDataParallel, ...)


def global_batches(num_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The global batch of every step, the same in every process (chapter 6's sampler:
    epoch by epoch, each epoch shuffled by ``seed``)."""
    from .train import shuffled_batches

    g = torch.Generator().manual_seed(seed)
    return [items for _, items in shuffled_batches(num_items, batch_size, steps, g)]


def my_slice(items: list[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s contiguous share of a global batch (sizes differ by at most one)."""
    size, extra = divmod(len(items), world)
    start = rank * size + min(rank, extra)
    return items[start : start + size + (rank < extra)]


def _local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This process's parameters, gradients and optimizer state (FSDP2: its shards)."""
    return {
        "parameters": memory.parameter_bytes(model),
        "gradients": memory.gradient_bytes(model),
        "optimizer": memory.optimizer_bytes(optimizer),
    }


def _wrap(engine: str, model: nn.Module, job: Job, device: torch.device):
    """The engine's model (and Accelerate's ``Accelerator``, else None)."""
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), None
    if engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in job.layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, None
    if engine == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        return accelerator.prepare(model), accelerator
    return model, None


def full_state(model: nn.Module, engine: str) -> dict[str, Tensor]:
    """The whole model's weights on CPU (FSDP2: gathered from the shards into process 0;
    the other processes get an empty dict)."""
    if engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    inner = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def _checkpoint_roundtrip(model: nn.Module, job_name: str, seed: int, folder: Path) -> float:
    """FSDP2: save the sharded weights with ``torch.distributed.checkpoint`` (each process
    writes its shards), load them into a freshly built and sharded model, and return the
    largest difference between the two models' gathered weights (0 when it works)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder))
    fresh_job = MAKE_JOB[job_name](seed + 1)  # other starting weights: the load must set all
    fresh, _ = _wrap("fsdp2", fresh_job.model.to(_device(model)), fresh_job, _device(model))
    state = {"model": get_model_state_dict(fresh)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(fresh, state["model"])
    a, b = full_state(model, "fsdp2"), full_state(fresh, "fsdp2")  # in process 0 only
    diff = torch.tensor(
        max((float((a[k].float() - b[k].float()).abs().max()) for k in a), default=0.0)
    )
    dist.broadcast(diff, src=0)
    return float(diff)


def train(
    job_name: str,
    engine: str = "single",
    *,
    steps: int = 20,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    out: Path | None = None,
    checkpoint: Path | None = None,
) -> Result:
    """Run ``job_name`` ("lora" or "sft") with ``engine`` in this process, one of ``W``
    started by ``torchrun`` or ``accelerate launch`` (``"single"``: alone). Process 0 writes
    ``result.json`` and the final weights ``model.pt`` into ``out``; ``checkpoint`` (FSDP2)
    saves a sharded checkpoint there and checks that it loads back."""
    if job_name not in JOBS or engine not in ENGINES:
        raise ValueError(f"job must be one of {JOBS} and engine one of {ENGINES}")
    if checkpoint is not None and engine != "fsdp2":
        raise ValueError("checkpoint: a sharded checkpoint is FSDP2's (engine fsdp2)")
    if engine != "single" and "RANK" not in os.environ:
        raise RuntimeError(
            f"engine {engine!r} needs several processes: start it with torchrun "
            "--nproc_per_node N -m ftcourse.distributed ... (or accelerate launch)"
        )
    cuda = torch.cuda.is_available()
    if engine in ("ddp", "fsdp2") and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    job = MAKE_JOB[job_name](seed)
    model, accelerator = _wrap(engine, job.model.to(device), job, device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    params = [p for p in model.parameters() if p.requires_grad]
    from .train import adamw_cosine

    optimizer, scheduler = adamw_cosine(params, lr, steps)
    if accelerator is not None:  # the scheduler stays ours: Accelerate would step it W times
        optimizer = accelerator.prepare(optimizer)
    result = Result(job_name, engine, world, steps, batch_size, seed, lr, unit_name=job.unit_name)
    units_done, seconds = 0, 0.0
    for step, items in enumerate(global_batches(job.num_items, batch_size, steps, seed), 1):
        start = time.perf_counter()
        total = job.units(items)
        mine = my_slice(items, rank, world)
        loss = job.loss(model, mine, total) * world  # the engines average over processes
        optimizer.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        if step == 1:
            sizes = _local_bytes(model, optimizer)
        optimizer.step()
        scheduler.step()
        seconds += time.perf_counter() - start
        units_done += total
        logged = loss.detach().float() / world
        if world > 1:
            dist.all_reduce(logged)
        result.losses.append(float(logged))
    sizes["optimizer"] = memory.optimizer_bytes(optimizer)  # allocated by the first step
    result.memory = _gather(sizes, world)
    result.seconds, result.units_per_second = seconds, units_done / seconds
    result.threads, result.device = torch.get_num_threads(), str(device)
    result.wrapped = type(model).__name__
    result.precision = precision.describe(device)
    if checkpoint is not None:
        result.checkpoint_max_diff = _checkpoint_roundtrip(model, job_name, seed, checkpoint)
    state = full_state(model, engine)
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / "model.pt")
        (out / "result.json").write_text(json.dumps(asdict(result), indent=1))
    if dist.is_initialized():
        dist.barrier()
    return result


def _gather(sizes: dict[str, int], world: int) -> list[dict[str, int]]:
    if world == 1:
        return [sizes]
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, sizes)
    return everyone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftcourse.distributed",
        description="Chapter 5's LoRA or chapter 6's SFT on one or several processes "
        "(appendix B1). Start several with torchrun or accelerate launch.",
    )
    parser.add_argument("--job", choices=JOBS, default="sft")
    parser.add_argument("--engine", choices=ENGINES, default="single")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for result.json and model.pt")
    parser.add_argument("--checkpoint", type=Path, help="FSDP2: a sharded checkpoint here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1")
    result = train(
        args.job,
        args.engine,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        checkpoint=args.checkpoint,
    )
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"{result.job} on {result.engine} x{result.world}: loss {result.losses[0]:.4f} -> "
            f"{result.losses[-1]:.4f} in {result.seconds:.1f} s "
            f"({result.units_per_second:.0f} {result.unit_name}/s); per process: "
            + ", ".join(
                f"{memory.bytes_str(sum(m.values()))} (weights {memory.bytes_str(m['parameters'])})"
                for m in result.memory
            ),
            flush=True,
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
