"""The SmolLM2 and widths studies' helpers: evaluation sets by length, tiny-lm at other
widths, the size trend read from the stored studies, the peak-memory table, and their plots
(chapters 4-5)."""

import csv
import json

import matplotlib
import numpy as np
import pytest
import torch

from ftcourse import plots, pretrain, studies
from ftcourse.chapters import additive, lora, smollm2, widths

matplotlib.use("Agg")


def test_by_length_keeps_every_example_shortest_first():
    ids = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0], [5, 6, 0, 0]])
    ds = torch.utils.data.TensorDataset(ids, torch.tensor([0, 1, 2]))
    out = smollm2.by_length(ds, pad_id=0)
    assert out.tensors[1].tolist() == [1, 2, 0]
    assert sorted(map(tuple, out.tensors[0].tolist())) == sorted(map(tuple, ids.tolist()))


def test_every_arm_is_a_registered_method_with_a_grid():
    from ftcourse.methods import registry

    for arm in smollm2.ARMS:
        method, _ = additive.parse_arm(arm)
        assert method in registry.names() and len(smollm2.GRIDS[method]) >= 3
    # the placement comparison is at about equal parameters (SmolLM2: 576 wide, kv 192)
    assert "lora-all 3" in smollm2.ARMS and "lora 16" in smollm2.ARMS


def test_the_trend_reads_each_gap_from_its_own_study():
    """tiny-lm's points are studies 04 and 05: the same differences as their claims."""
    trend = smollm2.trend("04")
    (tiny,) = [p for p in trend["adapters (bottleneck 32)"] if p.study == "04"]
    claim = additive.CLAIMS_BY_ID["full-vs-adapter-32"]
    d = claim.difference(studies.load("04"), tiny.regime, additive.TUNING_SEEDS)
    assert tiny.difference.mean == pytest.approx(-d.mean, abs=1e-12)
    assert 1.2e6 < tiny.parameters < 1.4e6  # tiny-lm and its head
    curves = smollm2.rank_curves()
    ranks = [r for r, _ in curves["tiny-lm"]]
    assert ranks == [1, 4, 16]
    (r16,) = [p for r, p in curves["tiny-lm"] if r == 16]
    d = lora.CLAIMS_BY_ID["full-vs-lora-16"].difference(
        studies.load("05"), r16.regime, lora.TUNING_SEEDS
    )
    assert r16.difference.mean == pytest.approx(-d.mean, abs=1e-12)
    assert "tiny-lm (1.3 M" in smollm2.trend_sentences(trend)


def _point(study, params, mean, model=""):
    d = studies.Difference("a", "b", mean, mean - 0.01, mean + 0.02, 3, 100)
    return smollm2.TrendPoint("a", study, params, "fp32", d, model=model)


def test_tiny_lm_at_other_widths_keeps_its_shape():
    """Width 128 is the shipped tiny-lm; other widths scale the MLP with it (2.75x)."""
    config = json.loads((pretrain.ZOO_DIR / "tiny-lm" / "config.json").read_text())
    assert {k: config[k] for k in pretrain.LM_SIZE} == pretrain.lm_size(128) == pretrain.LM_SIZE
    assert pretrain.lm_size(64)["intermediate_size"] == 176
    assert pretrain.lm_size(256)["intermediate_size"] == 704
    assert (pretrain.lm_name(128), pretrain.lm_name(64)) == ("tiny-lm", "tiny-lm-w64")
    with pytest.raises(ValueError, match="multiple of 16"):
        pretrain.lm_size(100)


def test_pretrain_keep_leaves_a_pretrained_width_alone(tmp_path, capsys):
    out = tmp_path / "w64"
    out.mkdir()
    (out / "card.json").write_text("{}")
    assert pretrain.main(["lm", "--width", "64", "--out", str(out), "--keep"]) == 0
    assert "kept" in capsys.readouterr().out and list(out.iterdir()) == [out / "card.json"]
    with pytest.raises(SystemExit):
        pretrain.main(["cnn", "--width", "64"])


def test_a_width_not_pretrained_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ftcourse pretrain lm --width 64"):
        widths.model_folder("tiny-lm-w64")
    with pytest.raises(KeyError, match="tiny-lm-w64"):
        widths.model_folder("tiny-lm-w7")


def test_the_widths_study_runs_chapter_4_and_5s_settings_at_every_width():
    for model in widths.MODELS:
        arms = [w["arm"] for w, _ in widths.GROUPS if w["model"] == model]
        assert arms == list(widths.ARMS)
    for where, s in widths.GROUPS:
        method, _ = additive.parse_arm(where["arm"])
        chapter = lora if method in lora.GRIDS else additive
        base = chapter.setting(where["arm"])
        assert (s.lrs, s.max_steps, s.batch_size) == (base.lrs, base.max_steps, base.batch_size)
        assert s.seeds == widths.SEEDS
    # every family of the trend and every rank of the curve has its arm at every width
    arms = {a for fam in smollm2.FAMILIES.values() for a in fam.values()}
    arms |= {f"lora {r}" for r in smollm2.RANK_SWEEPS["widths"]}
    assert arms <= set(widths.ARMS)


def test_sizes_put_each_width_on_its_side_of_tiny_lm():
    names = [name for name, _, _ in smollm2.sizes("05")]
    assert names.index("tiny-lm") > max(names.index(m) for m in widths.MODELS if "w64" in m)
    assert names[-1] == "SmolLM2-135M"
    assert [s for n, s, _ in smollm2.sizes("04") if n == "tiny-lm"] == ["04"]


