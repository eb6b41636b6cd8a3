"""Human feedback, simulated: a rater that checks politeness and correctness (chapter 7).

People who compare two answers disagree with each other and with themselves; a course cannot
ask them every time a learner runs a notebook, and could not check a reward model against
them. So a function stands in for the people: it prefers a response that *answers correctly*
and, less strongly, one that *greets politely* first ("Gladly! 42"). Its labels are flipped
with a probability ``noise``, the disagreement between raters. Because the rater is a
function, every later step can be scored against the truth, which real RLHF never can.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .. import lm
from ..lm import normalize_answer

GREETINGS = ("Gladly!", "Happy to help!", "Of course!")
"""The polite openings the rater recognises (and the SFT data of chapter 7 sometimes uses)."""

CORRECT_WEIGHT = 1.0
POLITE_WEIGHT = 0.5


def is_polite(response: str) -> bool:
    """Whether ``response`` opens with one of :data:`GREETINGS` (case and spaces ignored)."""
    text = " ".join(response.lower().split())
    return any(text.startswith(g.lower()) for g in GREETINGS)


def strip_greeting(response: str) -> str:
    """``response`` without *one* opening greeting: ``"Gladly! 42"`` -> ``"42"``, and
    ``"Gladly! Gladly! 42"`` -> ``"Gladly! 42"`` (which is then not the answer)."""
    text = response.strip()
    for g in GREETINGS:
        if text.lower().startswith(g.lower()):
            return text[len(g) :].strip()
    return text


def is_correct(answer: str, response: str) -> bool:
    """Whether ``response``, after one greeting, is exactly ``answer``
    (:func:`ftcourse.lm.normalize_answer`)."""
    return normalize_answer(strip_greeting(response)) == normalize_answer(answer)


def true_score(answer: str, response: str) -> float:
    """The rater's score: 1 for a correct answer, 1.5 for a correct answer that greets
    politely first, 0 for a wrong one however polite.

    Politeness is worth something only on top of the answer: the quality the chapter aligns
    the model to ("greets politely *and* answers correctly")."""
    if not is_correct(answer, response):
        return 0.0
    return CORRECT_WEIGHT + POLITE_WEIGHT * is_polite(response)


@dataclass(frozen=True)
class Preference:
    """One labelled comparison: the rater preferred ``chosen`` to ``rejected``.

    ``truly_better`` says whether the noiseless rater agrees (False: the label was flipped)."""

    prompt: str
    chosen: str
    rejected: str
    truly_better: bool


def label_pairs(
    prompts: Sequence[str],
    answers: Sequence[str],
    first: Sequence[str],
    second: Sequence[str],
    noise: float,
    seed: int = 0,
) -> list[Preference]:
    """The rater's preferences between two responses to each prompt.

    The response with the higher :func:`true_score` is chosen; with probability ``noise`` the
    label is flipped (raters disagree). Pairs the rater scores equal are left out: it has no
    preference to give (two wrong answers, polite or not). All four sequences are aligned;
    responses are stripped of outer spaces.
    """
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), not {noise}")
    if not len(prompts) == len(answers) == len(first) == len(second):
        raise ValueError("prompts, answers and both responses must have the same length")
    rng = random.Random(seed)
    out = []
    for prompt, answer, a, b in zip(prompts, answers, first, second, strict=True):
        a, b = a.strip(), b.strip()
        sa, sb = true_score(answer, a), true_score(answer, b)
        if sa == sb:
            continue
        better, worse = (a, b) if sa > sb else (b, a)
        flip = rng.random() < noise
        chosen, rejected = (worse, better) if flip else (better, worse)
        out.append(Preference(prompt, chosen, rejected, not flip))
    return out


def add_greetings(
    pairs: Sequence[tuple[str, str]], share: float, seed: int = 0
) -> list[tuple[str, str]]:
    """``(prompt, answer)`` pairs where a ``share`` of the answers open with a random
    greeting: the SFT data of chapter 7, so that the SFT model is polite only sometimes."""
    rng = random.Random(seed)
    return [(p, f"{rng.choice(GREETINGS)} {a}" if rng.random() < share else a) for p, a in pairs]


def preference_data(
    model,
    tokenizer,
    items: Sequence,
    *,
    samples_per_prompt: int = 4,
    noise: float = 0.2,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> list[Preference]:
    """The rater's labels on pairs of the model's own answers, as InstructGPT's labellers
    compared samples of the SFT model.

    ``samples_per_prompt`` answers (temperature 1, no top-k) to each item's prompt are paired
    up (1st with 2nd, 3rd with 4th...) and labelled by :func:`label_pairs` with ``noise``;
    ``items`` have ``.prompt`` and ``.answer`` (:class:`ftcourse.data.text.Instruction`)."""
    if samples_per_prompt < 2 or samples_per_prompt % 2:
        raise ValueError(f"samples_per_prompt must be even and >= 2, not {samples_per_prompt}")
    prompts, answers = [i.prompt for i in items], [i.answer for i in items]
    samples = [
        lm.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                    top_k=0, seed=seed * 1000 + j)
        for j in range(samples_per_prompt)
    ]  # fmt: skip
    pairs: list[Preference] = []
    for j in range(0, samples_per_prompt, 2):
        pairs += label_pairs(prompts, answers, samples[j], samples[j + 1], noise, seed * 1000 + j)
    return pairs


PROBES = ("polite, correct", "polite, wrong", "plain, correct", "plain, wrong", "greetings only")
"""The kinds of response :func:`probe_responses` writes, to find what a reward model sees."""


def probe_responses(items: Sequence, seed: int = 0) -> dict[str, list[str]]:
    """Hand-written responses to each item, by kind (:data:`PROBES`): the right answer or
    another item's answer of the same task, with or without a greeting, and a response that
    is only greetings. A reward model that scores "polite, wrong" above "plain, correct" is
    blind to correctness. Chapter 7."""
    rng = random.Random(seed)
    by_task: dict[str, list[str]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item.answer)
    wrong = []
    for item in items:
        others = [
            a for a in by_task[item.task] if normalize_answer(a) != normalize_answer(item.answer)
        ]
        if not others:
            raise ValueError(f"task {item.task!r} has no other answer to use as a wrong one")
        wrong.append(rng.choice(others))
    greeting = [rng.choice(GREETINGS) for _ in items]
    return {
        "polite, correct": [f"{g} {i.answer}" for g, i in zip(greeting, items, strict=True)],
        "polite, wrong": [f"{g} {w}" for g, w in zip(greeting, wrong, strict=True)],
        "plain, correct": [i.answer for i in items],
        "plain, wrong": wrong,
        "greetings only": [" ".join(GREETINGS)] * len(items),
    }
