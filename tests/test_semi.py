"""Chapter 8's package code: pseudo-label selection, the consistency loss, self-training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ftcourse import models, semi
from ftcourse.train import fit_steps


def test_select_keeps_rows_at_or_above_the_threshold():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    chosen = semi.select(probs, 0.7)
    assert chosen.index.tolist() == [0, 2, 3]  # 0.7 itself is kept
    assert chosen.label.tolist() == [0, 1, 1]
    assert chosen.confidence.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert chosen.coverage == pytest.approx(0.75)
    truth = torch.tensor([0, 0, 1, 0])
    assert chosen.precision(truth) == pytest.approx(2 / 3)
    assert semi.select(probs, 0.0).coverage == 1.0
    none = semi.select(probs, 0.95)
    assert none.coverage == 0.0 and math.isnan(none.precision(truth))


def test_balanced_selection_keeps_the_most_confident_equally_per_class():
    probs = torch.tensor(
        [[0.99, 0.01], [0.97, 0.03], [0.95, 0.05], [0.02, 0.98], [0.6, 0.4], [0.1, 0.9]]
    )
    plain = semi.select(probs, 0.9)
    assert plain.class_counts == [3, 2]
    balanced = semi.select(probs, 0.9, balance=True)
    assert balanced.class_counts == [2, 2]
    assert balanced.index.tolist() == [0, 1, 3, 5]  # class 0's least sure (0.95) is dropped
    only_one = semi.select(probs, 0.99, balance=True)  # class 1 has no row above 0.99
    assert only_one.index.tolist() == [0] and only_one.class_counts == [1, 0]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_select_rejects_a_threshold_outside_0_1(threshold):
    with pytest.raises(ValueError, match="threshold"):
        semi.select(torch.full((2, 2), 0.5), threshold)


def test_consistency_loss_on_hand_tensors():
    # row 0: the weak view is sure of class 2 (p = e^5 / (e^5 + 2) = 0.987); row 1 is not
    weak = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.9, 0.0]], requires_grad=True)
    strong = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    loss, mask = semi.consistency_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [True, False]
    # cross-entropy of row 0 against class 2, divided by the whole batch (2 rows)
    expected = math.log(math.e + 2) / 2  # -log softmax([1, 0, 0])[2], over 2 rows
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert weak.grad is None  # the pseudo-label is a constant
    assert strong.grad[1].abs().sum() == 0  # an unsure row adds nothing
    assert strong.grad[0].abs().sum() > 0


def test_consistency_loss_is_zero_when_nothing_is_confident():
    loss, mask = semi.consistency_loss(torch.zeros(4, 3), torch.randn(4, 3), threshold=0.5)
    assert not mask.any() and loss.item() == 0.0


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))


def _toy_data(n: int, seed: int) -> TensorDataset:
    """Three classes of 28x28 images: a bright square in one of three places (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = -torch.ones(n, 1, 28, 28) + 0.1 * torch.randn(n, 1, 28, 28, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 4 + 8 * c : 10 + 8 * c, 10:18] = 1.0
    return TensorDataset(x, y)


def test_fixmatch_logs_its_mask_rate_and_precision():
    pool = _toy_data(30, seed=1)
    fixmatch = semi.FixMatch(*pool.tensors, threshold=0.0, batch_size=8)
    model = _tiny_model()
    loss = fixmatch(model)
    assert loss.requires_grad and loss.item() > 0
    assert fixmatch.mask_rate == [1.0]  # threshold 0: every row is confident
    assert 0.0 <= fixmatch.precision[0] <= 1.0
    sure = semi.FixMatch(pool.tensors[0], threshold=1.0, batch_size=8)
    assert sure(model).item() == 0.0 and sure.mask_rate == [0.0] and sure.precision == []


def test_self_training_never_reads_the_pools_labels():
    labelled, val, pool = _toy_data(6, 0), _toy_data(9, 2), _toy_data(60, 1)
    x, y = pool.tensors
    runs = []
    for truth in (y, y.roll(1)):  # the second pool's "true labels" are all wrong
        model = _tiny_model()
        curve = semi.fit_self_training(
            model,
            labelled,
            unlabelled=TensorDataset(x, truth),
            rounds=2,
            threshold=0.5,
            balance=False,
            score_set=val,
            lr=0.05,
            max_steps=6,
            val_set=val,
            eval_every=3,
            batch_size=8,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        runs.append((model.state_dict(), curve.extra["rounds"]))
    (a, rounds_a), (b, rounds_b) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)  # identical training
    assert [r["round"] for r in rounds_a] == [0, 1, 2]
    assert rounds_a[0]["train_size"] == 6 and math.isnan(rounds_a[0]["precision"])
    for ra, rb in zip(rounds_a[1:], rounds_b[1:], strict=True):
        assert ra["train_size"] == 6 + round(ra["coverage"] * 60)
        assert ra["coverage"] == rb["coverage"] > 0
        # only the measured precision differs: the rolled labels are wrong everywhere
        assert ra["precision"] > 0.5 and rb["precision"] < ra["precision"]
        assert 0 <= ra["score"] <= 1


def test_self_training_up_weights_the_real_labels_to_the_share_asked():
    labelled, val, pool = _toy_data(6, 0), _toy_data(9, 2), _toy_data(60, 1)
    common = dict(unlabelled=pool, rounds=1, threshold=0.0, balance=False, lr=0.05,
                  max_steps=4, val_set=val, eval_every=2, batch_size=8, progress=False)  # fmt: skip
    curve = semi.fit_self_training(_tiny_model(), labelled, label_share=0.5, **common)
    r1 = curve.extra["rounds"][1]
    assert r1["coverage"] == 1.0  # threshold 0: all 60 pseudo-labelled
    assert r1["label_repeats"] == 10 and r1["train_size"] == 10 * 6 + 60  # half are labels
    plain = semi.fit_self_training(_tiny_model(), labelled, **common).extra["rounds"][1]
    assert plain["label_repeats"] == 1 and plain["train_size"] == 66
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="label_share"):
            semi.fit_self_training(_tiny_model(), labelled, label_share=bad, **common)


