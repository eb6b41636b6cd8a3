import pytest
import torch

from ftcourse import models
from ftcourse.profiles import seed_everything
from ftcourse.train import evaluate, fit


def _toy_task(n: int = 64) -> torch.utils.data.TensorDataset:
    """Noise images; class 1 has a bright square in the top-left corner."""
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :, :8, :8] += 1.5
    return torch.utils.data.TensorDataset(x, y)


def _train(seed: int) -> torch.nn.Module:
    generator = seed_everything(seed)
    model = models.build_cnn(2)
    fit(
        model,
        _toy_task(),
        num_epochs=2,
        lr=1e-3,
        batch_size=16,
        generator=generator,
        progress=False,
    )
    return model


def test_a_short_run_is_deterministic_per_seed():
    a, b, c = _train(0), _train(0), _train(1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_history_and_learning():
    task = _toy_task(128)
    generator = seed_everything(0)
    model = models.build_cnn(2)
    history = fit(
        model,
        task,
        num_epochs=10,
        lr=3e-3,
        batch_size=32,
        val_set=task,
        generator=generator,
        progress=False,
    )
    assert history.epoch == list(range(1, 11))
    assert len(history.train_loss) == len(history.val_acc) == 10
    assert history.train_loss[-1] < history.train_loss[0]
    # In eval mode BatchNorm uses running statistics, which lag behind for a few epochs when
    # training from scratch; after 10 epochs they have caught up.
    assert history.final_val_acc == evaluate(model, task) > 0.9
    assert history.seconds > 0


def test_frozen_parameters_are_bit_identical_after_training():
    generator = seed_everything(0)
    model = models.build_cnn(2)
    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_classifier().parameters():
        p.requires_grad = True
    before = {k: v.clone() for k, v in model.named_parameters()}
    fit(model, _toy_task(), num_epochs=1, lr=1e-2, generator=generator, progress=False)
    for name, p in model.named_parameters():
        same = torch.equal(before[name], p)
        assert same != name.startswith("fc."), name


def test_bad_input_is_a_clear_error():
    model = models.build_cnn(2)
    with pytest.raises(ValueError, match="num_epochs"):
        fit(model, _toy_task(), num_epochs=0, lr=1e-3)
    with pytest.raises(ValueError, match="empty"):
        fit(
            model,
            torch.utils.data.TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0).long()),
            num_epochs=1,
            lr=1,
        )
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, _toy_task(), num_epochs=1, lr=1e-3)
