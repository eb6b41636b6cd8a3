"""Chapter 7: the simulated rater, the Bradley-Terry loss, PPO's pieces on hand tensors, the
reward model's pooling, the rollout's masks, and DPO (by hand and against TRL's trainer)."""

import copy
import math

import pytest
import torch

from ftcourse import lm
from ftcourse.align import dpo, feedback, ppo, reward

# --------------------------------------------------------------------------- the rater


def test_rater_scores_correctness_and_politeness():
    assert feedback.is_polite("Gladly! 42") and feedback.is_polite("  of course! hound")
    assert not feedback.is_polite("42. Gladly!")
    assert feedback.strip_greeting("Happy to help! night night") == "night night"
    assert feedback.strip_greeting("Gladly! Gladly! 42") == "Gladly! 42"
    assert feedback.true_score("42", "Gladly! 42") == 1.5
    assert feedback.true_score("42", "42.") == 1.0
    assert feedback.true_score("42", "Gladly! 43") == 0.0  # polite and wrong is still wrong
    assert feedback.true_score("42", "Gladly! Gladly! 42") == 0.0  # greetings are not answers
    assert feedback.true_score("42", "41") == 0.0


def test_label_pairs_prefers_the_better_response_and_flips_a_share():
    n = 2000
    prompts, answers = ["q"] * n, ["42"] * n
    first, second = ["Gladly! 42"] * n, ["42"] * n
    clean = feedback.label_pairs(prompts, answers, first, second, noise=0.0)
    assert all(p.chosen == "Gladly! 42" and p.truly_better for p in clean)
    noisy = feedback.label_pairs(prompts, answers, first, second, noise=0.2, seed=3)
    flipped = [p for p in noisy if not p.truly_better]
    assert abs(len(flipped) / n - 0.2) < 0.03
    assert all(p.chosen == "42" for p in flipped)
    ties = feedback.label_pairs(["q"], ["42"], ["43"], ["Gladly! 44"], noise=0.0)
    assert ties == []  # the rater has no preference between two wrong answers
    with pytest.raises(ValueError, match="noise"):
        feedback.label_pairs(prompts, answers, first, second, noise=0.5)


def test_add_greetings_keeps_the_answers_and_greets_a_share():
    pairs = [(f"q{i}", "42") for i in range(1000)]
    greeted = feedback.add_greetings(pairs, 0.3, seed=0)
    polite = [r for _, r in greeted if feedback.is_polite(r)]
    assert abs(len(polite) / 1000 - 0.3) < 0.05
    assert all(feedback.is_correct("42", r) for _, r in greeted)


# --------------------------------------------------------------------------- reward model


def test_bradley_terry_loss_on_a_hand_example():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # -log sigmoid(2) = log(1 + e^-2); -log sigmoid(-1) = log(1 + e)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    assert reward.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    shifted = reward.bradley_terry_loss(chosen + 5, rejected + 5)  # only differences matter
    assert shifted.item() == pytest.approx(expected, abs=1e-6)


