"""PPO with a KL penalty to the SFT model, from scratch, to be read end to end (chapter 7).

One step of RLHF's last stage (Ouyang et al. 2022; PPO: Schulman et al. 2017):

1. **Roll out**: sample ``group_size`` responses to each of a batch of prompts from the
   policy (temperature 1, no top-k: the log-probabilities below are those of the sampling).
2. **Score**: the reward model scores each response (or any function of the text: chapter 7's
   positive control passes the true rater itself); the per-token KL to the frozen
   reference (the SFT model), ``log pi(y_t) - log pi_ref(y_t)`` on the sampled tokens, is
   summed over the response and subtracted, times ``kl_coef``: the reward the policy maximises
   is ``r(x, y) - kl_coef * KL(pi || pi_ref)``.
3. **Advantage**: a *group baseline* instead of a value head (as in RLOO and GRPO): each
   response's reward minus the mean reward of the responses to the same prompt, scaled by the
   batch's standard deviation. Every token of a response gets its response's advantage.
4. **Update**: ``epochs`` gradient steps on the clipped objective
   ``min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)``, ``rho = pi / pi_old`` per token, which
   stops one batch of samples from moving the policy far from the one that drew them.

TRL removed its ``PPOTrainer``; this module is the whole algorithm at this size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import lm
from ..precision import autocast
from ..train import show_progress
from .reward import RewardModel

Reward = RewardModel | Callable[[list[str], list[str]], list[float]]
"""What scores a response, either a reward model or a function ``f(prompts, responses)`` of the
text that returns one score per response (the rater itself, in chapter 7's positive control)."""


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``[N, L]`` sampled estimate of the KL to the reference at each response token:
    ``log pi(y_t) - log pi_ref(y_t)``, zero where ``mask`` is 0 (prompt and pads). Its sum over
    a response sampled from ``pi`` estimates ``KL(pi || pi_ref)`` for that prompt, in nats."""
    return (logprobs - ref_logprobs) * mask


def group_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """``[N]`` advantages of ``rewards`` ``[N]`` laid out prompt by prompt, ``group_size``
    responses each: reward minus its group's mean, divided by the standard deviation of the
    whole batch (not per group, so a group whose responses all score the same gets zeros)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)
    centred = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    return centred / (centred.std() + 1e-8) if centred.numel() > 1 else centred


