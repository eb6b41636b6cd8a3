"""ftcourse.lm: masking, padding, log-probs and generation behave as the docstrings say."""

import math

import pytest
import torch

from ftcourse import lm, models

PAIRS = [
    ("What kind of thing is a dog?", "animal"),
    ("Say the word night three times.", "night night night"),
    ("What number comes after 41?", "42"),
]


def test_encode_chat_masks_the_prompt_and_keeps_the_end_token(tiny):
    _, tok = tiny
    ids, labels = lm.encode_chat(tok, *PAIRS[0])
    prompt_ids, _ = lm.encode_chat(tok, PAIRS[0][0])
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [lm.IGNORE] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
    # The end token is the last label: a model that never sees it never learns to stop.
    assert labels[-1] in lm.stop_token_ids(tok) and labels[-1] != lm.IGNORE
    assert tok.decode(ids[len(prompt_ids) : -1]).strip() == "animal"


def test_pad_left_and_right():
    ids, mask = lm.pad([[1, 2, 3], [4]], value=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = lm.pad([[1, 2, 3], [4]], value=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        lm.pad([[1]], 0, side="middle")


def test_masked_loss_equals_a_hand_computed_one(tiny):
    model, tok = tiny
    batch = lm.collate(tok, PAIRS)
    loss = lm.next_token_loss(model, **batch)
    # By hand: for every labelled position t (t >= 1), -log p(labels[t] | ids[:t]), averaged.
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(len(PAIRS)):
            n = int(batch["attention_mask"][b].sum())
            ids, labels = batch["input_ids"][b, :n], batch["labels"][b, :n]
            logits = model(input_ids=ids[None]).logits[0].double()
            for t in range(1, n):
                if labels[t] != lm.IGNORE:
                    total -= torch.log_softmax(logits[t - 1], -1)[labels[t]].item()
                    count += 1
    n_response = sum(
        len(lm.encode_chat(tok, p, r)[0]) - len(lm.encode_chat(tok, p)[0]) for p, r in PAIRS
    )
    assert count == n_response
    assert loss.item() == pytest.approx(total / count, abs=1e-5)
    # Loss on every token is a different number (the prompt counts too).
    everything = lm.next_token_loss(model, **lm.collate(tok, PAIRS, loss_on="all"))
    assert abs(everything.item() - loss.item()) > 1e-3


def test_sequence_logprobs_equal_the_sum_of_token_logprobs(tiny, monkeypatch):
    # fp32: under bf16 autocast a padded batch and a single sequence differ by ~0.02 nats.
    monkeypatch.setenv("FTCOURSE_PRECISION", "fp32")
    model, tok = tiny
    batch = lm.collate(tok, PAIRS)  # right-padded: the shorter rows have pads
    got = lm.sequence_logprobs(model, **batch)
    for b, (p, r) in enumerate(PAIRS):
        ids, labels = lm.encode_chat(tok, p, r)
        token_lp = lm.token_logprobs(model, torch.tensor([ids]))[0]
        expected = sum(token_lp[t - 1].item() for t in range(1, len(ids)) if labels[t] != lm.IGNORE)
        assert got[b].item() == pytest.approx(expected, abs=1e-4)
        assert got[b].item() < 0


def test_left_padded_batched_generation_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = [p for p, _ in PAIRS] + ["Which word comes first in the alphabet: love or night?"]
    batched = lm.generate(model, tok, prompts, max_new_tokens=12)
    alone = [lm.generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == alone
    plain = lm.generate(model, tok, ["ROMEO.", "To be, or not"], max_new_tokens=10, chat=False)
    assert plain == [
        lm.generate(model, tok, [p], max_new_tokens=10, chat=False)[0]
        for p in ["ROMEO.", "To be, or not"]
    ]


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=16, chat=False, do_sample=True, top_k=40)
    a = lm.generate(model, tok, ["ROMEO."] * 3, seed=1, **kw)
    assert a == lm.generate(model, tok, ["ROMEO."] * 3, seed=1, **kw)
    assert a != lm.generate(model, tok, ["ROMEO."] * 3, seed=2, **kw)


def _small_lm(width: int = 16):
    return models.build_lm(
        64,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )


def test_lm_loss_is_perplexity_of_a_uniform_model():
    # A model whose logits are all equal predicts every token with p = 1/V: loss = log V.
    model = _small_lm()
    torch.nn.init.zeros_(model.lm_head.weight)
    tokens = torch.randint(0, 64, (1000,), generator=torch.Generator().manual_seed(0))
    assert lm.lm_loss(model, tokens, context=32) == pytest.approx(math.log(64), abs=1e-5)


def test_train_lm_lowers_the_loss_of_a_repeated_text():
    model = _small_lm(32)
    tokens = torch.arange(20).repeat(50)
    before = lm.lm_loss(model, tokens, context=16)
    losses = lm.train_lm(
        model, tokens, num_steps=60, lr=1e-2, batch_size=8, context=16, warmup=5, progress=False
    )
    assert lm.lm_loss(model, tokens, context=16) < before / 3 and len(losses) == 60


def test_sft_teaches_the_model_to_stop(tiny):
    import copy

    model, tok = tiny
    prompts = [f"Say the word {w}." for w in ("night", "love", "king", "sword", "crown", "rose")]
    before = lm.stopped(model, tok, prompts, max_new_tokens=8)
    tuned = copy.deepcopy(model)
    curve = lm.sft(
        tuned,
        [(p, p.split()[-1].rstrip(".")) for p in prompts],
        tokenizer=tok,
        lr=3e-3,
        max_steps=30,
        batch_size=6,
        val_set=None,
    )
    assert curve.steps_run == 30 and not curve.step  # no validation set: no checkpoints
    after = lm.stopped(tuned, tok, prompts, max_new_tokens=8)
    assert after >= 0.8 and after > before  # the base model stops only by chance


def test_lm_loss_spreads_its_windows_over_every_text():
    """chapter 1: 100 windows of two held-out plays must come from both plays, not the first."""
    import torch

    from ftcourse import lm, models

    model = models.build_lm(50, num_hidden_layers=1)
    # the first half is one token repeated, the second another: only spread windows see both
    tokens = torch.cat([torch.full((128 * 20 + 1,), 3), torch.full((128 * 20,), 7)])
    first = lm.lm_loss(model, tokens, max_windows=4)
    assert first == lm.lm_loss(model, tokens[: 128 * 4 + 1])
    spread = lm.lm_loss(model, tokens, max_windows=4, spread=True)
    assert spread != first


def test_token_cache_in_a_read_only_data_folder_is_skipped(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path))

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(lm.torch, "save", refuse)  # root ignores chmod: imitate the refusal
    _, tokenizer = tiny
    tokens = lm.encode_corpus(tokenizer, ["To be, or not to be."])
    assert tokens[-1] == tokenizer.eos_token_id and len(tokens) > 3
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))


def test_classifier_cuts_all_pad_columns_without_changing_its_logits(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    clf = lm.Classifier(model, 3, tok.pad_token_id).eval()
    ids = lm.encode_texts(tok, ["a short text", "a somewhat longer text than that"], 12)
    padded = torch.cat([ids, torch.full((2, 20), tok.pad_token_id)], dim=1)
    with torch.no_grad():
        short, long = clf(ids), clf(padded)
    # Trailing columns that are padding in every row are cut before the body runs.
    torch.testing.assert_close(short, long, rtol=0, atol=1e-6)
    # Padding inside the batch (a shorter row) still counts as padding, not as text.
    with torch.no_grad():
        alone = clf(lm.encode_texts(tok, ["a short text"], 12))
    torch.testing.assert_close(alone[0], short[0], rtol=0, atol=1e-5)