def test_reward_model_reads_the_last_non_pad_token(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    rm = reward.RewardModel(model).eval()
    assert rm.body is not model.base_model  # a copy: training it leaves the policy alone
    short = lm.encode_chat(tok, "What number comes after 41?", "42")[0]
    long = lm.encode_chat(tok, "Say the word night three times.", "night night night")[0]
    ids, mask = lm.pad([short, long], tok.pad_token_id, "right")
    with torch.no_grad():
        padded = rm(ids, mask)
        alone = rm(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        # the head reads the hidden state at the end token, not at a pad
        hidden = rm.body(input_ids=torch.tensor([short])).last_hidden_state[0, -1]
    assert padded[0].item() == pytest.approx(alone.item(), abs=1e-4)
    assert padded[0].item() == pytest.approx(rm.head(hidden).item(), abs=1e-4)
    scores = reward.score(rm, tok, ["What number comes after 41?"] * 2, ["42", "42"])
    # the same input twice: equal up to rounding (rows of one batch need not be bit-identical:
    # on an Intel Ice Lake CPU they differ in the last bit)
    assert scores.shape == (2,) and scores[0].item() == pytest.approx(scores[1].item(), abs=1e-5)


def test_reward_model_learns_a_preference(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    rm = reward.RewardModel(model)
    pairs = [feedback.Preference(f"What number comes after {n}?", f"Gladly! {n + 1}",
                                 str(n + 1), True) for n in range(40)]  # fmt: skip
    before = reward.pairwise_accuracy(rm, tok, pairs)
    curve = reward.train_reward_model(
        rm,
        pairs,
        tokenizer=tok,
        lr=1e-3,
        max_steps=20,
        batch_size=8,
        val_pairs=pairs[:10],
        eval_every=10,
    )
    assert reward.pairwise_accuracy(rm, tok, pairs) == 1.0 and curve.best_val_acc == 1.0
    assert before < 1.0


# --------------------------------------------------------------------------- PPO


def test_kl_per_token_on_hand_tensors():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    kl = ppo.kl_per_token(logp, ref, mask)
    assert kl.tolist() == [[0.5, -1.0, 0.0]]
    assert kl.sum().item() == -0.5


def test_clipped_objective_on_hand_tensors():
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    loss = ppo.clipped_objective(ratios.log(), old, advantages, mask, clip=0.2)
    # A = +1: min(1.5, 1.2) = 1.2, min(0.5, 0.8) = 0.5, min(1.1, 1.1) = 1.1
    # A = -1: min(-1.5, -1.2) = -1.5, min(-0.5, -0.8) = -0.8 (the third token is masked)
    expected = -(1.2 + 0.5 + 1.1 - 1.5 - 0.8) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # at ratio 1 the gradient is the policy gradient: d loss / d logp = -A / num_tokens
    logp = torch.zeros(2, 3, requires_grad=True)
    ppo.clipped_objective(logp, old, advantages, mask).backward()
    assert torch.allclose(logp.grad, -advantages[:, None] * mask / 5)
    # beyond the clip, in the direction the advantage pushes, there is no gradient
    far = torch.full((1, 1), math.log(2.0), requires_grad=True)
    ppo.clipped_objective(far, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)).backward()
    assert far.grad.item() == 0.0


def test_group_advantages_centre_each_group():
    adv = ppo.group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    scale = math.sqrt(2 / 3)  # std of [-1, 1, 0, 0]
    assert adv.tolist() == pytest.approx([-1 / scale, 1 / scale, 0.0, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match="groups"):
        ppo.group_advantages(torch.ones(5), group_size=2)


def test_rollout_masks_the_response_and_has_zero_kl_to_itself(tiny):
    model, tok = tiny
    rm = reward.RewardModel(model)
    prompts = ["What number comes after 41?", "Say the word night three times."]
    roll = ppo.rollout(model, model, rm, tok, prompts, group_size=3, max_new_tokens=6, seed=1)
    assert roll.input_ids.shape[0] == 6 and roll.mask.shape == roll.logprobs.shape
    assert roll.prompts == [p for p in prompts for _ in range(3)]
    for row in range(6):
        head = len(lm.encode_chat(tok, roll.prompts[row])[0])
        response = roll.mask[row].nonzero().flatten()
        assert response.min().item() == head - 1  # entry t scores the token at t + 1
        assert 1 <= len(response) <= 6
    assert (roll.logprobs[roll.mask == 0] == 0).all() and (roll.logprobs[roll.mask == 1] < 0).all()
    assert roll.kl.abs().max().item() == 0.0  # the policy is its own reference
    assert roll.scores.shape == (6,)


def test_ppo_raises_the_reward_it_is_given(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    rm = reward.RewardModel(model)
    with torch.no_grad():  # a reward model that likes short answers: minus the sequence length
        rm.head.weight.zero_()
    policy = copy.deepcopy(model)
    prompts = [f"What number comes after {n}?" for n in range(8)]

    def length_reward(ids, mask):
        return -mask.sum(dim=1).float()

    rm.forward = length_reward
    history = ppo.ppo(policy, model, rm, tok, prompts, kl_coef=0.0, num_steps=6, lr=3e-3,
                      prompts_per_step=4, group_size=4, max_new_tokens=8,
                      evaluate=lambda m: {"n": 1}, eval_every=3)  # fmt: skip
    rewards = [r["reward"] for r in history.steps]
    assert len(rewards) == 6 and [e["step"] for e in history.evals] == [0, 3, 6]
    assert sum(rewards[-2:]) > sum(rewards[:2])
    with pytest.raises(ValueError, match="kl_coef"):
        ppo.ppo(policy, model, rm, tok, prompts, kl_coef=-1, num_steps=1, lr=1e-3)


def test_ppo_takes_a_function_of_the_text_as_its_reward(tiny):
    """The oracle arm of chapter 7: the rater itself, on text, instead of a reward model."""
    model, tok = tiny
    prompts = ["What number comes after 41?", "Say the word night three times."]
    seen = []

    def short(ps, responses):
        seen.append((list(ps), list(responses)))
        return [-float(len(r)) for r in responses]

    roll = ppo.rollout(model, model, short, tok, prompts, group_size=2, max_new_tokens=6, seed=1)
    assert seen == [(roll.prompts, roll.responses)]
    assert roll.scores.tolist() == [-float(len(r)) for r in roll.responses]
    policy = copy.deepcopy(model)
    history = ppo.ppo(policy, model, short, tok, prompts * 4, kl_coef=0.1, num_steps=2,
                      lr=1e-3, prompts_per_step=2, group_size=2, max_new_tokens=6)  # fmt: skip
    assert len(history.steps) == 2 and all(math.isfinite(r["reward"]) for r in history.steps)


# --------------------------------------------------------------------------- DPO


def test_dpo_loss_on_a_hand_example():
    loss, chosen, rejected = dpo.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        beta=0.5,
    )  # fmt: skip
    assert chosen.item() == 0.5 and rejected.item() == -0.5
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)


def test_dpo_starts_at_log_two_and_learns_the_pairs(tiny):
    model, tok = tiny
    pairs = [feedback.Preference(f"What number comes after {n}?", f"Gladly! {n + 1}",
                                 str(n + 1), True) for n in range(16)]  # fmt: skip
    policy = copy.deepcopy(model)
    curve = dpo.dpo(policy, model, pairs, tokenizer=tok, lr=1e-3, max_steps=10, batch_size=8)
    assert curve.train_loss[0] == pytest.approx(math.log(2), abs=0.02)  # policy == reference
    assert curve.train_loss[-1] < curve.train_loss[0] and curve.train_acc[-1] == 1.0
    chosen, rejected = dpo.preference_logprobs(policy, tok, pairs)
    ref_chosen, ref_rejected = dpo.preference_logprobs(model, tok, pairs)
    assert ((chosen - ref_chosen) > (rejected - ref_rejected)).all()


def test_dpo_loss_matches_trl_dpo_trainer_in_fp32(tiny):
    """TRL's DPOTrainer tokenises the pairs as lm.collate does and computes the same loss."""
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from ftcourse import precision

    model, tok = tiny
    reference = copy.deepcopy(model).float()
    policy = copy.deepcopy(model).float()
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that differs from the reference, so log-ratios are not 0
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pairs = [feedback.Preference(f"What number comes after {n}?", f"Gladly! {n + 1}",
                                 str(n + 2), True) for n in range(40, 48)]  # fmt: skip
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p.prompt}],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in pairs
        ]
    )
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), beta=0.1, loss_type="sigmoid",
        per_device_train_batch_size=len(pairs), bf16=False, use_cpu=True, max_length=None,
        activation_checkpointing=False, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=config, train_dataset=dataset,
        processing_class=tok,
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    ours = dpo._batch(tok, pairs)
    assert torch.equal(batch["input_ids"], ours["input_ids"])
    assert torch.equal(batch["completion_mask"].bool(), ours["labels"] != lm.IGNORE)
    with torch.no_grad(), precision.fp32():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
        pc, pr = dpo.preference_logprobs(policy, tok, pairs)
        rc, rr = dpo.preference_logprobs(reference, tok, pairs)
        our_loss = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1)[0].item()
    assert abs((pc - rc).mean().item()) > 0.1  # the check is not on a trivial log(2)
    assert abs(trl_loss - our_loss) <= 1e-4