def clipped_objective(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> Tensor:
    """PPO's clipped surrogate, as a loss to minimise (a scalar).

    ``logprobs``, ``old_logprobs`` and ``mask`` are ``[N, L]`` (the policy now, the policy that
    sampled, 1 on response tokens); ``advantages`` is ``[N]``. Per token,
    ``-min(rho * A, clip(rho, 1 - clip, 1 + clip) * A)`` with ``rho = exp(logprobs -
    old_logprobs)``, averaged over the response tokens of the batch."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class Rollout:
    """Samples of one step, right-padded: ``input_ids``/``attention_mask`` ``[N, T]``;
    ``mask``, ``logprobs`` (the sampling policy) and ``ref_logprobs`` ``[N, T-1]`` aligned with
    :func:`ftcourse.lm.token_logprobs` (entry ``t`` is the token at ``t + 1``); ``scores``
    ``[N]`` from the reward model; ``prompts``/``responses`` as text (without the end token)."""

    prompts: list[str]
    responses: list[str]
    input_ids: Tensor
    attention_mask: Tensor
    mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    scores: Tensor

    @property
    def kl(self) -> Tensor:
        """``[N]`` KL to the reference of each response (nats, summed over its tokens)."""
        return kl_per_token(self.logprobs, self.ref_logprobs, self.mask).sum(dim=1)


@torch.no_grad()
def rollout(
    policy: nn.Module,
    reference: nn.Module,
    reward_model: Reward,
    tokenizer,
    prompts: Sequence[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> Rollout:
    """Sample ``group_size`` responses per prompt and score them (steps 1-2 above).

    A response ends after the chat's end token (kept, so the policy learns when to stop) or at
    ``max_new_tokens``."""
    repeated = [p for p in prompts for _ in range(group_size)]
    new = lm._new_tokens(
        policy, tokenizer, repeated, True, max_new_tokens, seed, len(repeated),
        do_sample=True, temperature=temperature, top_k=0,
    )  # fmt: skip
    stops = set(lm.stop_token_ids(tokenizer))
    rows, labels, responses = [], [], []
    for prompt, row in zip(repeated, new, strict=True):
        cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
        head = lm.encode_chat(tokenizer, prompt)[0]
        rows.append(head + row[:cut])
        labels.append([lm.IGNORE] * len(head) + row[:cut])
        responses.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    ids, attention = lm.pad(rows, tokenizer.pad_token_id, "right")
    target, _ = lm.pad(labels, lm.IGNORE, "right")
    mask = (target[:, 1:] != lm.IGNORE).float()
    policy.eval()
    logprobs = lm.token_logprobs(policy, ids, attention).cpu() * mask
    ref_logprobs = lm.token_logprobs(reference, ids, attention).cpu() * mask
    if isinstance(reward_model, nn.Module):
        device = next(reward_model.parameters()).device
        reward_model.eval()
        with autocast(device):
            scores = reward_model(ids.to(device), attention.to(device)).float().cpu()
    else:  # a function of the text (the rater: an oracle reward)
        scores = torch.tensor(reward_model(repeated, responses), dtype=torch.float32)
    return Rollout(repeated, responses, ids, attention, mask, logprobs, ref_logprobs, scores)


@dataclass
class History:
    """What :func:`ppo` logged: one row per step (``step``, ``reward`` = mean reward-model score
    of the samples, ``kl`` = their mean KL in nats, ``true_score`` when a rater was given,
    ``seconds``), and one row per evaluation (``step`` plus what ``evaluate`` returned)."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    def series(self, key: str, evals: bool = False) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one logged quantity, for a plot."""
        rows = [r for r in (self.evals if evals else self.steps) if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]


def ppo(
    policy: nn.Module,
    reference: nn.Module,
    reward_model: Reward,
    tokenizer,
    prompts: Sequence[str],
    *,
    kl_coef: float,
    num_steps: int,
    lr: float,
    prompts_per_step: int = 16,
    group_size: int = 4,
    epochs: int = 2,
    clip: float = 0.2,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    rater: Callable[[list[str], list[str]], list[float]] | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    eval_every: int = 10,
    progress: bool | str = False,
) -> History:
    """Optimise ``policy`` against ``reward_model`` with PPO and a KL penalty to ``reference``.

    Each step draws ``prompts_per_step`` prompts (shuffled with ``seed``), rolls out
    ``group_size`` responses each (:func:`rollout`), turns ``score - kl_coef * KL`` into group
    advantages (:func:`group_advantages`) and takes ``epochs`` AdamW steps at ``lr`` on
    :func:`clipped_objective`. ``reward_model`` may be a function of the text instead
    (:data:`Reward`). ``rater(prompts, responses)`` adds the true score of the
    samples to the log (it never reaches the policy); ``evaluate(policy)`` runs every
    ``eval_every`` steps and at the start and the end. ``reference`` and ``reward_model`` are
    not changed. Returns a :class:`History`. Chapter 7.
    """
    if not prompts:
        raise ValueError("no prompts")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, not {kl_coef}")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    history, order, seconds = History(), [], 0.0
    if evaluate is not None:
        history.evals.append({"step": 0, **evaluate(policy)})
    label = progress if isinstance(progress, str) else f"PPO (KL coef {kl_coef:g})"
    for step in tqdm(
        range(1, num_steps + 1), desc=label, disable=not show_progress(progress), leave=False
    ):
        start = time.perf_counter()
        if len(order) < prompts_per_step:
            order = torch.randperm(len(prompts), generator=generator).tolist()
        batch = [prompts[order.pop()] for _ in range(prompts_per_step)]
        roll = rollout(
            policy, reference, reward_model, tokenizer, batch, group_size=group_size,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed * 100_003 + step,
        )  # fmt: skip
        rewards = roll.scores - kl_coef * roll.kl
        advantages = group_advantages(rewards, group_size).to(device)
        mask, old = roll.mask.to(device), roll.logprobs.to(device)
        policy.train()
        for _ in range(epochs):
            logprobs = lm.token_logprobs(policy, roll.input_ids, roll.attention_mask) * mask
            loss = clipped_objective(logprobs, old, advantages, mask, clip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        seconds += time.perf_counter() - start
        row = {"step": step, "reward": roll.scores.mean().item(), "kl": roll.kl.mean().item(),
               "seconds": seconds}  # fmt: skip
        if rater is not None:
            row["true_score"] = sum(rater(roll.prompts, roll.responses)) / len(roll.prompts)
        history.steps.append(row)
        if evaluate is not None and (step % eval_every == 0 or step == num_steps):
            history.evals.append({"step": step, **evaluate(policy)})
    policy.eval()
    return history
