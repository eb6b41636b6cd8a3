"""ftcourse.methods.lora: B = 0 is the base model, outputs equal peft's, merge = unmerged."""

from __future__ import annotations

import copy

import pytest
import torch

from ftcourse import lm, memory
from ftcourse.methods import lora


def _ids(tok):
    return lm.encode_texts(tok, ["A beagle is a kind of hound.", "Good night, sweet prince."], 12)


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in lora.lora_parameters(model):
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_starts_as_the_base_model_and_counts_its_parameters(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    names = lora.add_lora(model, r=4, alpha=8)
    assert len(names) == 2 * base.config.num_hidden_layers  # q_proj and v_proj of every layer
    ids = _ids(tok)
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    lora.train_lora(model)
    trainable = memory.count_parameters(model, trainable_only=True)
    assert trainable == len(names) * 4 * (128 + 128)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(model, r=4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        lora.add_lora(copy.deepcopy(base), r=4, targets=("nothing",))
    with pytest.raises(ValueError, match="rank"):
        lora.LoRALinear(torch.nn.Linear(4, 4), r=0)


@pytest.mark.parametrize(
    "targets",
    [
        ("q_proj", "v_proj"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ],
)
def test_lora_gives_peft_outputs_for_the_same_factors(tiny, targets):
    from peft import LoraConfig, get_peft_model

    base, tok = tiny
    ours = copy.deepcopy(base)
    lora.add_lora(ours, r=4, alpha=8, targets=targets)
    _randomize(ours)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0)
    theirs = get_peft_model(copy.deepcopy(base), config)
    for name, module in ours.named_modules():
        if isinstance(module, lora.LoRALinear):
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.data.copy_(module.lora_A.data)
            peft_layer.lora_B["default"].weight.data.copy_(module.lora_B.data)
    ids = _ids(tok)
    with torch.no_grad():
        diff = (ours(input_ids=ids).logits - theirs(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-6


def test_merged_equals_unmerged_and_unmerge_restores_the_base(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    lora.add_lora(model, r=8, alpha=16)
    _randomize(model, seed=1)
    ids = _ids(tok)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        layer = model.model.layers[0].self_attn.q_proj
        x = torch.randn(5, 128, generator=torch.Generator().manual_seed(2))
        layer_unmerged = layer(x)
        assert lora.merge_lora(model) == 8
        assert (layer(x) - layer_unmerged).abs().max().item() <= 1e-5  # one layer: rounding only
        merged = model(input_ids=ids).logits
        # through 4 layers and the 4096-way output the rounding adds up (logits are ~5 in size)
        assert (merged - unmerged).abs().max().item() <= 1e-4
        lora.unmerge_lora(model)
        original = dict(base.named_parameters())
        for n, p in model.named_parameters():
            if "lora_" not in n:
                assert (p - original[n.replace(".base.", ".")]).abs().max().item() <= 1e-6, n
        assert lora.remove_lora(model) == 8
        back = model(input_ids=ids).logits
    # the weights are back up to the rounding of W + ΔW - ΔW (checked above to 1e-6)
    assert (back - base(input_ids=ids).logits).abs().max().item() <= 1e-4
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())


def test_lora_training_moves_only_the_factors(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    lora.add_lora(model, r=2)
    lora.train_lora(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(lora.lora_parameters(model), lr=1e-2)
    ids = _ids(tok)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))
