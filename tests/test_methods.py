"""Partial fine-tuning methods (chapter 3): what trains, what stays bit-identical, the counts."""

from __future__ import annotations

import pytest
import torch

from ftcourse import methods, models
from ftcourse.memory import count_parameters
from ftcourse.train import fit

torch.set_num_threads(1)


def _task(n: int = 32) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_cnn(2)


def _fit(model: torch.nn.Module, weight_decay: float = 0.0) -> None:
    fit(
        model,
        _task(),
        num_epochs=1,
        lr=1e-2,
        weight_decay=weight_decay,
        progress=False,
        generator=torch.Generator().manual_seed(0),
    )


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _assert_only_top_moved(before: dict, after: dict) -> None:
    """Everything below layer4 is bit-identical; layer4 and the head have moved.

    timm zero-initialises the last BatchNorm gamma of each residual block (``zero_init_last``),
    so after one step the block's inner convolutions have had zero gradient: check the
    tensors that do get one (head, ``bn2.weight``, the shortcut's convolution).
    """
    for name, value in after.items():
        if not name.startswith(("layer4.", "fc.")):
            assert torch.equal(before[name], value), name
    for name in ["fc.weight", "fc.bias", "layer4.0.bn2.weight", "layer4.0.downsample.1.weight"]:
        assert not torch.equal(before[name], after[name]), name


def test_freeze_and_unfreeze():
    model = _model()
    assert methods.freeze(model) is model
    assert methods.trainable_fraction(model) == 0.0
    methods.unfreeze(model.fc)
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    assert methods.unfreeze(model) is model
    assert methods.trainable_fraction(model) == 1.0


def test_top_blocks_head_only_and_everything():
    model = _model()
    blocks = models.blocks(model)
    methods.unfreeze_top_blocks(model, blocks, k=0)
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    assert count_parameters(model, trainable_only=True) == 256 * 2 + 2
    methods.unfreeze_top_blocks(model, blocks, k=len(blocks) - 1)
    assert methods.trainable_fraction(model) == 1.0


def test_top_blocks_k1_trains_layer4_and_fc_only_and_frozen_weights_do_not_move():
    model = _model()
    blocks = models.blocks(model)
    methods.unfreeze_top_blocks(model, blocks, k=1)
    expected = count_parameters(model.layer4) + count_parameters(model.fc)
    assert count_parameters(model, trainable_only=True) == expected
    assert methods.trainable_fraction(model) == pytest.approx(expected / count_parameters(model))
    before = _snapshot(model)
    _fit(model)
    _assert_only_top_moved(before, dict(model.named_parameters()))


@pytest.mark.parametrize("k", [-1, 6, 1.0, True])
def test_top_blocks_rejects_bad_k(k):
    model = _model()
    with pytest.raises(ValueError, match="k must be an integer in 0..5"):
        methods.unfreeze_top_blocks(model, models.blocks(model), k)
    with pytest.raises(ValueError, match="blocks is empty"):
        methods.unfreeze_top_blocks(model, [], 0)


def test_bitfit_counts_biases_plus_head():
    model = _model()
    biases = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith("bias") and not n.startswith("fc.")
    )
    # The convolutions have no bias: these are the BatchNorm betas (stem: 24, 32, 64; then
    # bn1, bn2 and the downsample BatchNorm of each stage's one block).
    assert biases == 24 + 32 + 64 + 3 * (32 + 64 + 128 + 256)
    methods.bitfit(model)
    assert count_parameters(model, trainable_only=True) == biases + 256 * 2 + 2
    assert not model.bn1.weight.requires_grad and model.bn1.bias.requires_grad
    methods.bitfit(model, train_head=False)
    assert count_parameters(model, trainable_only=True) == biases + 2  # fc.bias is a bias
    assert not model.fc.weight.requires_grad


def test_batchnorm_running_stats_move_unless_frozen_layers_stay_in_eval():
    model = _model()
    methods.unfreeze_top_blocks(model, models.blocks(model), k=1)
    before = _snapshot(model)
    _fit(model)  # without the helper, frozen BatchNorm layers still update their statistics
    assert not torch.equal(before["bn1.running_mean"], model.bn1.running_mean)

    model = _model()
    methods.unfreeze_top_blocks(model, models.blocks(model), k=1)
    handles = methods.freeze_batchnorm_stats(model)
    frozen_bns = sum(
        isinstance(m, torch.nn.BatchNorm2d) for n, m in model.named_modules() if "layer4" not in n
    )
    assert len(handles) == frozen_bns > 0
    before = _snapshot(model)
    _fit(model)  # fit calls model.train(); the hooks keep frozen BatchNorm in eval mode
    _assert_only_top_moved(before, model.state_dict())
    assert not torch.equal(before["layer4.0.bn1.running_var"], model.layer4[0].bn1.running_var)
    assert not model.bn1.training and model.layer4[0].bn1.training
    for h in handles:
        h.remove()
    model.train()
    assert model.bn1.training


