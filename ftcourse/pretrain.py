"""Recipes that make the zoo's pretrained models: ``python -m ftcourse.pretrain {cnn,lm}``.

Both are deterministic for a given seed and thread count, write safetensors weights plus a
``card.json`` (recipe, data, seed, metrics, sha256 of every file) into ``ftcourse/zoo/<name>``
and take minutes on two CPU cores. Chapter 1 teaches what pretraining is and re-runs a short
version of the LM recipe in front of the reader.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import data
from .models import ZOO_DIR, build_cnn, build_lm, write_card
from .precision import autocast, describe
from .profiles import seed_everything
from .train import evaluate, fit, show_progress

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

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TOKENS = ["<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LM_VALIDATION_WORKS = ("julius_caesar", "twelfth_night")
SAMPLE_PROMPTS = ("ROMEO.", "To be, or not to be", "KING.")


def train_tokenizer(texts: list[str], vocab_size: int = 4096):
    """A byte-level BPE tokenizer with single-digit tokens and the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _split_corpus() -> tuple[list[str], list[str]]:
    works = data.load_shakespeare()
    names = data.SHAKESPEARE_WORKS
    train = [w for n, w in zip(names, works, strict=True) if n not in LM_VALIDATION_WORKS]
    val = [w for n, w in zip(names, works, strict=True) if n in LM_VALIDATION_WORKS]
    return train, val


def encode_corpus(tokenizer, texts: list[str], cache: bool = True) -> torch.Tensor:
    """One long 1-D tensor of token ids; works separated by the end-of-text token.

    Tokenizing all of Shakespeare takes seconds, so with ``cache`` the result is kept in the
    data cache (``<cache>/tokens/``), keyed by the tokenizer's vocabulary and the texts.
    """
    import hashlib
    import json

    key = hashlib.sha256()
    key.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for text in texts:
        key.update(hashlib.sha256(text.encode()).digest())
    path = data.cache_dir() / "tokens" / f"{key.hexdigest()[:24]}.pt"
    if cache and path.is_file():
        return torch.load(path, weights_only=True)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    tokens = torch.tensor(ids, dtype=torch.long)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(tokens, tmp)
        tmp.replace(path)
    return tokens


@torch.no_grad()
def lm_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    context: int = 128,
    batch_size: int = 64,
    max_windows: int | None = None,
) -> float:
    """Mean next-token cross-entropy over consecutive windows of ``tokens`` (nats per token).

    Computed in fp32 on the model's device, so the number does not depend on the hardware.
    """
    usable = (len(tokens) - 1) // context * context
    windows = tokens[: usable + 1]
    starts = list(range(0, usable, context))[:max_windows]
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        batch = torch.stack([windows[s : s + context + 1] for s in starts[i : i + batch_size]])
        batch = batch.to(device)
        out = model(input_ids=batch[:, :-1])
        loss = nn.functional.cross_entropy(
            out.logits.float().reshape(-1, out.logits.shape[-1]),
            batch[:, 1:].reshape(-1),
            reduction="sum",
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    return total / count


def lm_batches(
    tokens: torch.Tensor, num_steps: int, batch_size: int, context: int, generator: torch.Generator
):
    """Yield ``num_steps`` batches of random windows ``[batch_size, context + 1]``."""
    for _ in range(num_steps):
        starts = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=generator)
        yield torch.stack([tokens[s : s + context + 1] for s in starts.tolist()])


def train_lm(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    num_steps: int,
    lr: float,
    batch_size: int = 32,
    context: int = 128,
    warmup: int = 100,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool | str = True,
) -> list[float]:
    """Next-token pretraining with AdamW, linear warm-up and cosine decay; returns step losses.

    The labels are the inputs: transformers causal LMs shift them internally. The forward pass
    runs under :func:`ftcourse.precision.autocast`: bf16 where ``device`` has it natively, fp32
    elsewhere (bf16 emulated on a CPU without it is 10-100x slower).
    """
    generator = generator or torch.Generator().manual_seed(0)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, num_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses = []
    model.train()
    label = progress if isinstance(progress, str) else "pretrain"
    bar = tqdm(
        lm_batches(tokens, num_steps, batch_size, context, generator),
        total=num_steps,
        desc=label,
        disable=not show_progress(progress),
        leave=False,
    )
    for batch in bar:
        batch = batch.to(device)
        with autocast(device):
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    return losses


