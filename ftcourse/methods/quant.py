"""Quantized frozen weights, a first look (chapter 4); chapter 5 goes to 4 bits (QLoRA).

A frozen weight is only read, never updated, so it can be stored in fewer bits and turned back
into floating point when it is used. Here: symmetric int8 with one scale per output channel
(per row of a linear layer's weight, per token of an embedding table), ``w ~ q * s`` with
``s = max|w_row| / 127`` and ``q = round(w / s)`` in -127..127. A trainable adapter on top keeps
training in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._surgery import replace_module

__all__ = ["Int8Embedding", "Int8Linear", "dequantize_int8", "quantize_int8", "quantize_model_int8"]


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
