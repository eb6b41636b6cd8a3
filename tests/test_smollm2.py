"""The real small LLM of the zoo loads offline, generates, and trains with LoRA on a CPU."""

import pytest
import torch

from ftcourse import lm, models


@pytest.fixture(scope="module")
def smol():
    return models.load("smollm2-135m")


def test_smollm2_loads_offline_and_answers(smol):
    model, tok = smol.model, smol.tokenizer
    assert smol.kind == "lm" and model.dtype == torch.float32
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert model.config.num_hidden_layers == 30
    (answer,) = lm.generate(model, tok, ["What is the capital of France?"], max_new_tokens=12)
    assert "paris" in answer.lower()
    # The LM helpers work unchanged with its own chat template (ChatML).
    ids, labels = lm.encode_chat(tok, "Hi", "Hello!")
    assert labels[-2] in lm.stop_token_ids(tok) or labels[-1] in lm.stop_token_ids(tok)


def test_one_lora_step_on_the_cpu(smol):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(smol.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < 1e6
    batch = lm.collate(smol.tokenizer, [("Say hello.", "Hello!"), ("Say bye.", "Bye!")])
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    before = lm.next_token_loss(model, **batch)
    before.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = lm.next_token_loss(model, **batch)
    assert torch.isfinite(after) and after.item() < before.item()
    model.unload()  # the shared fixture's model without LoRA layers again


def test_the_converted_gguf_model_is_cached_and_identical(smol, tmp_path, monkeypatch):
    """The GGUF conversion is kept in the data cache; the cached copy computes the same logits."""
    import shutil

    from ftcourse import data

    key = next((data.cache_dir() / "converted").glob("SmolLM2-135M-Instruct*"))
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path))
    (tmp_path / "converted").mkdir()
    shutil.copytree(key, tmp_path / "converted" / key.name)  # only the cached copy is here
    again = models.load("smollm2-135m")
    ids = smol.tokenizer("My lord, the queen", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (again.model(input_ids=ids).logits - smol.model(input_ids=ids).logits).abs().max()
    assert diff == 0.0
    assert again.tokenizer.chat_template == smol.tokenizer.chat_template
