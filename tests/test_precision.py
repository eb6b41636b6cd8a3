import pytest
import torch

from ftcourse import precision


def test_the_environment_overrides_the_choice(monkeypatch):
    monkeypatch.setenv("FTCOURSE_PRECISION", "fp32")
    assert precision.autocast_dtype("cpu") is None
    assert precision.describe("cpu") == "fp32"
    monkeypatch.setenv("FTCOURSE_PRECISION", "bf16")
    assert precision.autocast_dtype("cpu") is torch.bfloat16
    monkeypatch.setenv("FTCOURSE_PRECISION", "fp8")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.autocast_dtype("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bf16_only_where_it_is_native(monkeypatch, native):
    monkeypatch.delenv("FTCOURSE_PRECISION", raising=False)
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: (native, "test"))
    assert (precision.autocast_dtype("cpu") is torch.bfloat16) == native
    ctx = precision.autocast("cpu")
    assert isinstance(ctx, torch.autocast) == native
    assert precision.autocast_dtype("mps") is None  # only CPU and CUDA are trusted


@pytest.mark.parametrize(
    ("capability", "native"), [((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_cuda_bf16_needs_ampere_on_the_device_asked_about(monkeypatch, capability, native):
    # a T4 (7.5) reports is_bf16_supported() == True: emulated bf16 must not count
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda i=None: asked.append(i) or capability
    )
    assert precision.native_bf16("cuda:1") is native
    assert asked == [1]


def test_native_needs_the_instructions_and_onednn(monkeypatch):
    precision._cpu_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert precision._cpu_bf16()[0] is False  # e.g. ONEDNN_MAX_CPU_ISA=AVX2
    precision._cpu_bf16.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert precision._cpu_bf16() == (True, "AVX512-BF16 instructions, used by oneDNN")
    precision._cpu_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision._cpu_bf16()[0] is False
    precision._cpu_bf16.cache_clear()


def test_cpu_info_and_probe():
    info = precision.cpu_info()
    assert info.model and info.cores >= 1 and info.threads >= 1 and info.capability
    probe = precision.speed_probe(seconds=0.05)
    assert probe["fp32_gflops"] > 0.1
    assert ("bf16_gflops" in probe) == precision.native_bf16("cpu")
