"""Recipes that make the zoo's pretrained models: ``python -m ftcourse.pretrain {cnn,lm}``.

Both are deterministic for a given seed and thread count, write safetensors weights plus a
``card.json`` (recipe, data, seed, metrics, sha256 of every file) into
``<data cache>/pretrained/<name>`` (``--out`` for another folder; only ``--replace-zoo``
overwrites the shipped ``ftcourse/zoo/<name>``) and take minutes on two CPU cores. Chapter 1
teaches what pretraining is and re-runs a short version of the LM recipe in front of the reader.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from . import data, lm
from .data import text
from .models import ZOO_DIR, build_cnn, build_lm, write_card
from .precision import PRECISION_ENV, describe
from .train import evaluate, fit, seed_everything

# --------------------------------------------------------------------------- tiny-cnn

CNN_SOURCE_CLASSES = (0, 1, 2, 3, 4)  # T-shirt/top, Trouser, Pullover, Dress, Coat


def pretrain_cnn(out: Path, seed: int = 0, num_epochs: int = 4, lr: float = 2e-3) -> dict:
    """Train the tiny CNN on Fashion-MNIST classes 0-4 (30,000 images) and save it to ``out``."""
    generator = seed_everything(seed)
    train_set = data.image_task("fashion-mnist", CNN_SOURCE_CLASSES, "train")
    test_set = data.image_task("fashion-mnist", CNN_SOURCE_CLASSES, "test")
    model = build_cnn(len(CNN_SOURCE_CLASSES))
    history = fit(
        model,
        train_set,
        num_epochs=num_epochs,
        lr=lr,
        batch_size=128,
        weight_decay=0.05,
        val_set=test_set,
        generator=generator,
        progress="tiny-cnn",
    )
    test_acc = evaluate(model, test_set)
    _save_safetensors(model, out)
    write_card(
        out,
        {
            "name": "tiny-cnn",
            "kind": "vision",
            "arch": "resnet10t",
            "arch_kwargs": {"channels": [32, 64, 128, 256], "in_chans": 1},
            "num_classes": len(CNN_SOURCE_CLASSES),
            "classes": [data.FASHION_CLASSES[c] for c in CNN_SOURCE_CLASSES],
            "num_params": sum(p.numel() for p in model.parameters()),
            "data": "Fashion-MNIST train split, classes 0-4 (30,000 images); "
            "inputs (x/255 - 0.5) / 0.5, 1x28x28",
            "recipe": f"AdamW lr={lr} weight_decay=0.05 batch 128, {num_epochs} epochs, fp32",
            "seed": seed,
            "metrics": {
                "source_test_acc": round(test_acc, 4),
                "test_acc_per_epoch": [round(a, 4) for a in history.val_acc],
                "train_seconds": round(history.seconds, 1),
            },
            "machine": _machine(),
            "licence": "weights: MIT (trained by ftcourse on Fashion-MNIST, MIT)",
        },
    )
    return {"source_test_acc": test_acc}


def _save_safetensors(model: nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


# --------------------------------------------------------------------------- tiny-lm

LM_WIDTH = 128


def lm_size(width: int = LM_WIDTH) -> dict[str, int]:
    """tiny-lm's architecture at ``width``: 4 layers, 4 heads, an MLP 2.75 times as wide
    (tiny-lm's 352 at 128). Other widths put points beside tiny-lm on the size trend of
    chapters 4-5 (:mod:`ftcourse.chapters.widths`)."""
    if width < 16 or width % 16:
        raise ValueError(f"width must be a multiple of 16 (4 heads of at least 4), got {width}")
    return dict(
        hidden_size=width,
        intermediate_size=width * 11 // 4,
        num_hidden_layers=4,
        num_attention_heads=4,
    )


def lm_name(width: int = LM_WIDTH) -> str:
    """``"tiny-lm"`` at tiny-lm's width, ``"tiny-lm-w<width>"`` at another."""
    return "tiny-lm" if width == LM_WIDTH else f"tiny-lm-w{width}"


LM_SIZE = lm_size()
LM_STEPS, LM_LR, LM_VOCAB = 2400, 3e-3, 4096
SAMPLE_PROMPTS = ("ROMEO.", "It is a truth universally acknowledged", "A dog is a kind of")


def lm_data(seed: int = 0, vocab_size: int = LM_VOCAB, repeats: int = text.FACT_REPEATS):
    """The tiny-lm pretraining data: ``(corpus, tokenizer, train_tokens, held_out_tokens)``.

    The corpus is :func:`ftcourse.data.text.lm_corpus` in reading order
    (:func:`~ftcourse.data.text.interleave`); the tokenizer is trained on the training text
    only; ``held_out_tokens`` maps each source to its held-out token stream.
    """
    corpus = text.lm_corpus(seed, repeats=repeats)
    docs = text.interleave(corpus, seed)
    tokenizer = lm.train_tokenizer(docs, vocab_size)
    train_tokens = lm.encode_corpus(tokenizer, docs)
    held_out = {src: lm.encode_corpus(tokenizer, d) for src, d in corpus.held_out.items()}
    return corpus, tokenizer, train_tokens, held_out


def knowledge_probe(
    model: nn.Module, tokenizer, seed: int = 0, limit: int | None = None
) -> dict[str, float]:
    """Cloze accuracy on the facts table: known vs unknown words, per relation.

    For each fact, one phrasing of :func:`~ftcourse.data.text.fact_sentences` is cut before
    the answer ("A beagle is a kind of") and the greedy continuation must start with
    the answer word. ``limit`` keeps the first words of each group (quick runs). Returns
    ``{"hypernym_known": ..., "hypernym_unknown": ..., ...}``. Taught in appendix A1.
    """
    out = {}
    table = text.facts(seed)
    for relation in ("hypernym", "category", "antonym"):
        for known in (True, False):
            rows = [f for f in table if f.known == known and getattr(f, relation)][:limit]
            prompts = [text.cloze_prompt(f, relation) for f in rows]
            answers = [getattr(f, relation) for f in rows]
            got = lm.generate(model, tokenizer, prompts, max_new_tokens=6, chat=False)
            hits = [text.first_word(g) == a for g, a in zip(got, answers, strict=True)]
            out[f"{relation}_{'known' if known else 'unknown'}"] = round(sum(hits) / len(hits), 4)
    return out


def pretrain_lm(
    out: Path,
    seed: int = 0,
    num_steps: int = LM_STEPS,
    lr: float = LM_LR,
    vocab_size: int = LM_VOCAB,
    width: int = LM_WIDTH,
) -> dict:
    """Train the tokenizer and tiny-lm on Shakespeare + Austen + known facts, and save them.

    ``width`` other than 128 makes the same recipe at another width (:func:`lm_size`, named
    :func:`lm_name`): the same tokenizer, data, steps and seed.

    fp32 on the CPU by default (``FTCOURSE_PRECISION`` can change it), so the shipped weights
    do not depend on the machine's bf16 support. Writes the card with the corpus composition,
    the validation curve, held-out perplexity per source, the knowledge probe and samples.
    """
    os.environ.setdefault(PRECISION_ENV, "fp32")  # the same weights on every CPU
    seed_everything(seed)
    corpus, tokenizer, train_tokens, held_out = lm_data(seed, vocab_size)
    size = lm_size(width)
    model = build_lm(len(tokenizer), **size)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    loss_start = {s: lm.lm_loss(model, t, max_windows=200) for s, t in held_out.items()}

    eval_seconds, evals = 0.0, []

    def curve(step: int, m: nn.Module) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        evals.append((step, round(lm.lm_loss(m, held_out["shakespeare"], max_windows=100), 4)))
        eval_seconds += time.perf_counter() - start

    start = time.perf_counter()
    losses = lm.train_lm(
        model,
        train_tokens,
        num_steps=num_steps,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
        progress=lm_name(width),
        eval_every=max(1, num_steps // 20),
        eval_fn=curve,
    )
    seconds = time.perf_counter() - start - eval_seconds  # training only
    lm.reinit_chat_tokens(model, tokenizer, seed)
    loss_end = {s: lm.lm_loss(model, t) for s, t in held_out.items()}
    probe = knowledge_probe(model, tokenizer, seed)
    samples = {p: lm.sample(model, tokenizer, p, seed=seed) for p in SAMPLE_PROMPTS}
    composition = corpus.summary(tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tokens_seen = num_steps * 32 * 128
    write_card(
        out,
        {
            "name": lm_name(width),
            "kind": "lm",
            "version": 2,
            "arch": f"LlamaForCausalLM (transformers), {size['num_hidden_layers']} layers, "
            f"width {size['hidden_size']}, {size['num_attention_heads']} heads, tied "
            "embeddings, context 256",
            "num_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "tokenizer": "byte-level BPE trained on the training text; digits split; "
            f"special tokens {lm.SPECIAL_TOKENS}; chat template <|role|> content<|end|>",
            "data": "Shakespeare (40 plays and poems; held out: "
            f"{', '.join(text.SHAKESPEARE_HELD_OUT)}), Austen (5 novels; held out: "
            f"{', '.join(text.AUSTEN_HELD_OUT)}), and statements of the known words' facts "
            f"({text.FACT_REPEATS} repeats of every phrasing; held out: the unknown words' "
            "fact statements, never trained on)",
            "corpus": composition,
            "recipe": f"AdamW lr={lr} (warm-up 100, cosine to 0.1x), wd 0.1, betas (0.9, 0.95), "
            f"batch 32 x context 128, {num_steps} steps ({tokens_seen / 1e6:.1f} M tokens), "
            f"{describe('cpu')}; chat-token embeddings re-initialised after training",
            "seed": seed,
            "metrics": {
                "held_out_loss_random_init": {s: round(v, 4) for s, v in loss_start.items()},
                "held_out_loss": {s: round(v, 4) for s, v in loss_end.items()},
                "held_out_perplexity": {s: round(math.exp(v), 2) for s, v in loss_end.items()},
                "train_loss_last_100": round(sum(losses[-100:]) / len(losses[-100:]), 4),
                "train_loss_every_50": [
                    round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4)
                    for i in range(0, len(losses), 50)
                ],
                "shakespeare_loss_curve": evals,
                "knowledge_probe": probe,
                "train_seconds": round(seconds, 1),
                "tokens_per_second": round(tokens_seen / seconds),
            },
            "samples": samples,
            "machine": _machine(),
            "licence": "weights and tokenizer: MIT (trained by ftcourse on public-domain texts "
            "and WordNet 3.0 facts, WordNet licence)",
        },
    )
    return {"held_out_loss": loss_end, "probe": probe, "seconds": seconds}


def pretrained_dir(name: str) -> Path:
    """Where ``ftcourse pretrain`` saves ``name`` by default: ``<data cache>/pretrained/<name>``."""
    return data.cache_dir() / "pretrained" / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftcourse pretrain", description=__doc__)
    parser.add_argument("model", choices=["cnn", "lm"], help="which zoo model to make")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        help="output folder (default: <data cache>/pretrained/tiny-<model>, outside the zoo)",
    )
    where.add_argument(
        "--replace-zoo",
        action="store_true",
        help="overwrite the shipped, checksummed zoo model (its card is rewritten)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="LM: optimizer steps; CNN: epochs")
    parser.add_argument(
        "--width",
        type=int,
        default=LM_WIDTH,
        help=f"LM: the model width (default {LM_WIDTH}, tiny-lm; other widths are saved as "
        "tiny-lm-w<width>, for the size trend of chapters 4-5)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="do nothing when the output folder already holds a model (its card.json)",
    )
    args = parser.parse_args(argv)
    if args.model == "cnn" and args.width != LM_WIDTH:
        parser.error("--width is for the LM only")
    name = lm_name(args.width) if args.model == "lm" else "tiny-cnn"
    if args.replace_zoo:
        if name not in ("tiny-lm", "tiny-cnn"):
            parser.error(f"--replace-zoo replaces a shipped model; {name} is not one")
        out = ZOO_DIR / name
    else:
        out = args.out or pretrained_dir(name)
    if args.keep and (out / "card.json").is_file():
        print(f"kept {out} (already pretrained)")
        return 0
    if args.model == "cnn":
        kw = {} if args.steps is None else {"num_epochs": args.steps}
        result = pretrain_cnn(out, seed=args.seed, **kw)
    else:
        kw = {} if args.steps is None else {"num_steps": args.steps}
        result = pretrain_lm(out, seed=args.seed, width=args.width, **kw)
    print(f"saved {out}: {result}")
    if not args.replace_zoo:
        print(
            f"use it with MODEL={str(out)!r} in a notebook; the shipped zoo model is unchanged "
            f"(--replace-zoo overwrites it)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
