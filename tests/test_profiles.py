import pytest
import torch

from ftcourse.precision import resolve_device
from ftcourse.profiles import PROFILES, get_profile
from ftcourse.train import seed_everything


def test_profiles_share_the_same_settings_keys():
    keys = {name: set(p.settings) for name, p in PROFILES.items()}
    assert keys["smoke"] == keys["cpu"] == keys["gpu"]
    assert [PROFILES[n].budget_seconds for n in ("smoke", "cpu", "gpu")] == [30, 240, 600]


def test_get_profile_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FTCOURSE_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    monkeypatch.delenv("FTCOURSE_PROFILE")
    assert get_profile().name == "cpu"


def test_unknown_profile_and_setting_are_clear_errors():
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        get_profile("laptop")
    with pytest.raises(KeyError, match="known:"):
        get_profile("smoke").get("no.such.key")
    with pytest.raises(KeyError, match="unknown settings"):
        get_profile("smoke", **{"no.such.key": 1})


def test_overrides_replace_one_setting():
    p = get_profile("cpu", **{"quickstart.labels_per_class": 50})
    assert p.get("quickstart.labels_per_class") == 50
    assert PROFILES["cpu"].get("quickstart.labels_per_class") == 10  # the table is untouched


def test_device_and_seed():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    g1, a = seed_everything(3), torch.rand(3)
    g2, b = seed_everything(3), torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(2, generator=g1), torch.rand(2, generator=g2))
