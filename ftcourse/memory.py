"""Parameter counts, and where the memory of a training step goes: measured and estimated.

Chapter 0 prints parameter counts; chapter 4 takes a training step apart: the exact bytes of the
weights, their gradients and the optimizer's state, the activations autograd saves for the
backward pass (counted with :func:`torch.autograd.graph.saved_tensors_hooks`), and the peak, read
from the PyTorch profiler on a CPU or from ``torch.cuda.max_memory_allocated`` on a GPU
(:func:`measure`). :func:`estimate` answers the same questions for a model that is never
allocated: it builds the model from its config under fake tensors (meta-device tensors that
only carry shapes and dtypes) and follows every allocation of one step. Chapters 5-7 reuse both
to compare LoRA, quantized and full training.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

GiB = 2**30
MiB = 2**20

# A Llama-2-7B-shaped config (Touvron et al. 2023, Table 1 and the released config.json): the
# "7B model" of the what-if questions. Only the shapes matter; nothing is downloaded.
LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); optionally only trainable ones."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def local(t: Tensor) -> Tensor:
    """The part of ``t`` this process holds: a sharded ``DTensor``'s local shard (FSDP2,
    appendix B1), else ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def parameter_bytes(model: nn.Module) -> int:
    """Bytes taken by the model's parameters and buffers in their current dtypes (sharded
    ones: this process's shards)."""
    tensors = {id(t): local(t) for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors count once;
    sharded ones: this process's shards)."""
    storages: dict[int, int] = {}
    for t in map(local, tensors):
        storages[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(storages.values())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors the model holds now (after ``backward``, before
    ``zero_grad(set_to_none=True)``)."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state: for AdamW two moments per trainable weight (same dtype
    as the weight) and a step counter per tensor. Empty until the first ``step()``."""
    return tensor_bytes(
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)
    )


class SavedActivations:
    """Counts what autograd saves for the backward pass inside the ``with`` block.

    Every tensor an operation keeps for its gradient passes through
    :func:`torch.autograd.graph.saved_tensors_hooks`; distinct storages are summed, and the
    parameters (which autograd also saves, e.g. a linear layer's weight) are left out: they
    are already counted as weights. Works on real and on fake tensors. Chapter 4.

    >>> with SavedActivations(model) as saved:
    ...     loss = model(x).sum()
    >>> saved.bytes, saved.count
    """

    def __init__(self, model: nn.Module) -> None:
        self._params = {_storage_key(p) for p in model.parameters()}
        self._storages: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in self._params and key not in self._storages:
            self._storages[key] = (t.untyped_storage().nbytes(), tuple(t.shape), t.dtype)
        return t

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct saved storages."""
        return sum(v[0] for v in self._storages.values())

    @property
    def count(self) -> int:
        return len(self._storages)

    def largest(self, k: int = 5) -> list[tuple[int, tuple[int, ...], torch.dtype]]:
        """The ``k`` largest saved tensors as ``(bytes, shape, dtype)``."""
        return sorted(self._storages.values(), key=lambda v: -v[0])[:k]


class LiveBytes(TorchDispatchMode):
    """Follows every storage created inside the mode until it is freed; ``peak`` is the most
    bytes alive at once, counting the ``existing`` tensors given at the start (weights,
    optimizer state). On fake tensors nothing is allocated, so this is how :func:`estimate`
    finds the peak of a model that does not fit in memory. Chapter 4."""

    def __init__(self, existing: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.current = self.peak = 0
        for t in existing:
            self._add(t)

    def _add(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += self._live[key]
        self.peak = max(self.peak, self.current)
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        tree_map_only(Tensor, self._add, out)
        return out


@dataclass(frozen=True)
class Memory:
    """Bytes of one training step, by where they go (chapter 4's table).

    ``activations`` are the tensors saved for the backward pass; ``peak`` is the most memory
    alive at once during the step, which also holds temporaries (e.g. the gradient of the
    logits) that no other column shows.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    peak: int

    @property
    def peak_over_weights(self) -> float:
        """Peak training memory as a multiple of the weights alone."""
        return self.peak / self.weights

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def relative_error(self, other: Memory) -> dict[str, float]:
        """``|self - other| / other`` per component (``other`` is the measurement)."""
        mine, ref = self.as_dict(), other.as_dict()
        return {k: abs(mine[k] - ref[k]) / ref[k] if ref[k] else float(mine[k] != 0) for k in ref}


LossFn = Callable[[nn.Module], Tensor]


def _default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return torch.optim.AdamW(trainable, lr=1e-6, foreach=True)


def _step(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer) -> None:
    loss_fn(model).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class _Peak:
    """A watcher of one step: ``peak`` holds the most bytes alive after the ``with`` block."""

    peak = 0

    def __enter__(self) -> _Peak:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _CudaPeak(_Peak):
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _CudaPeak:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)


class _ProfilerPeak(_Peak):
    """The PyTorch profiler's memory timeline on the CPU (tensors that existed before count
    too: the profiler sees them being used)."""

    def __enter__(self) -> _ProfilerPeak:
        from torch.profiler import ProfilerActivity, profile

        self._quiet = _quiet_native_stderr()
        self._quiet.__enter__()
        self._prof = profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        )
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._prof.__exit__(*exc)
        finally:
            self._quiet.__exit__(*exc)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "use the CUDA memory snapshot"
            path = Path(tmp) / "timeline.json"
            self._prof.export_memory_timeline(str(path), device="cpu")
            _, sizes = json.loads(path.read_text())
        self.peak = max(sum(row) for row in sizes)


def _measured_step(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    watch: Callable[[], _Peak | LiveBytes],
) -> Memory:
    """A warm-up step (so that the optimizer state exists, as in every later step), then one
    step watched by ``watch()``, with its saved activations and gradients counted."""
    _step(model, loss_fn, optimizer)
    with watch() as watcher:
        with SavedActivations(model) as saved:
            loss = loss_fn(model)
        loss.backward()
        grads = gradient_bytes(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    weights = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    return Memory(weights, grads, optimizer_bytes(optimizer), saved.bytes, watcher.peak)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what C++ code writes to file descriptor 2 (the profiler's start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiler_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes alive on the CPU while ``fn()`` runs, from the PyTorch profiler's memory
    timeline (tensors that existed before count too: the profiler sees them being used)."""
    with _ProfilerPeak() as watcher:
        fn()
    return watcher.peak


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer | None = None,
) -> Memory:
    """Measure one training step of ``model`` where it is (CPU or CUDA).

    ``loss_fn(model) -> loss`` runs the forward pass on a fixed batch. The optimizer (AdamW
    over the trainable parameters by default) takes a warm-up step first, so that its state
    exists, as in every step after the first. Weights, gradients and optimizer state are the
    exact bytes of those tensors; activations are counted by :class:`SavedActivations`; the
    peak comes from the PyTorch profiler's memory timeline on a CPU (:func:`profiler_peak`)
    and ``torch.cuda.max_memory_allocated`` on a GPU. The model's weights change (tiny steps
    at lr 1e-6): measure a copy. Chapter 4.
    """
    optimizer = optimizer or _default_optimizer(model)
    device = next(model.parameters()).device
    watch = (lambda: _CudaPeak(device)) if device.type == "cuda" else _ProfilerPeak
    return _measured_step(model, loss_fn, optimizer, watch)


def estimate(
    make_model: Callable[[], nn.Module],
    loss_fn: LossFn,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = _default_optimizer,
) -> Memory:
    """Estimate :func:`measure`'s figures without allocating the model.

    ``make_model()`` and ``loss_fn`` run under fake tensors (``FakeTensorMode``): every tensor
    has its shape, dtype and device but no memory, so a 7-billion-parameter model "fits" on a
    laptop. The same steps run as in :func:`measure`; activations are counted by
    :class:`SavedActivations` and the peak by :class:`LiveBytes`, which follows every tensor
    the step creates. It misses what the allocator adds (rounding, caching, fragmentation) and
    what runs outside PyTorch's operators. Chapter 4 checks it against :func:`measure`.

    >>> from transformers import AutoModelForCausalLM, LlamaConfig
    >>> config = LlamaConfig(**LLAMA_7B)
    >>> mem = estimate(lambda: AutoModelForCausalLM.from_config(config),
    ...                lm_batch_loss(1, 512, config.vocab_size))
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = make_model()
        optimizer = make_optimizer(model)

        def watch() -> LiveBytes:
            state = [v for s in optimizer.state.values() for v in s.values()]
            existing = [*model.parameters(), *model.buffers(), *state]
            return LiveBytes(t for t in existing if isinstance(t, Tensor))

        return _measured_step(model, loss_fn, optimizer, watch)


def lm_batch_loss(batch_size: int, context: int, vocab_size: int, seed: int = 0) -> LossFn:
    """``loss_fn`` for :func:`measure`/:func:`estimate`: next-token loss of a causal LM on one
    random batch of ``batch_size`` x ``context`` token ids (memory does not depend on which)."""

    def loss_fn(model: nn.Module) -> Tensor:
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_size, (batch_size, context), generator=generator)
        ids = ids.to(device)
        return model(input_ids=ids, labels=ids).loss

    return loss_fn


def bytes_str(n: float) -> str:
    """``1.2 GiB``, ``34.0 MiB``, ``512 B``: bytes for people."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
