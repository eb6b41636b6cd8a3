"""Chapter 6: the SFT collator and its masks, the answer scorers, the instruction splits, the
arms, and TRL's SFTTrainer computing the same loss as ours."""

import copy

import pytest
import torch

from ftcourse import lm, models
from ftcourse.data import text
from ftcourse.profiles import PROFILES

PAIRS = [
    ("What kind of thing is a dog?", "animal"),
    ("Say the word night three times.", "night night night"),
    ("What number comes after 41?", "42"),
]


def test_without_the_end_token_only_its_label_goes(tiny):
    _, tok = tiny
    end = tok.convert_tokens_to_ids("<|end|>")
    for prompt, response in PAIRS:
        ids, with_end = lm.encode_chat(tok, prompt, response)
        ids2, without = lm.encode_chat(tok, prompt, response, end_token=False)
        assert ids == ids2 and ids[-1] == end
        assert with_end[-1] == end and without[-1] == lm.IGNORE
        assert with_end[:-1] == without[:-1]  # the answer's own tokens keep their labels


def test_collator_masks_prompt_and_pads_and_keeps_the_end_token(tiny):
    _, tok = tiny
    batch = lm.collate(tok, PAIRS)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == len(PAIRS)
    assert (labels[mask == 0] == lm.IGNORE).all()  # pads take no loss
    for row, (prompt, response) in enumerate(PAIRS):
        head = len(lm.encode_chat(tok, prompt)[0])
        assert (labels[row, :head] == lm.IGNORE).all()  # the prompt takes no loss
        kept = labels[row][labels[row] != lm.IGNORE].tolist()
        assert tok.decode(kept) == f" {response}<|end|>"


def test_collator_loss_on_every_token_and_without_end(tiny):
    _, tok = tiny
    everything = lm.collate(tok, PAIRS, loss_on="all")
    ids, mask = everything["input_ids"], everything["attention_mask"]
    assert torch.equal(everything["labels"], ids.masked_fill(mask == 0, lm.IGNORE))
    no_end = lm.collate(tok, PAIRS, loss_on="all", end_token=False)["labels"]
    end = tok.convert_tokens_to_ids("<|end|>")
    lengths = mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert no_end[row, n - 1] == lm.IGNORE and ids[row, n - 1] == end
        assert torch.equal(no_end[row, : n - 1], ids[row, : n - 1])
        # inside the prompt the end token of the user turn keeps its label
        assert (no_end[row, : n - 1] == end).sum() == 1
    with pytest.raises(ValueError):
        lm.collate(tok, [])
    with pytest.raises(ValueError):
        lm.collate(tok, PAIRS, loss_on="prompt")


def test_no_end_token_also_works_for_chatml():
    """SmolLM2's template writes a newline after <|im_end|>: both leave the labels."""
    smol = models.load("smollm2-135m")
    tok = smol.tokenizer
    ids, labels = lm.encode_chat(tok, "Say hello.", "Hello!", end_token=False)
    kept = [i for i in labels if i != lm.IGNORE]
    assert tok.decode(kept) == "Hello!"
    full = [i for i in lm.encode_chat(tok, "Say hello.", "Hello!")[1] if i != lm.IGNORE]
    assert tok.decode(full).startswith("Hello!<|im_end|>")


@pytest.mark.parametrize(
    ("prediction", "answer", "match"),
    [
        (" hound", "hound", True),  # generation starts with the space of the template
        ("Hound.", "hound", True),
        ("42!", "42", True),
        ("night  night\tnight", "night night night", True),
        ("42 is next", "42", False),
        ("a hound", "hound", False),
        ("hounds", "hound", False),
        ("", "hound", False),
        ("4 2", "42", False),
        ("hound?", "hound", False),  # only a final full stop or ! is forgiven
    ],
)
def test_exact_match_on_tricky_cases(prediction, answer, match):
    assert lm.exact_match([prediction], [answer]) == float(match)


def test_exact_match_refuses_bad_input():
    with pytest.raises(ValueError):
        lm.exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        lm.exact_match([], [])
    assert lm.exact_match(["a", "b", "c", "x"], ["A", "b.", " c ", "y"]) == 0.75


