"""Mixed precision only where the hardware has it, and what this machine can do.

bfloat16 autocast halves the cost of matrix products on hardware with native bf16 (CUDA GPUs
from Ampere on; CPUs with AVX512-BF16 or AMX). On a CPU without it, PyTorch *emulates* bf16
and the same product is 10-100x slower than in fp32: one 512x512 matmul took 11.1 s under
bf16 autocast against 0.26 s in fp32 on an AVX2-only AMD EPYC. So every training path of the
course asks :func:`autocast_dtype` instead of assuming bf16. ``$FTCOURSE_PRECISION`` overrides
the choice: ``fp32``, ``bf16`` or ``auto`` (the default).

:func:`cpu_info` and :func:`speed_probe` feed ``ftcourse doctor``. Introduced in chapter 1
(pretraining, where the tiny LM trains under autocast); used by every training loop.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import torch

PRECISION_ENV = "FTCOURSE_PRECISION"
CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class CpuInfo:
    """What ``ftcourse doctor`` prints about the CPU."""

    model: str
    cores: int
    threads: int
    capability: str  # torch's kernel level: "AVX2", "AVX512", ...
    native_bf16: bool
    bf16_reason: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def _cpu_bf16() -> tuple[bool, str]:
    """Native CPU bf16: the instructions exist *and* oneDNN will use them."""
    has_insn = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if has_insn and onednn:
        kind = "AMX" if torch.cpu._is_amx_tile_supported() else "AVX512-BF16"
        return True, f"{kind} instructions, used by oneDNN"
    if has_insn:
        return False, "the CPU has bf16 instructions, but oneDNN is limited to a lower ISA"
    return False, f"no AVX512-BF16/AMX ({torch.backends.cpu.get_cpu_capability()} only)"


def cpu_info() -> CpuInfo:
    """The CPU model, cores, torch threads, kernel level and whether bf16 is native."""
    native, reason = _cpu_bf16()
    return CpuInfo(
        model=_cpu_model(),
        cores=os.cpu_count() or 1,
        threads=torch.get_num_threads(),
        capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=native,
        bf16_reason=reason,
    )


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively.

    CUDA: compute capability 8.0 or newer (Ampere on) for the device asked about.
    ``torch.cuda.is_bf16_supported()`` is not enough: it also counts bf16 that older GPUs
    (a T4, a V100) only emulate, slowly, and it looks at the current device, not this one.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index) >= (8, 0)
    if device.type == "cpu":
        return _cpu_bf16()[0]
    return False  # mps and others: fp32, the safe choice


def autocast_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """``torch.bfloat16`` where native bf16 exists (or ``$FTCOURSE_PRECISION=bf16``), else None.

    ``None`` means: train in fp32, no autocast. Raises ``ValueError`` for an unknown value of
    ``$FTCOURSE_PRECISION``.
    """
    choice = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{PRECISION_ENV}={choice!r}; choose one of {', '.join(CHOICES)}")
    if choice == "fp32":
        return None
    if choice == "bf16" or native_bf16(device):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def fp32() -> Iterator[None]:
    """Inside the block every :func:`autocast` is a no-op: forward passes run in fp32, for
    comparisons that must agree to 1e-4 (chapter 7 checks DPO against TRL this way)."""
    old = os.environ.get(PRECISION_ENV)
    os.environ[PRECISION_ENV] = "fp32"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PRECISION_ENV, None)
        else:
            os.environ[PRECISION_ENV] = old


def autocast(device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The autocast context every training loop of the course runs its forward pass in."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype is None or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe(device: torch.device | str = "cpu") -> str:
    """One line for notebooks: the precision the training loops will use on ``device``."""
    dtype = autocast_dtype(device)
    return "bf16 autocast" if dtype is torch.bfloat16 else "fp32"


def matmul_gflops(dtype: torch.dtype | None = None, size: int = 512, seconds: float = 0.3) -> float:
    """Measured throughput of ``size x size`` matrix products on the CPU, in GFLOP/s.

    ``dtype=torch.bfloat16`` runs them under bf16 autocast (what training would do). One
    warm-up product, then as many as fit in about ``seconds``.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        a @ b
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or (count >= 1 and elapsed >= 5 * seconds):
                break
    return 2 * size**3 * count / elapsed / 1e9


def speed_probe(seconds: float = 0.3) -> dict[str, float]:
    """fp32 matmul GFLOP/s, and bf16 where it is native (emulated bf16 is not worth timing)."""
    result = {"fp32_gflops": matmul_gflops(None, seconds=seconds)}
    if native_bf16("cpu"):
        result["bf16_gflops"] = matmul_gflops(torch.bfloat16, seconds=seconds)
    return result


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks cuda > mps > cpu; any other string is passed to ``torch.device``."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