def test_size_list_names_each_model_once_smallest_first():
    families = {
        "a": [_point("widths", 460_000, -0.1, "tiny-lm-w64"), _point("04", 1_330_000, -0.05)],
        "b": [_point("smollm2", 134_520_000, 0.0, "SmolLM2-135M")],
    }
    families["a"][1] = smollm2.TrendPoint(
        "a", "04", 1_330_000, "fp32", families["a"][1].difference, model="tiny-lm"
    )
    assert smollm2.size_list(families) == (
        "tiny-lm-w64 (0.46 M parameters), tiny-lm (1.3 M) and SmolLM2-135M (134.5 M)"
    )
    assert smollm2.size_list({}) == ""


def test_size_trend_and_rank_curve_draw_each_point_with_its_interval():
    families = {"adapters": [_point("04", 1_300_000, -0.06), _point("smollm2", 135e6, -0.01)]}
    ax = plots.size_trend(families)
    (line,) = [c.lines[0] for c in ax.containers if c.get_label() == "adapters"]
    assert list(line.get_ydata()) == [-0.06, -0.01]
    assert ax.get_xscale() == "log"
    ax = plots.rank_curve({"tiny-lm": [(1, _point("05", 1, -0.1)), (16, _point("05", 1, -0.05))]})
    (line,) = [c.lines[0] for c in ax.containers if c.get_label() == "tiny-lm"]
    assert list(line.get_xdata()) == [1, 16] and list(line.get_ydata()) == [-0.1, -0.05]


def test_memory_table_divides_by_full_fine_tunings_peak(tmp_path, monkeypatch):
    path = tmp_path / "peak_memory.csv"
    fields = ["model", "arm", "trainable", "batch", "tokens", "peak", "precision"]
    fields += smollm2.MEMORY_PARTS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for model in ("tiny-lm", smollm2.MODEL):
            for arm, peak in (("full", 3 * 2**30), ("lora 16", 2**30)):
                w.writerow(
                    dict(model=model, arm=arm, trainable=1, batch=16, tokens=32, peak=peak)
                    | {"precision": "fp32"}
                    | dict.fromkeys(smollm2.MEMORY_PARTS, 0)
                )
    monkeypatch.setattr(smollm2, "PEAK_MEMORY", path)
    rows = smollm2.peak_memory(smollm2.MODEL, 16, 32)
    assert rows["full"]["peak"] == 3 * 2**30
    table = smollm2.memory_table(["lora 16"], [(16, 32)])
    assert "| lora 16 | 1.0 GiB (3.0× less) | 1.0 GiB (3.0× less) |" in table
    assert smollm2.peak_memory(smollm2.MODEL, 8, 256) == {}
    ax = plots.memory_parts({"full": rows["full"], "lora 16": rows["lora 16"]})
    assert np.allclose([c.get_offsets()[:, 1] for c in ax.collections][0], [3.0, 1.0])


def test_memory_summary_is_generated_from_the_stored_rows(tmp_path, monkeypatch):
    path = tmp_path / "peak_memory.csv"
    fields = ["model", "arm", "trainable", "batch", "tokens", "peak", "precision"]
    fields += smollm2.MEMORY_PARTS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for batch, tokens in smollm2.MEMORY_SHAPES:
            for arm, peak, state in (("full", 4 * 2**30, 2**30), ("lora 16", 2**30, 0)):
                w.writerow(
                    dict(model=smollm2.MODEL, arm=arm, trainable=1, batch=batch, tokens=tokens)
                    | dict(peak=peak, precision="fp32", weights=0, activations=0)
                    | dict(gradients=state, optimizer=2 * state)
                )
    monkeypatch.setattr(smollm2, "PEAK_MEMORY", path)
    text = smollm2.memory_summary("lora 16")
    assert text.startswith("On SmolLM2-135M (fp32): at 16 × 32 tokens")
    assert text.count("3.0 GiB of its 4.0 GiB peak (75%)") == 2
    assert text.count("(4.0× less)") == 2
    assert smollm2.memory_summary("adapter 32") == ""


def _trials(accs, trainable):
    from ftcourse.experiments import Trial

    return [Trial("a", s, 0.01, 1, 2, 0.0, a, a, trainable, None) for s, a in enumerate(accs)]


def test_trials_vs_trainable_puts_each_arm_at_its_fraction_and_mean():
    ax = plots.trials_vs_trainable(
        {"adapters": [("2", _trials([0.5, 0.7], 10)), ("8", _trials([0.6, 0.8], 40))]},
        levels={"full": _trials([0.9, 0.9], 1000)},
        total=1000,
        points={"other": _trials([0.4], 100)},
    )
    (line,) = [c.lines[0] for c in ax.containers if c.get_label() == "adapters"]
    assert list(line.get_xdata()) == [0.01, 0.04]
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.7])
    (point,) = [c.lines[0] for c in ax.containers if c.get_label() == "other"]
    assert list(point.get_xdata()) == [0.1] and list(point.get_ydata()) == [0.4]
    (level,) = [x for x in ax.get_lines() if x.get_label().startswith("full")]
    assert level.get_label() == "full (100.0% trained)" and level.get_ydata()[0] == 0.9
    assert [t.get_text() for t in ax.texts] == ["2", "8"]
