"""The model zoo: the course's own tiny pretrained models, local folders and hub ids.

:func:`load` is the one way a notebook gets a pretrained model. It accepts

* a zoo name (``"tiny-cnn"``, ``"tiny-lm"``): weights shipped inside this package, verified
  against the sha256 in their model card;
* a local folder made by :mod:`ftcourse.pretrain` or by ``save_pretrained``;
* a hub id (``"HuggingFaceTB/SmolLM2-135M"``, ``"timm/resnet18.a1_in1k"``) on a machine that
  can reach the hub; without a network it fails within seconds and says so.

Introduced in chapter 0 (tiny-cnn) and chapter 1 (tiny-lm); used by every later chapter.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .data import sha256_file

ZOO_DIR = Path(__file__).parent / "zoo"
ZOO = {
    "tiny-cnn": "timm ResNet-10t (narrow), 1-channel 28x28 input, pretrained on Fashion-MNIST 0-4",
    "tiny-lm": "Llama-style causal LM (~1.3 M params) + byte-level BPE, pretrained on Shakespeare",
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

    Its four stages ``layer1``..``layer4`` are the "blocks" that chapter 3 freezes and unfreezes.
    """
    import timm

    kwargs = {"channels": (32, 64, 128, 256), "in_chans": 1, **kwargs}
    return timm.create_model(arch, num_classes=num_classes, **kwargs)


def cnn_blocks(model: nn.Module) -> list[nn.Module]:
    """The CNN's blocks from input to output: stem, stages, head (for layer freezing)."""
    stem = nn.ModuleList([model.conv1, model.bn1])
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4, model.fc]


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
                    "Reinstall ftcourse (pip install -e .) or re-run `ftcourse pretrain`."
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
    if card["kind"] == "vision":
        model = build_cnn(card["num_classes"], card["arch"], **card.get("arch_kwargs", {}))
        from safetensors.torch import load_file

        model.load_state_dict(load_file(folder / "model.safetensors"))
        if num_classes is not None and num_classes != card["num_classes"]:
            model.reset_classifier(num_classes)  # a new, randomly initialised head
        return Loaded(model=model, card=card, kind="vision")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    return Loaded(model=model, tokenizer=tokenizer, card=card, kind="lm")


def _load_hub(repo_id: str, num_classes: int | None) -> Loaded:
    cached_only = not _hub_reachable()
    if repo_id.startswith("timm/"):
        import timm

        try:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True, **kwargs)
        except Exception as err:
            raise _hub_error(repo_id, cached_only, err) from err
        return Loaded(model=model, card={"source": repo_id}, kind="vision")
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
        name_or_path: ``"tiny-cnn"``, ``"tiny-lm"``, a folder with a ``card.json``, or a hub id
            such as ``"HuggingFaceTB/SmolLM2-135M"`` / ``"timm/resnet18.a1_in1k"``.
        num_classes: for vision models, the number of classes of the new task; a different
            count than the pretrained head replaces the head with a fresh one.
    Raises:
        KeyError: an unknown name (the message lists the zoo).
        ChecksumError: a weight file does not match its card.
        RuntimeError: a hub id that cannot be fetched (offline: within seconds).
    """
    name = os.fspath(name_or_path)
    if name in ZOO:
        folder = ZOO_DIR / name
        if not (folder / "card.json").is_file():
            raise FileNotFoundError(
                f"zoo model {name!r} is not built in {folder}; run `ftcourse pretrain "
                f"{name.removeprefix('tiny-')}`"
            )
        return _load_folder(folder, num_classes)
    if Path(name).is_dir():
        return _load_folder(Path(name), num_classes)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _load_hub(name, num_classes)
    raise KeyError(
        f"unknown model {name!r}: not a zoo name ({', '.join(ZOO)}), not a local folder, "
        "not a hub id (owner/name)"
    )