def reinit_chat_tokens(model: nn.Module, tokenizer, seed: int) -> None:
    """Give the chat special tokens fresh random embeddings.

    They never occur in the pretraining text, so pretraining pushes their embeddings together
    (cosine ~0.999); fresh vectors keep ``<|user|>``, ``<|assistant|>`` and ``<|end|>``
    distinguishable for instruction tuning (chapter 6).
    """
    emb = model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(CHAT_TOKENS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        std = emb.std().item()
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=g) * std


def sample(
    model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 60, seed: int = 0
) -> str:
    """Top-k sampling from ``prompt``, seeded with ``torch.manual_seed`` (``generate`` uses it)."""
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    model.eval()
    out = model.generate(
        **ids,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        top_k=40,
        temperature=0.8,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0], skip_special_tokens=True)


def pretrain_lm(
    out: Path, seed: int = 0, num_steps: int = 6000, lr: float = 3e-3, vocab_size: int = 4096
) -> dict:
    """Train the tokenizer and the tiny LM on Shakespeare (two works held out) and save them."""
    seed_everything(seed)
    train_texts, val_texts = _split_corpus()
    tokenizer = train_tokenizer(train_texts, vocab_size)
    train_tokens = encode_corpus(tokenizer, train_texts)
    val_tokens = encode_corpus(tokenizer, val_texts)
    model = build_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    loss_start = lm_loss(model, val_tokens)
    start = time.perf_counter()
    losses = train_lm(
        model,
        train_tokens,
        num_steps=num_steps,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
        progress="tiny-lm",
    )
    seconds = time.perf_counter() - start
    reinit_chat_tokens(model, tokenizer, seed)
    loss_end = lm_loss(model, val_tokens)
    samples = {p: sample(model, tokenizer, p, seed=seed) for p in SAMPLE_PROMPTS}
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_card(
        out,
        {
            "name": "tiny-lm",
            "kind": "lm",
            "arch": "LlamaForCausalLM (transformers), 4 layers, width 128, 4 heads, tied "
            "embeddings, context 256",
            "num_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "tokenizer": "byte-level BPE trained on the training works; digits split; "
            f"special tokens {SPECIAL_TOKENS}; chat template <|role|>content<|end|>",
            "data": "Shakespeare (42 Gutenberg texts); validation = held-out works "
            f"{list(LM_VALIDATION_WORKS)}; {len(train_tokens)} training tokens, "
            f"{len(val_tokens)} validation tokens",
            "recipe": f"AdamW lr={lr} (warm-up 100, cosine to 0.1x), wd 0.1, batch 32 x context "
            f"128, {num_steps} steps ({num_steps * 32 * 128 / 1e6:.1f} M tokens), "
            f"{describe('cpu')}; chat-token embeddings re-initialised after training",
            "seed": seed,
            "metrics": {
                "val_loss_random_init": round(loss_start, 4),
                "val_loss": round(loss_end, 4),
                "val_perplexity": round(math.exp(loss_end), 2),
                "train_loss_last_100": round(sum(losses[-100:]) / 100, 4),
                "train_seconds": round(seconds, 1),
            },
            "samples": samples,
            "machine": _machine(),
            "licence": "weights and tokenizer: MIT (trained by ftcourse on public-domain texts)",
        },
    )
    return {"val_loss": loss_end}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftcourse pretrain", description=__doc__)
    parser.add_argument("model", choices=["cnn", "lm"], help="which zoo model to make")
    parser.add_argument("--out", type=Path, help="output folder (default: the package zoo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="LM: optimizer steps; CNN: epochs")
    args = parser.parse_args(argv)
    out = args.out or ZOO_DIR / f"tiny-{args.model}"
    if args.model == "cnn":
        kw = {} if args.steps is None else {"num_epochs": args.steps}
        result = pretrain_cnn(out, seed=args.seed, **kw)
    else:
        kw = {} if args.steps is None else {"num_steps": args.steps}
        result = pretrain_lm(out, seed=args.seed, **kw)
    print(f"saved {out}: {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
