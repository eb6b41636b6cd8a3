"""A reward model: an LM body with a scalar head, trained on preferences (chapter 7).

The body is the SFT model's transformer (without its next-token head); a linear head turns the
hidden state of the *last non-pad token* (the end token of the answer, which has read the
whole exchange) into one number. Trained with the Bradley-Terry loss, the difference of two
scores becomes the log-odds that the rater prefers the first answer (Christiano et al. 2017;
Ouyang et al. 2022).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import lm
from ..precision import autocast
from ..train import Checkpoints, Curve, adamw_cosine, clipped_step, shuffled_batches
from .feedback import Preference


class RewardModel(nn.Module):
    """``score(input_ids [B, T], attention_mask [B, T]) -> [B]``: a scalar per sequence.

    ``causal_lm`` is copied; its body (``base_model``: embeddings and blocks) is kept and a
    fresh ``Linear(hidden, 1)`` head reads the hidden state at the last position where
    ``attention_mask`` is 1 (sequences are right-padded).
    """

    def __init__(self, causal_lm: nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(causal_lm.base_model)
        hidden = causal_lm.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # [B]: index of the last non-pad token
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled.float()).squeeze(-1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """``-log sigmoid(r_chosen - r_rejected)``, averaged: the scores ``[B]`` of the preferred
    and the other response. Its minimum pushes the preferred score up and the other down;
    only differences matter, so a constant added to every score changes nothing."""
    return -nn.functional.logsigmoid(chosen - rejected).mean()


def _encode(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> tuple[Tensor, Tensor]:
    encoded = [lm.encode_chat(tokenizer, p, r)[0] for p, r in zip(prompts, responses, strict=True)]
    return lm.pad(encoded, tokenizer.pad_token_id, "right")


@torch.no_grad()
def score(
    model: RewardModel,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 128,
) -> Tensor:
    """``[N]`` reward-model scores of ``responses`` to ``prompts`` (on the CPU, as float32)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = _encode(tokenizer, prompts[i : i + batch_size], responses[i : i + batch_size])
        with autocast(device):
            out.append(model(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(
    model: RewardModel, tokenizer, pairs: Sequence[Preference], truth: bool = False
) -> float:
    """Share of ``pairs`` where the chosen response scores higher than the rejected one.

    ``truth=True`` scores against the noiseless rater (a flipped label counts the other way
    round): what the reward model learned of the quality, not of the noise."""
    if not pairs:
        raise ValueError("no pairs to score")
    prompts = [p.prompt for p in pairs]
    chosen = score(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = score(model, tokenizer, prompts, [p.rejected for p in pairs])
    agree = chosen > rejected
    if truth:
        agree = agree == torch.tensor([p.truly_better for p in pairs])
    return agree.float().mean().item()


def train_reward_model(
    model: RewardModel,
    pairs: Sequence[Preference],
    *,
    tokenizer,
    lr: float,
    max_steps: int,
    batch_size: int = 32,
    val_pairs: Sequence[Preference] | None = None,
    eval_every: int = 25,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
) -> Curve:
    """Fit ``model`` to ``pairs`` with the Bradley-Terry loss (AdamW, warm-up then cosine).

    Every ``eval_every`` steps the pairwise accuracy on ``val_pairs`` (against their labels,
    which is all a practitioner has) scores a checkpoint, and the model ends with the best one.
    Returns a :class:`ftcourse.train.Curve`. Chapter 7.
    """
    if not pairs:
        raise ValueError("no preference pairs")
    device = next(model.parameters()).device
    optimizer, scheduler = adamw_cosine(model.parameters(), lr, max_steps)
    checkpoints = Checkpoints(model, lr)
    seconds, losses, step = 0.0, [], 0
    for step, index in shuffled_batches(
        len(pairs), batch_size, max_steps, generator, progress, "reward model"
    ):
        start = time.perf_counter()
        batch = [pairs[i] for i in index]
        prompts = [p.prompt for p in batch] * 2
        responses = [p.chosen for p in batch] + [p.rejected for p in batch]
        ids, mask = _encode(tokenizer, prompts, responses)
        model.train()
        with autocast(device):
            scores = model(ids.to(device), mask.to(device)).float()
        loss = bradley_terry_loss(scores[: len(batch)], scores[len(batch) :])
        clipped_step(loss, optimizer, model.parameters(), scheduler)
        losses.append(loss.item())
        seconds += time.perf_counter() - start
        if val_pairs and (step % eval_every == 0 or step == max_steps):
            recent = losses[-eval_every:]
            checkpoints.record(
                step,
                pairwise_accuracy(model, tokenizer, val_pairs),
                seconds=seconds,
                train_loss=sum(recent) / len(recent),
            )
    curve = checkpoints.finish(steps_run=step)
    model.eval()
    return curve