def test_contains_answer_needs_whole_words():
    assert lm.contains_answer("The number after 41 is 42.", "42")
    assert not lm.contains_answer("The number is 142.", "42")
    assert lm.contains_answer("It is a HOUND, I think", "hound")
    assert not lm.contains_answer("houndstooth", "hound")
    assert lm.contains_answer("say: night  night night", "night night night")
    assert not lm.contains_answer("night night", "night night night")


def test_task_scores_groups_by_task_and_known():
    items = [
        text.Instruction("count", "How many words are in: a b?", "2", "test"),
        text.Instruction("count", "How many words are in: a b c?", "3", "test"),
        text.Instruction("hypernym", "What kind of thing is a dog?", "animal", "test", True),
        text.Instruction("hypernym", "What kind of thing is a zig?", "thing", "test", False),
    ]
    scores = lm.task_scores(items, ["2", "4", " Animal.", "thing"])
    assert scores == {  # unknown words are the control, outside "all" and the task's score
        "all": 2 / 3,
        "count": 0.5,
        "hypernym": 1.0,
        "hypernym/known": 1.0,
        "hypernym/unknown": 1.0,
    }
    with pytest.raises(ValueError, match="answerable"):
        lm.task_scores(items[3:], ["thing"])
    with pytest.raises(ValueError):
        lm.task_scores(items, ["2"])


def test_is_answer_checks_the_form_not_the_content():
    items = text.instruction_tasks(0)
    assert all(text.is_answer(i, i.answer) for i in items)  # every gold answer has the form
    assert all(text.is_answer(i, f" {i.answer}.") for i in items)
    by_task = {i.task: i for i in items}
    assert not any(text.is_answer(i, "ROMEO. What say you, my lord?") for i in by_task.values())
    count, first, repeat = by_task["count"], by_task["first"], by_task["repeat"]
    assert text.is_answer(count, "7") and not text.is_answer(count, "seven")
    a, b = first.prompt.rstrip("?").split(": ")[1].split(" or ")
    assert text.is_answer(first, b) and not text.is_answer(first, "zebra")
    word, times = repeat.answer.split()[0], len(repeat.answer.split())
    assert text.is_answer(repeat, " ".join(["other"] * times))  # wrong word, right form
    assert not text.is_answer(repeat, " ".join([word] * (times + 1)))
    assert not text.is_answer(by_task["hypernym"], "a kind of dog")
    assert not text.is_answer(by_task["hypernym"], "the")  # a word, but not a noun
    assert text.is_answer(by_task["category"], "animal")
    assert not text.is_answer(by_task["category"], "dog")  # a noun, not a category
    assert not text.is_answer(by_task["antonym"], "ROMEO")


def test_respond_counts_only_the_chat_end_token(tiny):
    """A base model often stops at the document separator; that is not ending an answer."""
    base, tok = tiny
    prompts = [i.prompt for i in text.instruction_items("test", per_task=2)]
    texts, ended = lm.respond(base, tok, prompts, max_new_tokens=24)
    rows = lm._new_tokens(base, tok, prompts, True, 24, 0, 64)
    end, eos = tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id
    for row, e in zip(rows, ended, strict=True):
        first = next((t for t in row if t in (end, eos)), None)
        assert e == (first == end)
    assert lm.stopped(base, tok, prompts, 24) == sum(ended) / len(ended)


def test_few_shot_prompt_shows_worked_examples_then_the_question():
    shots = PAIRS[:2]
    prompt = lm.few_shot_prompt(shots, "What number comes after 7?")
    assert prompt == (
        "Question: What kind of thing is a dog?\nAnswer: animal\n\n"
        "Question: Say the word night three times.\nAnswer: night night night\n\n"
        "Question: What number comes after 7?\nAnswer:"
    )
    assert lm.few_shot_prompt([], "Q?") == "Question: Q?\nAnswer:"


