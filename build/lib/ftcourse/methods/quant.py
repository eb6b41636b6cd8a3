"""Quantized frozen weights: int8 (chapter 4) and 4-bit NF4 for QLoRA (chapter 5).

A frozen weight is only read, never updated, so it can be stored in fewer bits and turned back
into floating point when it is used.

* int8 (chapter 4): symmetric, one scale per output channel (per row of a linear layer's
  weight, per token of an embedding table), ``w ~ q * s`` with ``s = max|w_row| / 127`` and
  ``q = round(w / s)`` in -127..127.
* NF4 (chapter 5, Dettmers et al. 2023): blocks of 64 weights, each scaled by its absolute
  maximum into [-1, 1] and rounded to the nearest of 16 levels placed at quantiles of a normal
  distribution (:func:`nf4_codebook`); two 4-bit codes per byte. Double quantization stores the
  block maxima themselves in 8 bits. Same codes as bitsandbytes (``tests/test_qlora.py``).

A trainable adapter or LoRA on top keeps training in fp32.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._surgery import replace_module

__all__ = [
    "NF4",
    "NF4Linear",
    "Int8Embedding",
    "Int8Linear",
    "dequantize_int8",
    "dequantize_model",
    "dequantize_nf4",
    "nf4_codebook",
    "quantize_int8",
    "quantize_model_int8",
    "quantize_model_nf4",
    "quantize_nf4",
]


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8: returns ``(q int8 [out, in], scale float32 [out, 1])``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """``q * scale`` in float32: the weight the layer computes with."""
    return q.float() * scale


class Int8Linear(nn.Module):
    """A frozen linear layer stored as int8 weights plus one fp32 scale per output channel
    (buffers, not parameters: nothing here trains). Computes ``x @ dequantize(q).T + b``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        w = dequantize_int8(self.q, self.scale).to(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int8Embedding(nn.Module):
    """A frozen embedding table stored as int8 with one fp32 scale per token."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.weight.shape
        self.padding_idx = embedding.padding_idx
        q, scale = quantize_int8(embedding.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    @property
    def weight(self) -> Tensor:
        """The de-quantized table (what prompt tuning reads to initialise its vectors)."""
        return dequantize_int8(self.q, self.scale)

    def forward(self, ids: Tensor) -> Tensor:
        return self.q[ids].float() * self.scale[ids]


def quantize_model_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` and ``nn.Embedding`` inside ``model`` with its int8 version,
    in place; returns how many were replaced. Tied weights are quantized once per module that
    uses them. The model is frozen: only modules added later (adapters, heads) train."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear | nn.Embedding):
            new = Int8Linear(module) if isinstance(module, nn.Linear) else Int8Embedding(module)
            replace_module(model, name, new.to(module.weight.device))
            replaced += 1
    for p in model.parameters():
        p.requires_grad_(False)
    return replaced


# --- 4-bit NormalFloat (NF4), chapter 5 -------------------------------------------------------

# QLoRA's offset: the outermost quantile used, the mean of 1 - 1/(2*15) and 1 - 1/(2*16), so that
# the extreme levels are finite and the two halves of the codebook have 8 and 7 levels.
NF4_OFFSET = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))


@functools.lru_cache(maxsize=8)
def _codebook_on(device: torch.device) -> Tensor:
    """The codebook, computed once per device (it is read in every forward and backward pass
    of an :class:`NF4Linear`)."""
    return nf4_codebook().to(device)


def nf4_codebook() -> Tensor:
    """The 16 levels of NF4, ascending, in [-1, 1]: 8 quantiles of N(0, 1) above zero, 7 below,
    and an exact zero, divided by the largest (Dettmers et al. 2023, eq. 4; bitsandbytes'
    ``create_normal_map``). Weights of a trained network are roughly normal, so levels at
    equal-probability points are used about equally often."""
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.abs().max()).float()


@dataclass
class NF4:
    """A tensor in NF4: ``codes`` (uint8, two 4-bit codes per byte, the first in the high
    nibble, as bitsandbytes packs them), one scale per ``block`` weights, and the ``shape`` to
    restore. With double quantization the scales are stored as int8 (``absmax_q``) with one
    fp32 step per 256 scales (``absmax_step``) around their mean (``absmax_mean``); otherwise
    ``absmax`` holds them in fp32."""

    codes: Tensor
    shape: tuple[int, ...]
    block: int
    absmax: Tensor | None = None
    absmax_q: Tensor | None = None
    absmax_step: Tensor | None = None
    absmax_mean: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes stored, codes and scales (and the second-level constants)."""
        parts = (self.codes, self.absmax, self.absmax_q, self.absmax_step, self.absmax_mean)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def scales(self) -> Tensor:
        """The per-block absolute maxima in fp32 (undoing double quantization if used)."""
        if self.absmax is not None:
            return self.absmax
        q = self.absmax_q.float().reshape(len(self.absmax_step), -1)
        return (q * self.absmax_step[:, None]).flatten()[: self.num_blocks] + self.absmax_mean

    @property
    def num_blocks(self) -> int:
        return math.prod(self.shape) // self.block


_SECOND_BLOCK = 256  # scales per second-level block (QLoRA's double quantization)


def quantize_nf4(weight: Tensor, block: int = 64, double: bool = False) -> NF4:
    """Blockwise NF4: split the flattened ``weight`` into blocks of ``block`` values, divide
    each block by its absolute maximum, and store the index of the nearest NF4 level.
    ``double=True`` quantizes the block maxima again (int8, symmetric around their mean, one
    fp32 step per 256 of them): 0.5 bits of scale per weight become about 0.13.

    Raises:
        ValueError: the number of weights is not a multiple of ``block`` (or is odd).
    """
    w = weight.detach().float()
    if w.numel() % block or block % 2:
        raise ValueError(f"{w.numel()} weights do not split into blocks of {block}")
    blocks = w.reshape(-1, block)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    code = _codebook_on(w.device)
    idx = torch.bucketize(normed, (code[1:] + code[:-1]) / 2).to(torch.uint8).flatten()
    codes = (idx[0::2] << 4) | idx[1::2]
    if not double:
        return NF4(codes, tuple(weight.shape), block, absmax=absmax)
    mean = absmax.mean()
    centred = absmax - mean
    pad = (-len(centred)) % _SECOND_BLOCK
    groups = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, _SECOND_BLOCK)
    step = (groups.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(groups / step[:, None]).clamp(-127, 127).to(torch.int8).flatten()
    return NF4(codes, tuple(weight.shape), block, absmax_q=q, absmax_step=step, absmax_mean=mean)


def dequantize_nf4(q: NF4) -> Tensor:
    """The fp32 weight that an NF4 tensor stands for: ``level[code] * absmax`` per block."""
    idx = torch.stack([q.codes >> 4, q.codes & 15], dim=1).flatten().long()
    values = _codebook_on(q.codes.device)[idx].reshape(-1, q.block) * q.scales()[:, None]
    return values.reshape(q.shape)


class NF4Linear(nn.Module):
    """A frozen linear layer stored in NF4 (buffers; nothing here trains). Each forward pass
    de-quantizes the weight to the input's dtype and computes ``x @ W.T + b``, as QLoRA does:
    stored in 4 bits, computed in 16 or 32. ``weight`` is the de-quantized weight, so LoRA
    (:class:`ftcourse.methods.lora.LoRALinear`) can wrap this layer like an ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, block: int = 64, double: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block, self.double = block, double
        self._store(quantize_nf4(linear.weight, block, double))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def _store(self, q: NF4) -> None:
        self._fields = [
            k
            for k in ("codes", "absmax", "absmax_q", "absmax_step", "absmax_mean")
            if getattr(q, k) is not None
        ]
        for k in self._fields:
            self.register_buffer(k, getattr(q, k))

    def nf4(self) -> NF4:
        """The stored tensor as an :class:`NF4`."""
        fields = {k: getattr(self, k) for k in self._fields}
        return NF4(shape=(self.out_features, self.in_features), block=self.block, **fields)

    @property
    def weight(self) -> Tensor:
        """The de-quantized weight, fp32 ``[out, in]``."""
        return dequantize_nf4(self.nf4())

    @torch.no_grad()
    def requantize(self, weight: Tensor) -> None:
        """Store ``weight`` in NF4 in place of the current weight (what merging a LoRA update
        into a 4-bit model has to do: the sum is rounded to the 16 levels again)."""
        self._store(quantize_nf4(weight, self.block, self.double))

    def forward(self, x: Tensor) -> Tensor:
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # compute in the autocast dtype, like nn.Linear
            x = x.to(torch.get_autocast_dtype(kind))
        out = _NF4Matmul.apply(x, self.nf4())
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        dq = ", double quantization" if self.double else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, NF4 "
            f"blocks of {self.block}{dq}"
        )


class _NF4Matmul(torch.autograd.Function):
    """``x @ dequantize(q).T`` that keeps nothing but the 4-bit tensor for the backward pass:
    the weight is de-quantized again there (as bitsandbytes does), so a frozen layer's
    full-precision weight never stays in memory. No gradient for the weight: it is frozen."""

    @staticmethod
    def forward(ctx, x: Tensor, q: NF4) -> Tensor:
        ctx.q = q  # references to the layer's buffers, no copy
        return x @ dequantize_nf4(q).to(x.dtype).T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ dequantize_nf4(ctx.q).to(grad.dtype), None


def quantize_model_nf4(
    model: nn.Module, block: int = 64, double: bool = False, skip: tuple[str, ...] = ("lm_head",)
) -> int:
    """Replace every ``nn.Linear`` inside ``model`` (except those named in ``skip``, as
    bitsandbytes keeps the output layer) with an :class:`NF4Linear`, in place, and freeze the
    model; returns how many were replaced. Embeddings and norms stay as they are, as in QLoRA.
    Layers whose size is not a multiple of ``block`` are left in full precision."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if (
            type(module) is nn.Linear
            and name.rsplit(".", 1)[-1] not in skip
            and module.weight.numel() % block == 0
        ):
            replace_module(model, name, NF4Linear(module, block, double).to(module.weight.device))
            replaced += 1
    for p in model.parameters():
        p.requires_grad_(False)
    return replaced


def dequantize_model(model: nn.Module) -> int:
    """Replace every :class:`NF4Linear` and :class:`Int8Linear` inside ``model`` (also inside a
    LoRA layer) with a frozen fp32 ``nn.Linear`` holding the de-quantized weight, in place;
    returns how many. The model computes exactly what it computed before, in full precision
    (e.g. to merge a LoRA without rounding it to 4 bits, chapter 5)."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, NF4Linear | Int8Linear):
            w = (
                module.weight
                if isinstance(module, NF4Linear)
                else dequantize_int8(module.q, module.scale)
            )
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense = dense.to(w.device)
            with torch.no_grad():
                dense.weight.copy_(w)
                if module.bias is not None:
                    dense.bias.copy_(module.bias)
            dense.requires_grad_(False)
            replace_module(model, name, dense)
            replaced += 1
    return replaced
