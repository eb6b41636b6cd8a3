import pytest
import torch

from ftcourse import models
from ftcourse.train import evaluate, fit, seed_everything


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


def test_fit_steps_keeps_the_best_checkpoint_and_stops_on_patience():
    from ftcourse.train import fit_steps

    task = _toy_task(64)
    generator = seed_everything(0)
    model = models.build_cnn(2)
    curve = fit_steps(
        model,
        task,
        lr=3e-3,
        max_steps=40,
        val_set=task,
        eval_every=5,
        patience=10,
        generator=generator,
        progress=False,
    )
    assert curve.step[0] == 5 and curve.step == sorted(curve.step)
    assert len(curve.val_acc) == len(curve.seconds) == len(curve.train_acc) == len(curve.step)
    assert curve.best_val_acc == max(curve.val_acc)
    assert curve.best_step == curve.step[curve.val_acc.index(curve.best_val_acc)]
    assert curve.steps_run <= 40 and (
        curve.steps_run == 40 or curve.steps_run - curve.best_step >= 10
    )
    # The model holds the best checkpoint's weights: its accuracy is the best one.
    assert evaluate(model, task) == pytest.approx(curve.best_val_acc)
    assert curve.seconds == sorted(curve.seconds) and curve.best_seconds <= curve.seconds[-1]
    assert curve.reached(curve.best_val_acc)[0] <= curve.best_step
    assert curve.reached(1.01) is None


def test_checkpoints_keep_the_best_weights_and_stop_on_patience():
    """The one validation-checkpoint helper of fit_steps, lm.sft and the reward model."""
    from ftcourse.train import Checkpoints

    model = torch.nn.BatchNorm1d(2)  # a buffer too: running statistics come back as well
    checkpoints = Checkpoints(model, lr=0.1, patience=2)
    scores = {1: 0.5, 2: 0.7, 3: 0.7, 4: 0.6}  # the tie at step 3 keeps step 2
    stops = []
    for step, score in scores.items():
        with torch.no_grad():
            model.weight.fill_(step)
            model.running_mean.fill_(step)
        stops.append(checkpoints.record(step, score, seconds=step * 1.5, train_loss=1 / step))
    assert stops == [False, False, False, True]  # 2 steps past the best (step 2)
    curve = checkpoints.finish(steps_run=4)
    assert (curve.best_step, curve.best_val_acc, curve.steps_run) == (2, 0.7, 4)
    assert curve.step == [1, 2, 3, 4] and curve.val_acc == list(scores.values())
    assert curve.seconds == [1.5, 3.0, 4.5, 6.0] and curve.train_acc == []
    assert model.weight.tolist() == [2.0, 2.0] and model.running_mean.tolist() == [2.0, 2.0]
    assert curve.best_seconds == 3.0

    kept = torch.nn.Linear(1, 1)
    last = kept.weight.detach().clone()
    no_restore = Checkpoints(kept, lr=0.1, restore_best=False)  # never stops, keeps the last
    assert not no_restore.record(1, 0.9, seconds=1.0, train_loss=0.0, train_acc=1.0)
    with torch.no_grad():
        kept.weight.add_(1.0)
    assert not no_restore.record(2, 0.1, seconds=2.0, train_loss=0.0, train_acc=1.0)
    assert no_restore.finish(steps_run=2).train_acc == [1.0, 1.0]
    assert torch.equal(kept.weight, last + 1.0)


def test_cosine_schedule_warms_up_and_ends_at_zero():
    from ftcourse.train import cosine_schedule

    f = cosine_schedule(100)
    assert f(0) == pytest.approx(0.2)  # 5 warm-up steps
    assert f(4) == pytest.approx(1.0)
    assert f(52) == pytest.approx(0.5, abs=0.02)
    assert f(100) == pytest.approx(0.0, abs=1e-9)


def test_fit_steps_rejects_bad_input():
    from ftcourse.train import fit_steps

    model = models.build_cnn(2)
    with pytest.raises(ValueError, match="max_steps"):
        fit_steps(model, _toy_task(), lr=1e-3, max_steps=0, val_set=_toy_task())
    with pytest.raises(ValueError, match="schedule"):
        fit_steps(model, _toy_task(), lr=1e-3, max_steps=2, val_set=_toy_task(), schedule="step")


def test_fit_steps_ema_scores_and_keeps_the_moving_average_of_the_weights():
    """Chapter 8's FixMatch option: the average of the trajectory, weights and buffers."""
    from ftcourse.train import fit_steps

    task, decay = _toy_task(32), 0.3  # the warm-up's decay passes 0.3 at the third step

    def run(ema, restore_best):
        seen = []

        def spy(model):  # the weights before each step, recorded at no cost to the loss
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return torch.zeros(())

        torch.manual_seed(0)
        model = models.build_cnn(2)
        curve = fit_steps(model, task, lr=1e-2, max_steps=4, val_set=task, eval_every=2,
                          batch_size=16, generator=torch.Generator().manual_seed(0),
                          progress=False, extra_loss=spy, ema=ema,
                          restore_best=restore_best)  # fmt: skip
        return model, seen, curve

    live, trajectory, _ = run(None, False)
    averaged, same, curve = run(decay, False)
    for a, b in zip(trajectory, same, strict=True):  # the average does not steer training
        assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    expected = models.build_cnn(2).state_dict()  # the average starts at the initial model
    params = {k for k, _ in live.named_parameters()}
    after = trajectory[1:] + [live.state_dict()]  # the spy sees a step's weights before its
    for k_step, state in enumerate(after):  # update, and its buffers after its forward pass
        state = {k: (v if k in params else trajectory[k_step][k]) for k, v in state.items()}
        d = min(decay, (2 + k_step) / (11 + k_step))  # warmed up: 2/11, 3/12, 4/13, 5/14
        for k, v in state.items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
            else:
                expected[k] = v.clone()
    got = averaged.state_dict()
    assert all(torch.allclose(got[k].float(), expected[k].float(), atol=1e-6) for k in got)
    assert evaluate(averaged, task) == pytest.approx(curve.val_acc[-1])  # scored the average
    best, _, best_curve = run(decay, True)
    assert evaluate(best, task) == pytest.approx(best_curve.best_val_acc)
    with pytest.raises(ValueError, match="ema"):
        fit_steps(models.build_cnn(2), task, lr=1e-3, max_steps=2, val_set=task, ema=1.0)


def test_ema_decay_warms_up_to_its_value():
    from ftcourse.train import ema_decay

    assert ema_decay(0.99, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.99, 50) == pytest.approx(51 / 60)  # a short run keeps little of its start
    assert ema_decay(0.99, 10_000) == 0.99
    assert ema_decay(0.3, 2) == pytest.approx(0.25) and ema_decay(0.3, 3) == 0.3


def test_linear_probe_separates_separable_features():
    from ftcourse.train import features, linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 8, generator=g) + 3 * y[:, None].float()
    assert linear_probe((x[:100], y[:100]), (x[100:], y[100:])) > 0.95
    noise = torch.randn(200, 8, generator=g)
    assert linear_probe((noise[:100], y[:100]), (noise[100:], y[100:])) < 0.75
    feats, labels = features(models.build_cnn(2), _toy_task(10))
    assert feats.shape == (10, 256) and labels.tolist() == (torch.arange(10) % 2).tolist()


def test_cosine_schedule_with_a_floor_ends_there():
    from ftcourse.train import cosine_schedule

    f = cosine_schedule(200, warmup=10, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(200) == pytest.approx(0.1) and 0.1 < f(100) < 1.0
