"""Prompt tuning (Lester et al., 2021), taught in chapter 4.

A few learnable vectors, the *soft prompt*, are put in front of the token embeddings of a frozen
model. Nothing inside the model changes: the prompt steers it through attention alone, and a
task is stored as ``length x width`` numbers (a few KB), so one frozen model serves many tasks by
swapping prompts. ``tests/test_methods.py`` checks that :class:`PromptTuned` gives the same
outputs as peft's ``PromptTuningConfig`` for the same prompt vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .partial import freeze

__all__ = ["PromptTuned", "prompt_tune"]


class PromptTuned(nn.Module):
    """``model`` (frozen by :func:`prompt_tune`) with ``length`` learnable vectors prepended.

    ``forward(input_ids, attention_mask=None, labels=None, **kwargs)`` embeds the tokens with
    the model's own embedding layer, puts ``prompt [length, width]`` in front, extends the
    attention mask with ones and the labels with -100 (no loss on the prompt), and calls
    ``model(inputs_embeds=...)``: exactly what peft's prompt tuning does. With ``strip`` the
    prompt's positions are cut from the outputs (``logits``, ``last_hidden_state``), so the
    result lines up with ``input_ids`` and a pooling classifier can use it unchanged.

    ``init="vocab"`` starts the prompt from the embeddings of ``length`` random tokens (Lester
    et al. found sampled-vocabulary initialisation better than random vectors); ``"random"``
    draws them with the embedding table's standard deviation.
    """

    def __init__(
        self,
        model: nn.Module,
        length: int,
        init: str = "vocab",
        seed: int = 0,
        strip: bool = True,
    ) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"length must be >= 1, not {length}")
        if init not in ("vocab", "random"):
            raise ValueError(f"init must be 'vocab' or 'random', not {init!r}")
        self.model = model
        self.strip = strip
        table = model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(seed)
        if init == "vocab":
            ids = torch.randint(0, table.shape[0], (length,), generator=generator)
            start = table.detach()[ids.to(table.device)].float().clone()
        else:
            start = torch.randn(length, table.shape[1], generator=generator) * table.detach().std()
        self.prompt = nn.Parameter(start.to(table.device))

    @property
    def length(self) -> int:
        return self.prompt.shape[0]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,  # noqa: ANN003 - passed to the model
    ):  # noqa: ANN201 - the model's own output type
        embeds = self.model.get_input_embeddings()(input_ids)
        batch = embeds.shape[0]
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([prompt, embeds], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch, self.length)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, self.length), -100), labels], dim=1)
            kwargs["labels"] = labels
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        if self.strip:
            for key in ("logits", "last_hidden_state"):
                if getattr(out, key, None) is not None:
                    setattr(out, key, getattr(out, key)[:, self.length :])
        return out


def prompt_tune(model: nn.Module, length: int, init: str = "vocab", seed: int = 0) -> PromptTuned:
    """Freeze ``model`` and return it wrapped with a trainable soft prompt of ``length``
    vectors (the only trainable parameters)."""
    freeze(model)
    return PromptTuned(model, length, init=init, seed=seed)
