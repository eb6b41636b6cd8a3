"""Direct preference optimisation (Rafailov et al. 2023), from scratch (chapter 7).

DPO skips the reward model and the sampling: the policy's log-probability ratio to the
reference *is* the reward, ``beta * (log pi(y|x) - log pi_ref(y|x))``, and the Bradley-Terry
loss on the rater's pairs is applied to it directly. An optional likelihood term on the chosen
answers (``sft_weight``; TRL calls it ``rpo_alpha``) keeps the chosen answers likely, not only
likelier than the rejected ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import lm
from ..train import Curve, adamw_cosine, clipped_step, shuffled_batches
from .feedback import Preference


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO loss and the implicit rewards.

    Args:
        policy_chosen, policy_rejected: ``[B]`` summed log-probabilities of the chosen and the
            rejected responses (their tokens and end token) under the policy.
        ref_chosen, ref_rejected: ``[B]`` the same under the frozen reference.
        beta: how far from the reference the policy may move (0.1 is typical).
    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``: the scalar
        ``-mean(log sigmoid(beta * ((pc - rc) - (pr - rr))))`` and the ``[B]`` implicit
        rewards ``beta * (pc - rc)`` and ``beta * (pr - rr)`` (detached).
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -nn.functional.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


def _batch(tokenizer, pairs: Sequence[Preference]) -> dict:
    """Chosen responses first, then rejected ones, in one right-padded batch ``[2B, T]``."""
    return lm.collate(
        tokenizer, [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    )


def _token_logprobs(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """``([2B, T-1] log-probs on response tokens, [2B, T-1] mask)``."""
    logp = lm.token_logprobs(model, batch["input_ids"], batch["attention_mask"])
    mask = (batch["labels"][:, 1:] != lm.IGNORE).to(logp.device)
    return logp * mask, mask


@torch.no_grad()
def preference_logprobs(
    model: nn.Module, tokenizer, pairs: Sequence[Preference], batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """``([B] chosen, [B] rejected)`` summed log-probabilities of each pair's responses."""
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        part = pairs[i : i + batch_size]
        logp, _ = _token_logprobs(model, _batch(tokenizer, part))
        sums = logp.sum(dim=1).cpu()
        chosen.append(sums[: len(part)])
        rejected.append(sums[len(part) :])
    return torch.cat(chosen), torch.cat(rejected)


def dpo(
    policy: nn.Module,
    reference: nn.Module,
    pairs: Sequence[Preference],
    *,
    tokenizer,
    lr: float,
    max_steps: int,
    beta: float = 0.1,
    sft_weight: float = 0.0,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: bool | str = False,
) -> Curve:
    """Train ``policy`` on the rater's ``pairs`` with :func:`dpo_loss` against ``reference``.

    The reference's log-probabilities are computed once. AdamW with warm-up then cosine decay;
    ``sft_weight`` adds that times the mean next-token loss on the chosen responses. Returns a
    :class:`ftcourse.train.Curve` with the training loss per step and, as ``train_acc``, the
    share of pairs whose implicit reward ranks the chosen response first. Chapter 7.
    """
    if not pairs:
        raise ValueError("no preference pairs")
    ref_chosen, ref_rejected = preference_logprobs(reference, tokenizer, pairs)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_cosine(params, lr, max_steps)
    curve, seconds = Curve(lr=lr), 0.0
    for step, index in shuffled_batches(
        len(pairs), batch_size, max_steps, generator, progress, "DPO"
    ):
        start = time.perf_counter()
        policy.train()
        logp, mask = _token_logprobs(policy, _batch(tokenizer, [pairs[i] for i in index]))
        sums, b = logp.sum(dim=1), len(index)
        loss, chosen, rejected = dpo_loss(
            sums[:b], sums[b:], ref_chosen[index].to(sums.device),
            ref_rejected[index].to(sums.device), beta,
        )  # fmt: skip
        if sft_weight:
            loss = loss - sft_weight * logp[:b].sum() / mask[:b].sum()
        clipped_step(loss, optimizer, params, scheduler)
        seconds += time.perf_counter() - start
        curve.step.append(step)
        curve.train_loss.append(loss.item())
        curve.train_acc.append((chosen > rejected).float().mean().item())
        curve.seconds.append(seconds)
        curve.steps_run = step
    policy.eval()
    return curve