def test_fit_steps_adds_the_extra_loss_and_augments_every_batch():
    data = _toy_data(12, 0)
    calls = {"augment": 0, "extra": 0}

    def augment(x):
        calls["augment"] += 1
        return x

    def extra(model):
        calls["extra"] += 1
        return sum(p.sum() for p in model.parameters()) * 0.0

    def train(**kw):
        model = _tiny_model()
        fit_steps(
            model, data, lr=0.1, max_steps=5, val_set=data, batch_size=4, progress=False,
            generator=torch.Generator().manual_seed(0), **kw,
        )  # fmt: skip
        return model.state_dict()

    plain, hooked = train(), train(augment=augment, extra_loss=extra)
    assert calls == {"augment": 5, "extra": 5}
    assert all(torch.equal(plain[k], hooked[k]) for k in plain)  # identity and + 0 change nothing


def test_augmentations_keep_shape_range_and_background():
    x = _toy_data(16, 0).tensors[0].clamp(-1, 1)
    g = torch.Generator().manual_seed(0)
    for aug in (semi.weak, semi.strong, semi.simclr_views):
        assert aug(x, g).shape == x.shape
    black = -torch.ones(4, 1, 28, 28)
    assert torch.allclose(semi.weak(black, g), black)  # shifting black leaves it black
    out = semi.strong(x, g)
    assert out.min() >= -1 and out.max() <= 1
    assert ((out == 0).flatten(1).sum(1) >= 12 * 12 // 2).all()  # a grey square in each
    assert not torch.equal(semi.weak(x, g), semi.weak(x, g))  # random


def test_simclr_loss_is_low_for_matching_views_and_matches_its_formula():
    z = torch.eye(4) * 10
    assert semi.simclr_loss(z, z, temperature=0.05).item() < 1e-3
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    zs = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = zs @ zs.T / 0.2
    manual = []
    for i in range(6):
        partner = (i + 3) % 6
        others = torch.cat([sim[i, :i], sim[i, i + 1 :]])
        manual.append(-(sim[i, partner] - torch.logsumexp(others, 0)))
    assert semi.simclr_loss(z1, z2, 0.2).item() == pytest.approx(torch.stack(manual).mean().item())


def test_simclr_pretrain_trains_the_encoder_and_with_head_carries_its_weights():
    encoder = models.build_cnn(0)
    before = encoder.conv1[0].weight.detach().clone()
    images = _toy_data(64, 0).tensors[0]
    losses = semi.simclr_pretrain(
        encoder,
        images,
        steps=6,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert not torch.equal(before, encoder.conv1[0].weight)
    model = semi.with_head(encoder, lambda: models.build_cnn(3))
    assert torch.equal(model.conv1[0].weight, encoder.conv1[0].weight)
    assert model.get_classifier().out_features == 3
    with pytest.raises(ValueError, match="does not fit"):
        semi.with_head(encoder, lambda: models.build_cnn(3, channels=(16, 32, 64, 128)))