def test_few_shot_answers_draw_same_task_examples_and_cut_at_the_line(tiny, monkeypatch):
    base, tok = tiny
    items = text.instruction_items("test", per_task=2)
    pool = text.instruction_items("train")
    seen = []

    def fake(model, tokenizer, prompts, chat, max_new_tokens, seed, batch_size, stops):
        seen.extend(prompts)
        assert not chat and set(lm.newline_token_ids(tokenizer)) <= set(stops)
        return [tokenizer(" forty two\nQuestion: more")["input_ids"] for _ in prompts]

    monkeypatch.setattr(lm, "_new_tokens", fake)
    answers = lm.few_shot_answers(base, tok, items, pool, k=3, seed=1)
    assert answers == ["forty two"] * len(items)
    by_prompt = {(p.prompt, p.answer): p.task for p in pool}
    for item, prompt in zip(items, seen, strict=True):
        blocks = prompt.split("\n\n")
        assert len(blocks) == 4 and blocks[-1] == f"Question: {item.prompt}\nAnswer:"
        for block in blocks[:3]:  # the examples are the training items of the item's task
            q, a = block.removeprefix("Question: ").split("\nAnswer: ")
            assert by_prompt[(q, a)] == item.task
    again = []
    monkeypatch.setattr(
        lm, "_new_tokens", lambda m, t, p, *a, **k: again.extend(p) or [[]] * len(p)
    )
    lm.few_shot_answers(base, tok, items, pool, k=3, seed=1)
    assert again == seen  # a seed draws the same examples again
    with pytest.raises(ValueError, match="k must be"):
        lm.few_shot_answers(base, tok, items, pool, k=-1)
    with pytest.raises(ValueError, match="positions"):  # 40 examples overflow 256 positions
        lm.few_shot_answers(base, tok, items, pool, k=40)


def test_cloze_for_asks_a_fact_question_in_the_pretraining_words():
    hypernym = next(i for i in text.instruction_items("test") if i.task == "hypernym")
    assert text.cloze_for(hypernym).endswith(f"{hypernym.word} is a kind of")
    assert hypernym.word in hypernym.prompt
    skill = next(i for i in text.instruction_items("test") if i.task == "count")
    with pytest.raises(ValueError, match="not a question about a word"):
        text.cloze_for(skill)


def test_instruction_items_are_fixed_subsets_without_leaks():
    train = text.instruction_items("train")
    test = text.instruction_items("test")
    assert not {i.prompt for i in train} & {i.prompt for i in test}
    assert all(i.known is not False for i in train)  # unknown words are only tested
    capped = text.instruction_items("test", per_task=3)
    groups = {(i.task, i.known) for i in test}
    assert len(capped) == 3 * len(groups) and set(capped) <= set(test)
    few = text.instruction_items("validation", limit=20)
    assert len(few) == 20 and few == text.instruction_items("validation", limit=20)
    with pytest.raises(ValueError):
        text.instruction_items("dev")


def test_sft_arms_train_what_they_say(tiny):
    base, tok = tiny
    cfg = PROFILES["smoke"].section("instruct")
    arms = lm.sft_arms(cfg, base, tok)
    assert tuple(arms) == lm.SFT_ARMS
    total = sum(p.numel() for p in base.parameters())
    trainable = {
        arm: sum(p.numel() for p in make().parameters() if p.requires_grad)
        for arm, (make, _, _) in arms.items()
    }
    assert trainable["SFT"] == trainable["random init"] == total
    assert 0 < trainable["LoRA"] < 0.1 * total
    scratch = arms["random init"][0]()
    emb = base.get_input_embeddings().weight
    assert not torch.allclose(scratch.get_input_embeddings().weight, emb)
    assert {grid for _, _, grid in arms.values()} <= set(cfg["lrs"])


def test_trl_sft_trainer_masks_and_averages_like_ours(tiny, tmp_path):
    """TRL's SFTTrainer, prompt-completion messages: the same labels and (fp32) the same loss
    as lm.collate + lm.next_token_loss on the same batch."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base, tok = tiny
    model = copy.deepcopy(base)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": r}],
            }
            for p, r in PAIRS
        ]
    )
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        bf16=False,
        use_cpu=True,
        max_length=None,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    ours = lm.collate(tok, PAIRS)
    assert torch.equal(batch["input_ids"], ours["input_ids"])
    assert torch.equal(batch["labels"], ours["labels"])
    model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(model, dict(batch)).item()
        mine = lm.next_token_loss(model, **ours).item()
    assert abs(theirs - mine) < 1e-5