def test_gradient_scores_leave_the_model_as_it_was():
    model = _model()
    methods.unfreeze_top_blocks(model, models.blocks(model), k=0)
    before = _snapshot(model)
    x, y = _task(16).tensors
    batches = [(x[:8], y[:8]), (x[8:], y[8:]), (x[:8], y[:8])]
    scores = methods.gradient_scores(model, batches, num_batches=2)
    assert set(scores) == {n for n, _ in model.named_parameters()}
    assert all(scores[n].shape == p.shape for n, p in model.named_parameters())
    assert scores["conv1.0.weight"].sum() > 0  # frozen parameters are scored too
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(before[name], value), name
    # The sum over two batches equals the two single-batch scores added.
    one = methods.gradient_scores(model, batches[:1])
    two = methods.gradient_scores(model, batches[1:2])
    torch.testing.assert_close(scores["fc.weight"], one["fc.weight"] + two["fc.weight"])


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.3])
def test_sparse_mask_selects_the_top_fraction(fraction):
    model = _model()
    total = count_parameters(model)
    g = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    masks = methods.sparse_masks(model, fraction, scores)
    assert set(masks) == set(scores)
    assert all(m.dtype == torch.bool and m.shape == scores[n].shape for n, m in masks.items())
    chosen = sum(int(m.sum()) for m in masks.values())
    assert chosen == round(fraction * total)
    assert methods.mask_fraction(masks, model) == pytest.approx(fraction, abs=2 / total)
    # Global top-k: every chosen score is at least every unchosen one.
    low = min(scores[n][m].min() for n, m in masks.items() if m.any())
    high = max(scores[n][~m].max() for n, m in masks.items() if (~m).any())
    assert low >= high


def test_sparse_training_moves_only_masked_in_weights():
    model = _model()
    x, y = _task().tensors
    scores = methods.gradient_scores(model, [(x[:16], y[:16]), (x[16:], y[16:])])
    masks = methods.sparse_masks(model, 0.01, scores)
    handles = methods.apply_masks(model, masks)
    assert handles
    empty = {n for n, m in masks.items() if not m.any()}
    assert _trainable(model) == set(masks) - empty
    before = _snapshot(model)
    _fit(model)
    changed = 0
    for name, p in model.named_parameters():
        mask = masks[name]
        assert torch.equal(p[~mask], before[name][~mask]), name
        changed += int((p[mask] != before[name][mask]).sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in masks.values())


def test_weight_decay_moves_masked_out_weights():
    model = _model()
    x, y = _task().tensors
    masks = methods.sparse_masks(model, 0.01, methods.gradient_scores(model, [(x, y)]))
    methods.apply_masks(model, masks)
    name = next(n for n, m in masks.items() if m.any() and not m.all())
    before = dict(model.named_parameters())[name].detach().clone()
    _fit(model, weight_decay=0.1)  # the pitfall documented in apply_masks
    after = dict(model.named_parameters())[name]
    assert not torch.equal(after[~masks[name]], before[~masks[name]])


def test_sparse_masks_default_to_the_last_gradients():
    model = _model()
    with pytest.raises(ValueError, match="no gradients"):
        methods.sparse_masks(model, 0.1)
    x, y = _task(8).tensors
    torch.nn.functional.cross_entropy(model(x), y).backward()
    masks = methods.sparse_masks(model, 0.1)
    expected = methods.sparse_masks(
        model, 0.1, {n: p.grad.abs() for n, p in model.named_parameters()}
    )
    assert all(torch.equal(masks[n], expected[n]) for n in masks)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_sparse_masks_reject_bad_fraction(fraction):
    model = _model()
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        methods.sparse_masks(model, fraction, scores)


def test_masks_and_scores_are_validated():
    model = _model()
    with pytest.raises(ValueError, match="not a parameter"):
        methods.sparse_masks(model, 0.1, {"nope": torch.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        methods.sparse_masks(model, 0.1, {"fc.bias": torch.ones(3)})
    with pytest.raises(ValueError, match="only 2 have scores"):
        methods.sparse_masks(model, 0.5, {"fc.bias": torch.ones(2)})
    with pytest.raises(ValueError, match="does not have"):
        methods.apply_masks(model, {"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensor"):
        methods.apply_masks(model, {"fc.bias": torch.ones(2)})


def test_freeze_batchnorm_stats_can_freeze_every_layer():
    model = _model()
    methods.bitfit(model)  # BatchNorm shifts trainable
    assert not methods.freeze_batchnorm_stats(model)  # only frozen layers: none here
    handles = methods.freeze_batchnorm_stats(model, only_frozen=False)
    assert len(handles) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = _snapshot(model)
    _fit(model)
    after = model.state_dict()
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["bn1.bias"], after["bn1.bias"])  # the shift still trains


@pytest.mark.parametrize("k", [0, 2, 5])
def test_precomputed_frozen_bottom_trains_like_the_whole_model(k):
    """Training the top on precomputed outputs of the frozen bottom gives the same weights."""
    results = []
    for precomputed in (False, True):
        model = _model()
        methods.unfreeze_top_blocks(model, models.blocks(model), k)
        methods.freeze_batchnorm_stats(model, only_frozen=False)
        bottom, top = methods.split_frozen(models.blocks(model))
        assert len(bottom) == len(models.blocks(model)) - 1 - k
        data = methods.precompute(bottom, _task()) if precomputed else _task()
        net = top if precomputed else model
        fit(
            net,
            data,
            num_epochs=1,
            lr=1e-2,
            progress=False,
            generator=torch.Generator().manual_seed(0),
        )
        results.append(_snapshot(model))
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_target_batchnorm_stats_describe_the_target_and_change_no_weight():
    import torch

    from ftcourse import methods, models

    model = models.build("tiny-cnn", 5)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    x = torch.randn(64, 1, 28, 28) * 2 + 3  # far from the source's statistics
    data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
    first_conv, first_bn = model.conv1[0], model.conv1[1]
    momentum = first_bn.momentum
    methods.target_batchnorm_stats(model, data, batch_size=16)
    with torch.no_grad():
        out = first_conv(x)
    assert torch.allclose(first_bn.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert first_bn.momentum == momentum and model.training
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
