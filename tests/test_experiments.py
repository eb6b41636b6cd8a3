"""The experiment helper: choices on validation, the test set once, honest statistics."""

import numpy as np
import pytest
import torch
from torch import nn

from ftcourse import experiments
from ftcourse.train import Curve


class Counting(torch.utils.data.Dataset):
    """A dataset that counts how often its items are read."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads += 1
        return self.dataset[i]


def _task(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) + 2 * y[:, None, None, None].float()
    return torch.utils.data.TensorDataset(x, y)


def _linear(train):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_run_arm_chooses_on_validation_and_reads_the_test_set_once():
    test = Counting(_task(50, 99))
    trials = experiments.run_arm(
        "linear",
        _linear,
        lambda seed: (_task(40, seed), _task(40, 100 + seed)),
        test,
        seeds=[0, 1, 2],
        lrs=[1e-6, 1e-1],
        budget=experiments.Budget(max_steps=20, eval_every=5),
    )
    assert test.reads == 3 * len(test)  # once per seed, for the chosen model only
    assert [t.seed for t in trials] == [0, 1, 2]
    assert all(t.lr == 1e-1 for t in trials)  # 1e-6 cannot learn in 20 steps
    assert set(trials[0].grid) == {1e-6, 1e-1} and trials[0].grid[1e-1] > trials[0].grid[1e-6]
    assert trials[1].grid == {}  # tune="first": later seeds reuse the choice
    assert all(t.test_acc >= 0.75 and t.trainable == 16 * 2 + 2 for t in trials)
    assert all(t.val_acc == t.curve.best_val_acc and t.steps == t.curve.best_step for t in trials)


def test_tune_each_tunes_every_seed_and_measure_and_prepare_are_called():
    seen = []
    trials = experiments.run_arm(
        "linear",
        _linear,
        lambda seed: (_task(40, seed), _task(40, 100 + seed)),
        _task(30, 7),
        seeds=[0, 1],
        lrs=[1e-3, 1e-1],
        budget=experiments.Budget(max_steps=10, eval_every=5),
        tune="each",
        measure=lambda model: {"norm": float(model[1].weight.detach().norm())},
        prepare=lambda m, tr, va, te: (seen.append(1) or m, tr, va, te),
    )
    assert all(len(t.grid) == 2 and t.extra["norm"] > 0 for t in trials)
    assert len(seen) == 4  # once per run: 2 seeds x 2 rates
    with pytest.raises(ValueError, match="tune"):
        experiments.run_arm("x", _linear, None, None, seeds=[0], lrs=[1], budget=None, tune="all")


def test_tune_over_chooses_one_rate_by_mean_validation_over_seeds():
    trials = experiments.run_arm(
        "linear",
        _linear,
        lambda seed: (_task(40, seed), _task(40, 100 + seed)),
        _task(30, 7),
        seeds=[0, 1],
        lrs=[1e-6, 1e-1],
        budget=experiments.Budget(max_steps=10, eval_every=5),
        tune="over",
    )
    assert {t.lr for t in trials} == {1e-1}
    means = trials[0].grid
    assert set(means) == {1e-6, 1e-1} and means[1e-1] > means[1e-6]
    assert all(t.correct is not None and t.correct.mean() == t.test_acc for t in trials)


def test_paired_statistics():
    d = experiments.paired(np.array([0.8, 0.7, 0.9, 0.6]), np.array([0.7, 0.7, 0.8, 0.5]))
    assert d.mean == pytest.approx(0.075) and d.wins == 3 and d.n == 4
    assert d.se == pytest.approx(np.std([0.1, 0.0, 0.1, 0.1], ddof=1) / 2)
    assert d.clear  # 0.075 > 2 * 0.025
    assert not experiments.paired(np.array([0.8, 0.6, 0.7]), np.array([0.7, 0.7, 0.7])).clear
    one = experiments.paired(np.array([0.9]), np.array([0.1]))
    assert one.se == 0.0 and not one.clear  # one seed never makes a claim
    with pytest.raises(ValueError, match="same"):
        experiments.paired(np.array([1.0]), np.array([1.0, 2.0]))


def _trial(steps, vals, seconds):
    curve = Curve(lr=1.0, step=steps, val_acc=vals, seconds=seconds)
    best = int(np.argmax(vals))
    curve.best_step, curve.best_val_acc, curve.steps_run = steps[best], vals[best], steps[-1]
    return experiments.Trial(
        "x", 0, 1.0, steps[best], steps[-1], seconds[best], vals[best], 0.0, 1, curve
    )


def test_steps_to_target_uses_a_level_both_arms_reach():
    fast = _trial([10, 20, 30], [0.82, 0.85, 0.84], [1.0, 2.0, 3.0])
    slow = _trial([10, 20, 30], [0.30, 0.60, 0.90], [1.5, 3.0, 4.5])
    r = experiments.steps_to_target([fast], [slow], fraction=0.95)
    assert r["target"] == [pytest.approx(0.95 * 0.85)]
    assert r["steps_a"] == [10] and r["steps_b"] == [30]
    assert r["seconds_a"] == [1.0] and r["seconds_b"] == [4.5]
    assert not fast.hit_budget and slow.hit_budget


def test_chosen_lr_takes_the_best_mean_over_seeds():
    rows = [
        {"arm": "a", "lr": 0.1, "seed": 0, "val_acc": 0.9},
        {"arm": "a", "lr": 0.1, "seed": 1, "val_acc": 0.5},
        {"arm": "a", "lr": 0.01, "seed": 0, "val_acc": 0.8},
        {"arm": "a", "lr": 0.01, "seed": 1, "val_acc": 0.8},
        {"arm": "b", "lr": 0.1, "seed": 0, "val_acc": 1.0},
    ]
    assert experiments.chosen_lr(rows, arm="a") == 0.01
    assert experiments.chosen_lr(rows, arm="b") == 0.1
    with pytest.raises(KeyError, match="no grid-search rows"):
        experiments.chosen_lr(rows, arm="c")
    assert experiments.at_grid_edge([_trial([1], [0.5], [0.1])], [0.1, 1.0]) == "largest"


def test_table_is_markdown_with_one_row_per_arm():
    t = _trial([10], [0.5], [0.1])
    text = experiments.table({"one": [t], "two": [t]}, total_params=4)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| one |") and "(25.00%)" in lines[2]


def test_budget_fit_kwargs_are_what_fit_steps_takes():
    import inspect

    from ftcourse.train import fit_steps

    kwargs = experiments.Budget(max_steps=7, eval_every=3, patience=None, batch_size=4).fit_kwargs()
    assert kwargs == {"max_steps": 7, "eval_every": 3, "patience": None, "batch_size": 4}
    assert set(kwargs) <= set(inspect.signature(fit_steps).parameters)


def test_verdict_says_who_is_better_only_when_clear():
    a, b = np.array([0.8, 0.82, 0.81]), np.array([0.7, 0.71, 0.69])
    assert experiments.verdict(experiments.paired(a, b), "A", "B").startswith("A beats B clearly")
    assert experiments.verdict(experiments.paired(b, a), "B", "A").startswith("A beats B clearly")
    noisy = np.array([0.9, 0.6, 0.75])
    assert experiments.verdict(experiments.paired(noisy, b), "A", "B").startswith("no clear")


def test_time_per_step_times_every_model_and_trains_only_the_trainable():
    torch.manual_seed(0)
    frozen_body = nn.Linear(8, 8).requires_grad_(False)
    models = {
        "full": nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)),
        "head": nn.Sequential(frozen_body, nn.Linear(8, 3)),
    }
    before = frozen_body.weight.clone()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    times = experiments.time_per_step(models, x, y, rounds=3)
    assert set(times) == {"full", "head"} and all(t > 0 for t in times.values())
    assert torch.equal(frozen_body.weight, before)
