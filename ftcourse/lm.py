"""Language-model helpers shared by chapter 1 and chapters 4-7: tokens in, losses and text out.

Shapes use ``B`` for batch, ``T`` for sequence length and ``V`` for the vocabulary. Every
function runs on the model's device (``next(model.parameters()).device``), and every training
forward pass uses :func:`ftcourse.precision.autocast` (bf16 only where the hardware has it).

* the chat format: :data:`CHAT_TEMPLATE`, :func:`train_tokenizer`, :func:`encode_chat`,
  :func:`stop_token_ids`;
* pretraining: :func:`encode_corpus`, :func:`lm_batches`, :func:`train_lm`, :func:`lm_loss`;
* fine-tuning on chats: :func:`pad` (right for training, left for generation),
  :func:`collate`, :func:`next_token_loss` (masked to the response), :func:`sequence_logprobs`;
* text out: :func:`generate` (batched, left-padded, seeded), :func:`sample`, :func:`exact_match`;
* training: :func:`sft` (supervised fine-tuning on chats), :class:`Classifier` (an LM body
  with a classification head) and :func:`pooled_features` (for a linear probe).

Labels follow the Hugging Face convention: ``labels[b, t]`` is the target of position ``t``
*before* shifting, ``-100`` where no loss is taken. transformers' causal LMs shift labels
themselves; the functions here shift once, explicitly, and never pass ``labels`` to the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .precision import autocast
from .train import (
    Checkpoints,
    adamw_cosine,
    clipped_step,
    cosine_schedule,
    show_progress,
    shuffled_batches,
)

IGNORE = -100
"""Label value that takes no loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TOKENS = ["<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""tiny-lm's chat format, ``<|user|> question<|end|><|assistant|> answer<|end|>``.

The space after the role token belongs to the first word of the content, so an answer is
tokenized as it is in running text (``" hound"``, not ``"hound"``: byte-level BPE gives the two
different tokens). The generation prompt ends at ``<|assistant|>``; the model writes the space.
"""


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096):
    """A byte-level BPE tokenizer with single-digit tokens and the chat special tokens.

    Returns a transformers fast tokenizer with ``eos_token="<|endoftext|>"`` (between
    documents), ``pad_token="<|pad|>"`` and :data:`CHAT_TEMPLATE`. Taught in chapter 1.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the chat end token(s) and the tokenizer's eos token."""
    ids = []
    for token in ("<|end|>", "<|im_end|>", tokenizer.eos_token):
        if token is None:
            continue
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids


def reinit_chat_tokens(model: nn.Module, tokenizer, seed: int) -> None:
    """Give the chat special tokens fresh random embeddings (std of the embedding matrix).

    They never occur in the pretraining text, so pretraining pushes their embeddings together
    (cosine ~0.999); fresh vectors keep ``<|user|>``, ``<|assistant|>`` and ``<|end|>``
    distinguishable for instruction tuning (chapter 6).
    """
    emb = model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(CHAT_TOKENS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        std = emb.std().item()
        emb[ids] = (torch.randn(len(ids), emb.shape[1], generator=g) * std).to(emb)


# --------------------------------------------------------------------------- pretraining


def encode_corpus(tokenizer, texts: Sequence[str], cache: bool = True) -> Tensor:
    """One long 1-D tensor ``[N]`` of token ids; documents separated by the eos token.

    Tokenizing the corpus takes seconds, so with ``cache`` the result is kept in the data
    cache (``<cache>/tokens/``), keyed by the tokenizer's vocabulary and the texts.
    """
    from . import data

    key = hashlib.sha256()
    key.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for text in texts:
        key.update(hashlib.sha256(text.encode()).digest())
    path = data.cache_dir() / "tokens" / f"{key.hexdigest()[:24]}.pt"
    if cache and path.is_file():
        return torch.load(path, weights_only=True)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    tokens = torch.tensor(ids, dtype=torch.long)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(tokens, tmp)
            tmp.replace(path)
        except OSError:  # a read-only (shared) data cache: tokenize again next time
            pass
    return tokens


def lm_batches(
    tokens: Tensor, num_steps: int, batch_size: int, context: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Yield ``num_steps`` batches ``[B, context + 1]`` of windows at random offsets."""
    for _ in range(num_steps):
        starts = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=generator)
        yield torch.stack([tokens[s : s + context + 1] for s in starts.tolist()])


@torch.no_grad()
def lm_loss(
    model: nn.Module,
    tokens: Tensor,
    context: int = 128,
    batch_size: int = 64,
    max_windows: int | None = None,
    spread: bool = False,
) -> float:
    """Mean next-token cross-entropy over consecutive windows of ``tokens [N]`` (nats/token).

    ``exp`` of it is the perplexity. Computed in fp32 on the model's device, so the number
    does not depend on the hardware. ``max_windows`` keeps the first windows, or with
    ``spread=True`` windows evenly spaced over all of ``tokens`` (so that a text made of
    several works is measured on each of them: chapter 1).
    """
    usable = (len(tokens) - 1) // context * context
    starts = list(range(0, usable, context))
    if spread and max_windows is not None and len(starts) > max_windows:
        step = (len(starts) - 1) / max(max_windows - 1, 1)
        starts = [starts[round(i * step)] for i in range(max_windows)]
    starts = starts[:max_windows]
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        batch = torch.stack([tokens[s : s + context + 1] for s in starts[i : i + batch_size]])
        batch = batch.to(_device(model))
        logits = model(input_ids=batch[:, :-1]).logits.float()
        total += nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += batch[:, 1:].numel()
    return total / count


def train_lm(
    model: nn.Module,
    tokens: Tensor,
    *,
    num_steps: int,
    lr: float,
    batch_size: int = 32,
    context: int = 128,
    warmup: int = 100,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool | str = True,
    eval_every: int = 0,
    eval_fn=None,
) -> list[float]:
    """Next-token pretraining with AdamW, warm-up and cosine decay; returns the step losses.

    With ``eval_every``, ``eval_fn(step, model)`` is called every ``eval_every`` steps (the
    validation curve of the model card). The forward pass runs under
    :func:`ftcourse.precision.autocast`. Chapter 1.
    """
    generator = generator or torch.Generator().manual_seed(0)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = cosine_schedule(num_steps, warmup=warmup, floor=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    label = progress if isinstance(progress, str) else "pretrain"
    bar = tqdm(
        lm_batches(tokens, num_steps, batch_size, context, generator),
        total=num_steps,
        desc=label,
        disable=not show_progress(progress),
        leave=False,
    )
    model.train()
    for batch in bar:
        batch = batch.to(device)
        with autocast(device):
            loss = next_token_loss(model, batch)
        clipped_step(loss, optimizer, model.parameters(), scheduler)
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
        if eval_every and eval_fn is not None and len(losses) % eval_every == 0:
            eval_fn(len(losses), model)
            model.train()
    return losses


# --------------------------------------------------------------------------- chats


def encode_chat(
    tokenizer, prompt: str, response: str | None = None, end_token: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one exchange in the tokenizer's chat template.

    Returns ``(input_ids, labels)``, two lists of equal length. The labels are ``IGNORE`` on
    the prompt (everything up to and including the assistant marker) and equal to the ids on
    the response *and its end token*: a model that never sees the end token in its labels
    never learns to stop. ``end_token=False`` takes the end token (and whatever the template
    writes after it) out of the labels: the mistake chapter 6 measures, which a collator makes
    silently when the pad token is the end token and pads are masked. Without ``response`` it
    returns the generation prompt (no labels).
    """
    user = [{"role": "user", "content": prompt}]
    head = _template_ids(tokenizer, user, add_generation_prompt=True)
    if response is None:
        return head, [IGNORE] * len(head)
    full = _template_ids(tokenizer, user + [{"role": "assistant", "content": response}])
    if full[: len(head)] != head:
        raise ValueError("the chat template does not extend the prompt: cannot mask it")
    labels = [IGNORE] * len(head) + full[len(head) :]
    if not end_token:
        stops = set(stop_token_ids(tokenizer))
        ends = [i for i in range(len(head), len(full)) if full[i] in stops]
        if not ends:
            raise ValueError("the chat template writes no end token after the response")
        labels[ends[-1] :] = [IGNORE] * (len(full) - ends[-1])
    return full, labels


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False):
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def pad(
    sequences: Sequence[Sequence[int]], value: int, side: str = "right"
) -> tuple[Tensor, Tensor]:
    """Pad token lists to one length: ``(ids [B, T], attention_mask [B, T])``.

    ``side="right"`` for training (positions line up from the start); ``"left"`` for
    generation, so every prompt ends at the last column where the new tokens are appended.
    """
    if side not in {"left", "right"}:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if not sequences:
        raise ValueError("nothing to pad")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        cols = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def collate(
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    loss_on: str = "response",
    end_token: bool = True,
) -> dict:
    """A right-padded training batch from ``(prompt, response)`` pairs: the SFT collator.

    Returns ``{"input_ids": [B, T], "attention_mask": [B, T], "labels": [B, T]}``. With
    ``loss_on="all"`` the labels cover every non-pad token (the chapter-6 comparison);
    ``"response"`` masks the prompt. ``end_token=False`` leaves the end token out of the
    labels (:func:`encode_chat`). Pads never take a loss. Chapter 6.
    """
    if loss_on not in {"response", "all"}:
        raise ValueError(f"loss_on must be 'response' or 'all', not {loss_on!r}")
    if not pairs:
        raise ValueError("no (prompt, response) pairs to collate")
    encoded = [encode_chat(tokenizer, p, r, end_token) for p, r in pairs]
    ids, mask = pad([e[0] for e in encoded], tokenizer.pad_token_id, "right")
    labels, _ = pad([e[1] for e in encoded], IGNORE, "right")
    if loss_on == "all":
        labels = torch.where(labels == IGNORE, ids, labels).masked_fill(mask == 0, IGNORE)
        if not end_token:  # keep the end token (and what follows it) out of the labels
            response_end = [
                len(e[1]) - next(j for j, v in enumerate(reversed(e[1])) if v != IGNORE)
                for e in encoded
            ]
            for row, end in enumerate(response_end):
                labels[row, end:] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """``[B, T-1]`` log-probabilities of the next tokens.

    Entry ``t`` is log p(ids[t+1] | ids[:t+1]). The forward pass runs under
    :func:`ftcourse.precision.autocast`: in bf16 a padded batch and the same sequence alone
    agree to ~0.02 nats, in fp32 to ~1e-5.
    """
    device = _device(model)
    input_ids = input_ids.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def next_token_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Mean next-token cross-entropy over the labelled positions (a scalar with gradient).

    ``input_ids``, ``attention_mask`` and ``labels`` are ``[B, T]``; ``labels`` defaults to
    the ids (every token counts). The logits at position ``t`` are scored against
    ``labels[:, t + 1]``; positions labelled ``IGNORE`` take no loss. ``reduction="sum"``
    sums instead (appendix B1 divides by the labelled tokens of the whole global batch).
    """
    device = _device(model)
    input_ids = input_ids.to(device)
    labels = input_ids if labels is None else labels.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    return nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )


def sequence_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """``[B]`` summed log-probability of each sequence's labelled tokens (the response).

    The quantity DPO and PPO compare between a policy and its reference (chapter 7). Pads and
    prompt tokens (``labels == IGNORE``) count zero.
    """
    logp = token_logprobs(model, input_ids, attention_mask)
    target = labels[:, 1:].to(logp.device)
    return (logp * (target != IGNORE)).sum(dim=1)


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    chat: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[str]:
    """Answers to ``prompts``, generated in left-padded batches; returns the new text only.

    With ``chat`` each prompt is wrapped in the chat template with the generation prompt, and
    generation stops at the end token (:func:`stop_token_ids`); the stop token is not part of
    the returned text. Sampling is seeded with ``torch.manual_seed(seed)`` (``generate``
    ignores a ``torch.Generator``); greedy decoding gives the same answer for a prompt whether
    it is generated alone or in a padded batch (a test checks it). ``top_k=0`` samples from
    the whole distribution (chapter 7 needs the policy's own probabilities).
    """
    stops = stop_token_ids(tokenizer)
    out: list[str] = []
    for row in _new_tokens(
        model,
        tokenizer,
        prompts,
        chat,
        max_new_tokens,
        seed,
        batch_size,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,  # 0 disables top-k (None would take transformers' default of 50)
    ):
        cut = next((j for j, t in enumerate(row) if t in stops), len(row))
        out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return out


def newline_token_ids(tokenizer) -> list[int]:
    """The ids of every token that holds a line break (byte-level BPE writes it ``Ċ``)."""
    vocab = tokenizer.get_vocab()
    return sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))


@torch.no_grad()
def _new_tokens(
    model, tokenizer, prompts, chat, max_new_tokens, seed, batch_size, stops=None, **sampling
):
    """The generated token ids of each prompt (left-padded batches), pads and all.
    Generation stops at ``stops`` (default: :func:`stop_token_ids`)."""
    model.eval()
    device = _device(model)
    if chat:
        encoded = [encode_chat(tokenizer, p)[0] for p in prompts]
    else:
        encoded = [tokenizer(p)["input_ids"] for p in prompts]
    if not sampling.get("do_sample"):
        sampling = {"do_sample": False}
    torch.manual_seed(seed)
    rows: list[list[int]] = []
    for i in range(0, len(encoded), batch_size):
        ids, mask = pad(encoded[i : i + batch_size], tokenizer.pad_token_id, "left")
        new = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=stops or stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        rows += new[:, ids.shape[1] :].tolist()
    return rows


def respond(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24
) -> tuple[list[str], list[bool]]:
    """Greedy answers to chat ``prompts`` and, for each, whether it ended with the chat's end
    token (``<|end|>``, ``<|im_end|>``; the eos token where the template has none) before
    ``max_new_tokens``. Generation also stops at the eos token, which a base model writes
    between documents; that does not count as ending the answer. Chapter 6."""
    ids = stop_token_ids(tokenizer)
    stops, end = set(ids), ids[0]
    texts, ended = [], []
    for row in _new_tokens(model, tokenizer, prompts, True, max_new_tokens, 0, 64):
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        ended.append(cut is not None and row[cut] == end)
        text = row if cut is None else row[:cut]
        texts.append(tokenizer.decode(text, skip_special_tokens=True))
    return texts, ended


def stopped(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24) -> float:
    """Share of greedy answers that end with the chat's end token before ``max_new_tokens``
    (:func:`respond`; chapter 6)."""
    return sum(respond(model, tokenizer, prompts, max_new_tokens)[1]) / len(prompts)


def few_shot_prompt(shots: Sequence[tuple[str, str]], question: str) -> str:
    """``question`` after ``shots`` worked examples, in plain text, no chat template::

        Question: What kind of thing is a groom?
        Answer: participant

        Question: What kind of thing is a beagle?
        Answer:

    The prompting baseline a base model gets before anyone fine-tunes it (chapter 6)."""
    worked = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return f"{worked}Question: {question}\nAnswer:"


def few_shot_answers(
    model: nn.Module,
    tokenizer,
    items: Sequence,
    pool: Sequence,
    k: int,
    seed: int = 0,
    max_new_tokens: int = 12,
) -> list[str]:
    """Greedy answers of a base model to ``items``, each asked after ``k`` worked examples of
    its own task drawn from ``pool`` (items with ``.task``, ``.prompt``, ``.answer``: the
    training split), in plain text (:func:`few_shot_prompt`). An answer is the first line of
    the continuation. ``seed`` draws the examples (each item its own draw), so seeds give a
    spread over which examples a prompt shows. ``k=0`` asks the bare question in the same
    format. Chapter 6's baseline for "SFT unlocks what the model knew"."""
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    by_task: dict[str, list[tuple[str, str]]] = {}
    for p in pool:
        by_task.setdefault(p.task, []).append((p.prompt, p.answer))
    prompts = []
    for index, item in enumerate(items):
        examples = by_task.get(item.task, [])
        if len(examples) < k:
            raise ValueError(f"{len(examples)} examples of {item.task!r} in the pool, need {k}")
        shots = random.Random(f"{seed}:{index}").sample(examples, k)
        prompts.append(few_shot_prompt(shots, item.prompt))
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(len(tokenizer(p)["input_ids"]) for p in prompts) + max_new_tokens
    if limit is not None and longest > limit:
        raise ValueError(
            f"{k} examples make a prompt of up to {longest - max_new_tokens} tokens; with "
            f"{max_new_tokens} new tokens that exceeds the model's {limit} positions: use fewer"
        )
    stops = stop_token_ids(tokenizer) + newline_token_ids(tokenizer)  # an answer is one line
    rows = _new_tokens(model, tokenizer, prompts, False, max_new_tokens, seed, 64, stops=stops)
    return [tokenizer.decode(r, skip_special_tokens=True).split("\n")[0].strip() for r in rows]


def sample(
    model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 60, seed: int = 0
) -> str:
    """Prompt + a top-k (40, temperature 0.8) continuation of plain text (chapter 1)."""
    (text,) = generate(
        model,
        tokenizer,
        [prompt],
        max_new_tokens=max_new_tokens,
        chat=False,
        do_sample=True,
        temperature=0.8,
        top_k=40,
        seed=seed,
    )
    return prompt + text


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no outer spaces and no final ``.``/``!``: what
    :func:`exact_match` compares."""
    return " ".join(text.lower().strip().rstrip(".!").split())


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to their answer, ignoring case, outer spaces and a final
    full stop (chapters 6-7 and appendix A1). ``"42."`` matches ``"42"``; ``"42 is next"``
    does not: the answer must be all of the response."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to compare")
    pairs = zip(predictions, answers, strict=True)
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in pairs) / len(answers)


def contains_answer(prediction: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``prediction`` as whole words, ignoring case: a looser
    score for chatty models ("The number after 41 is 42." contains "42"; "142" does not)."""
    words = re.escape(normalize_answer(answer)).replace(r"\ ", r"\s+")
    return re.search(rf"(?<![\w]){words}(?![\w])", prediction.lower()) is not None


def task_scores(items: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Exact match by task for items with ``.task``, ``.answer`` and ``.known``
    (:class:`ftcourse.data.text.Instruction`).

    Keys: ``"all"`` and each task over the items a model could answer (skills, and facts whose
    ``known`` is not False); for fact tasks also ``"<task>/known"`` and ``"<task>/unknown"``
    (words whose facts appear nowhere in the pretraining text: the control). Chapter 6.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    groups: dict[str, list[bool]] = {"all": []}
    for item, pred in zip(items, predictions, strict=True):
        hit = normalize_answer(pred) == normalize_answer(item.answer)
        keys = [] if item.known is False else ["all", item.task]
        if item.known is not None:
            keys.append(f"{item.task}/{'known' if item.known else 'unknown'}")
        for key in keys:
            groups.setdefault(key, []).append(hit)
    if not groups["all"]:
        raise ValueError("no answerable items to score")
    return {key: sum(hits) / len(hits) for key, hits in groups.items()}


# --------------------------------------------------------------------------- fine-tuning


def answer_accuracy(
    model: nn.Module, tokenizer, questions: Sequence[tuple[str, str]], max_new_tokens: int = 12
) -> float:
    """Exact match of greedy answers to ``(prompt, answer)`` pairs (chapters 6-7, A1)."""
    if not questions:
        raise ValueError("no questions")
    preds = generate(model, tokenizer, [q for q, _ in questions], max_new_tokens=max_new_tokens)
    return exact_match(preds, [a for _, a in questions])


def sft(
    model: nn.Module,
    train_set: Sequence[tuple[str, str]],
    *,
    tokenizer,
    lr: float,
    max_steps: int,
    val_set: Sequence[tuple[str, str]] | None = None,
    eval_every: int = 25,
    patience: int | None = None,
    batch_size: int = 32,
    loss_on: str = "response",
    end_token: bool = True,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    restore_best: bool = True,
    progress: bool | str = False,
):
    """Supervised fine-tuning on ``(prompt, response)`` pairs in the chat template.

    Called like :func:`ftcourse.train.fit_steps`, so :func:`ftcourse.experiments.run_arm`
    tunes it (``fit=functools.partial(lm.sft, tokenizer=tok)``). AdamW on the parameters
    with ``requires_grad``, warm-up over 5 % of ``max_steps`` then cosine decay to zero;
    batches drawn epoch by epoch, shuffled with ``generator``, right-padded (:func:`collate`);
    loss on the response and its end token (``loss_on="all"``: every token; ``end_token=False``:
    without the end token). Every
    ``eval_every`` steps and at the end the exact match of greedy answers to ``val_set``
    (:func:`answer_accuracy`) scores a checkpoint; with ``restore_best`` the model ends with
    its best one; ``patience`` stops early. Returns a :class:`ftcourse.train.Curve` whose
    ``val_acc`` is that exact match. Chapter 6 and appendix A1.
    """
    import time

    if not train_set:
        raise ValueError("no training pairs")
    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer, scheduler = adamw_cosine(params, lr, max_steps, weight_decay)
    checkpoints = Checkpoints(model, lr, patience=patience, restore_best=restore_best)
    seconds, losses, step = 0.0, [], 0
    for step, index in shuffled_batches(
        len(train_set), batch_size, max_steps, generator, progress, "sft"
    ):
        start = time.perf_counter()
        chosen = [train_set[i] for i in index]
        model.train()
        batch = collate(tokenizer, chosen, loss_on=loss_on, end_token=end_token)
        with autocast(_device(model)):
            loss = next_token_loss(model, **batch)
        clipped_step(loss, optimizer, params, scheduler)
        losses.append(loss.item())
        seconds += time.perf_counter() - start
        if val_set and (step % eval_every == 0 or step == max_steps):
            score = answer_accuracy(model, tokenizer, val_set)
            recent = losses[-eval_every:]
            if checkpoints.record(
                step, score, seconds=seconds, train_loss=sum(recent) / len(recent)
            ):
                break
    curve = checkpoints.finish(steps_run=step)
    model.eval()
    return curve


SFT_ARMS = ("SFT", "loss on every token", "no end token", "random init", "LoRA")
"""The arms of chapter 6, in the order the notebook shows them."""


def sft_arms(cfg: dict, base: nn.Module, tokenizer) -> dict[str, tuple]:
    """Chapter 6's arms: ``{arm: (make_model, fit, grid)}`` for
    :func:`ftcourse.experiments.run_arm` and ``benchmarks/select_lr.py``.

    ``"SFT"``: every weight of a copy of ``base``, loss on the response and its end token;
    ``"loss on every token"``: the same with the loss on the prompt too; ``"no end token"``:
    the end token's label removed (the recipe's ablation: it reuses SFT's learning rate);
    ``"random init"``: SFT from random weights of the same shape (the control for knowledge
    unlocked); ``"LoRA"``: LoRA of rank ``cfg["lora_rank"]`` on every linear layer of the
    blocks, everything else frozen. ``grid`` names the learning-rate grid in ``cfg["lrs"]``.
    """
    import copy
    import functools

    from transformers import AutoModelForCausalLM

    from .methods import lora

    def pretrained(train=None) -> nn.Module:
        return copy.deepcopy(base)

    def scratch(train=None) -> nn.Module:
        return AutoModelForCausalLM.from_config(base.config)

    def low_rank(train=None) -> nn.Module:
        model = copy.deepcopy(base)
        lora.add_lora(model, cfg["lora_rank"], cfg["lora_alpha"], lora.ALL_LINEAR)
        return lora.train_lora(model)

    fit = functools.partial(sft, tokenizer=tokenizer)
    return {
        "SFT": (pretrained, fit, "full"),
        "loss on every token": (pretrained, functools.partial(fit, loss_on="all"), "unmasked"),
        "no end token": (pretrained, functools.partial(fit, end_token=False), "full"),
        "random init": (scratch, fit, "scratch"),
        "LoRA": (low_rank, fit, "lora"),
    }


# --------------------------------------------------------------------------- classification


def encode_texts(tokenizer, texts: Sequence[str], max_length: int = 48) -> Tensor:
    """Right-padded token ids ``[N, T]`` of plain texts, cut at ``max_length`` tokens."""
    ids = [tokenizer(t)["input_ids"][:max_length] for t in texts]
    return pad(ids, tokenizer.pad_token_id, "right")[0]


def classification_dataset(tokenizer, examples, max_length: int = 48):
    """A ``TensorDataset`` of (right-padded ids ``[N, T]``, labels ``[N]``) from examples with
    ``.text`` and ``.label`` (e.g. :func:`ftcourse.data.text.gloss_task`), for
    :class:`Classifier`."""
    ids = encode_texts(tokenizer, [e.text for e in examples], max_length)
    return torch.utils.data.TensorDataset(ids, torch.tensor([e.label for e in examples]))


class Classifier(nn.Module):
    """A language model's body, mean-pooled over the non-pad tokens, and a linear head.

    ``forward(ids [B, T]) -> logits [B, C]``; the attention mask is ``ids != pad_id``, so the
    model takes one tensor like the vision classifiers, and :func:`ftcourse.train.fit_steps`
    and :func:`ftcourse.experiments.run_arm` train it unchanged. ``lm_model`` is a
    transformers causal LM (its ``base_model`` is kept; the LM head is not used). Used for the
    gloss task in appendix A1 and chapters 4-5.
    """

    def __init__(self, lm_model: nn.Module, num_classes: int, pad_id: int) -> None:
        super().__init__()
        self.body = lm_model.base_model
        self.pad_id = pad_id
        self.head = nn.Linear(lm_model.config.hidden_size, num_classes)

    def pool(self, ids: Tensor) -> Tensor:
        """``[B, D]`` mean of the last hidden states over the non-pad tokens."""
        mask = (ids != self.pad_id).long()
        # Columns that are padding in every row change nothing (they come after every real
        # token and are masked): cut them, which saves most of a batch of short texts.
        length = int(mask.any(0).nonzero().max()) + 1 if mask.any() else ids.shape[1]
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.pool(ids))


@torch.no_grad()
def pooled_features(classifier: Classifier, ids: Tensor, batch_size: int = 256) -> Tensor:
    """``[N, D]`` pooled features of ``ids [N, T]`` in eval mode (for a linear probe)."""
    classifier.eval()
    device = _device(classifier)
    out = []
    for i in range(0, len(ids), batch_size):
        with autocast(device):
            out.append(classifier.pool(ids[i : i + batch_size].to(device)).float().cpu())
    return torch.cat(out)


def peft_classifier(
    lm_model: nn.Module,
    num_classes: int,
    pad_id: int,
    method: str,
    size: int | None = None,
    alpha: float | None = None,
) -> Classifier:
    """A :class:`Classifier` on a copy of ``lm_model``, trained the way ``method`` says.

    The methods are the entries of :mod:`ftcourse.methods.registry` (``registry.names()``):
    ``"full"``: every weight; ``"head"``: the new head only (the body frozen); ``"adapter"``:
    bottleneck adapters of width ``size`` after every attention and MLP sublayer, and the head
    (every pretrained weight frozen, so removing the adapters gives the pretrained model back);
    ``"prompt"``: a soft prompt of ``size`` vectors and the head; ``"int8-adapter"``: as
    ``"adapter"`` on a body stored in int8; ``"lora"``: LoRA of rank ``size`` (scale
    ``alpha / size``) on the attention's query and value projections, and the head;
    ``"lora-all"``: LoRA on every linear layer of the blocks; ``"qlora"``: ``"lora"`` on a body
    whose linear layers are stored in NF4 with double quantization. The arms of chapters 4
    and 5, for the notebooks, their reference studies and ``benchmarks/select_lr.py``.
    """
    import copy

    from .methods import registry

    if method not in registry.METHODS:
        raise ValueError(f"method must be one of {registry.names()}, not {method!r}")
    clf = Classifier(copy.deepcopy(lm_model), num_classes, pad_id)
    return registry.apply(clf, method, size, alpha)


class PeftArm(NamedTuple):
    """One arm of chapters 4 and 5: its display ``name`` ("adapter 8"), its ``task`` ("gloss"
    or "author"), and the ``method`` and ``size`` that :func:`peft_classifier` takes."""

    name: str
    task: str
    method: str
    size: int | None


def peft_arms(cfg: dict) -> list[PeftArm]:
    """Chapter 4's arms (:class:`PeftArm`) from its profile section: full fine-tuning, head
    only, an adapter per bottleneck size, a soft prompt per length, the int8 adapter, and the
    author task's prompt (``swap_length``, for swapping). Shared by the notebook and
    ``benchmarks/select_lr.py``; ``method`` and ``size`` go to :func:`peft_classifier`."""
    arms = [("full", "gloss", "full", None), ("head", "gloss", "head", None)]
    arms += [(f"adapter {b}", "gloss", "adapter", b) for b in cfg["adapter_sizes"]]
    arms += [(f"prompt {n}", "gloss", "prompt", n) for n in cfg["prompt_lengths"]]
    arms += [(f"int8 adapter {cfg['int8_size']}", "gloss", "int8-adapter", cfg["int8_size"])]
    arms += [(f"prompt {cfg['swap_length']}", "author", "prompt", cfg["swap_length"])]
    return [PeftArm(*a) for a in arms]


def lora_arms(cfg: dict, model: nn.Module) -> list[PeftArm]:
    """Chapter 5's arms (:class:`PeftArm`, its size the rank) from its profile section: full
    fine-tuning, LoRA on the query and value projections at every rank of ``ranks``, the
    placement pair (LoRA on every linear layer at ``placement_rank``, and on query and value at
    the rank of ``ranks`` with the nearest number of parameters; see :func:`placement_ranks`),
    QLoRA at
    ``qlora_rank``, and the author task's LoRA at ``swap_rank`` (for swapping). Shared by the
    notebook and ``benchmarks/select_lr.py``; the arm's name is its method and rank."""
    qv_rank, all_rank = placement_ranks(model, cfg["placement_rank"], cfg["ranks"])
    arms = [("full", "gloss", "full", None)]
    arms += [(f"lora {r}", "gloss", "lora", r) for r in cfg["ranks"]]
    if qv_rank not in cfg["ranks"]:
        arms += [(f"lora {qv_rank}", "gloss", "lora", qv_rank)]
    arms += [(f"lora-all {all_rank}", "gloss", "lora-all", all_rank)]
    arms += [(f"qlora {cfg['qlora_rank']}", "gloss", "qlora", cfg["qlora_rank"])]
    arms += [(f"lora {cfg['swap_rank']}", "author", "lora", cfg["swap_rank"])]
    return [PeftArm(*a) for a in arms]


def placement_ranks(
    model: nn.Module, all_rank: int, candidates: Sequence[int] | None = None
) -> tuple[int, int]:
    """``(qv_rank, all_rank)``: the rank of LoRA on the query and value projections whose
    parameter count is nearest to LoRA of rank ``all_rank`` on every linear layer (the LoRA
    paper's comparison at equal trainable parameters, its Table 5); with ``candidates``, the
    nearest among those ranks (so that an arm of the rank sweep can serve)."""
    from .methods import lora

    per_all = lora.lora_parameter_count(model, all_rank, lora.ALL_LINEAR)
    per_qv = lora.lora_parameter_count(model, 1, lora.ATTENTION)
    if candidates:
        return min(candidates, key=lambda r: abs(r * per_qv - per_all)), all_rank
    return max(1, round(per_all / per_qv)), all_rank
