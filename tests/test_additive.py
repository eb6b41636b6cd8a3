"""Chapter 4's package pieces: adapters, prompt tuning (= peft's), int8 weights, memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftcourse import lm, memory
from ftcourse.methods import adapters, prompt, quant


def _ids(tok, texts=("A beagle is a kind of hound.", "The night is long."), length=12):
    return lm.encode_texts(tok, list(texts), length)


def test_adapters_are_the_identity_at_init_and_removing_them_restores_the_model(tiny):
    base, tok = tiny
    ids = _ids(tok)
    model = copy.deepcopy(base)
    before = model(input_ids=ids).logits
    names = adapters.add_adapters(model, bottleneck=8)
    assert len(names) == 2 * base.config.num_hidden_layers  # after attention and after the MLP
    assert torch.equal(model(input_ids=ids).logits, before)
    # after training moves the adapters, the output differs; removing them gives it back exactly
    for p in adapters.adapter_parameters(model):
        nn.init.normal_(p, std=0.1)
    assert not torch.allclose(model(input_ids=ids).logits, before)
    assert adapters.remove_adapters(model) == len(names)
    assert torch.equal(model(input_ids=ids).logits, before)


def test_adapter_size_and_what_trains(tiny):
    base, _ = tiny
    a = adapters.BottleneckAdapter(128, 8)
    assert sum(p.numel() for p in a.parameters()) == 2 * 128 * 8 + 128 + 8
    model = copy.deepcopy(base)
    adapters.add_adapters(model, bottleneck=8)
    adapters.train_adapters(model, norms=False)
    trainable = memory.count_parameters(model, trainable_only=True)
    assert trainable == 2 * base.config.num_hidden_layers * (2 * 128 * 8 + 128 + 8)
    adapters.train_adapters(model, norms=True)  # + 2 RMSNorms per layer and the final one
    norms = (2 * base.config.num_hidden_layers + 1) * 128
    assert memory.count_parameters(model, trainable_only=True) == trainable + norms
    with pytest.raises(ValueError, match="already has adapters"):
        adapters.add_adapters(model, 8)
    with pytest.raises(ValueError, match="no module"):
        adapters.add_adapters(copy.deepcopy(base), 8, targets=("nothing_like_this",))


def test_adapter_training_leaves_the_frozen_backbone_bit_identical(tiny):
    base, tok = tiny
    clf = lm.Classifier(copy.deepcopy(base), 3, tok.pad_token_id)
    adapters.add_adapters(clf, bottleneck=4)
    adapters.train_adapters(clf, extra=[clf.head], norms=False)
    frozen = {n: p.detach().clone() for n, p in clf.named_parameters() if not p.requires_grad}
    ids, y = _ids(tok), torch.tensor([0, 2])
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(clf(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in clf.named_parameters() if n in frozen)
    assert any(
        not torch.equal(a.up.weight, torch.zeros_like(a.up.weight))
        for a in clf.modules()
        if isinstance(a, adapters.BottleneckAdapter)
    )


def test_prompt_tuning_gives_peft_outputs_for_the_same_prompt(tiny):
    from peft import PromptTuningConfig, get_peft_model

    base, tok = tiny
    ids = _ids(tok, ("A short one.", "A somewhat longer sentence than the first."))
    mask = (ids != tok.pad_token_id).long()
    ours = prompt.prompt_tune(copy.deepcopy(base), length=5, seed=3)
    ours.strip = False
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    theirs = get_peft_model(copy.deepcopy(base), config)
    theirs.prompt_encoder["default"].embedding.weight.data.copy_(ours.prompt.data)
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, labels=ids)
        b = theirs(input_ids=ids, attention_mask=mask, labels=ids)
    assert (a.logits - b.logits).abs().max().item() <= 1e-6
    assert abs(a.loss.item() - b.loss.item()) <= 1e-6
    # stripped: the outputs line up with the input ids
    ours.strip = True
    assert ours(input_ids=ids, attention_mask=mask).logits.shape[1] == ids.shape[1]
    # the soft prompt is the only trainable tensor
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["prompt"]


def test_prompt_tuning_starts_from_vocabulary_embeddings(tiny):
    base, _ = tiny
    pt = prompt.PromptTuned(copy.deepcopy(base), 4, init="vocab", seed=0)
    table = base.get_input_embeddings().weight
    assert all((table == row).all(dim=1).any() for row in pt.prompt.detach())
    with pytest.raises(ValueError):
        prompt.PromptTuned(base, 0)
    with pytest.raises(ValueError):
        prompt.PromptTuned(base, 3, init="text")


def test_int8_rounding_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q, scale = quant.quantize_int8(linear.weight)
    assert q.dtype == torch.int8 and scale.shape == (32, 1)
    err = (quant.dequantize_int8(q, scale) - linear.weight).abs()
    assert (err <= scale / 2 + 1e-7).all()
    x = torch.randn(5, 64)
    int8 = quant.Int8Linear(linear)
    w = quant.dequantize_int8(q, scale)
    torch.testing.assert_close(int8(x), x @ w.T + linear.bias)


def test_int8_model_is_about_four_times_smaller_and_close(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    replaced = quant.quantize_model_int8(model.model)
    assert replaced == 1 + 7 * base.config.num_hidden_layers
    ratio = memory.parameter_bytes(model.model) / memory.parameter_bytes(base.model)
    assert 0.25 < ratio < 0.30  # int8 + one fp32 scale per row; norms stay fp32
    ids = _ids(tok)
    a, b = base.model(input_ids=ids).last_hidden_state, model.model(input_ids=ids).last_hidden_state
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    adapters.add_adapters(model.model, 4)  # adapters go on top of int8 layers, in fp32
    assert all(p.dtype == torch.float32 for p in adapters.adapter_parameters(model))


def test_saved_activations_of_a_linear_layer_are_its_input():
    layer = nn.Linear(10, 4)
    x = torch.randn(6, 10, requires_grad=True)
    with memory.SavedActivations(layer) as saved:
        layer(x).sum()
    assert saved.bytes == x.numel() * 4  # the weight is saved too, but it is a weight
    assert saved.count == 1


def test_tensor_bytes_count_shared_storage_once():
    t = torch.zeros(100)
    assert memory.tensor_bytes([t, t[:10], t.view(10, 10)]) == 400


def test_memory_of_an_adamw_step_is_weights_grads_and_two_moments(tiny):
    base, _ = tiny
    m = memory.measure(copy.deepcopy(base), memory.lm_batch_loss(2, 16, base.config.vocab_size))
    weights = sum(p.numel() * 4 for p in base.parameters())
    assert m.gradients == weights
    # two moments per weight, plus one fp32 step counter per parameter tensor
    assert m.optimizer == 2 * weights + 4 * len(list(base.parameters()))
    assert m.peak >= m.weights + m.gradients + m.optimizer


@pytest.mark.parametrize("batch,context", [(1, 32), (8, 64)])
def test_estimate_without_allocating_matches_the_measurement(tiny, batch, context):
    from transformers import AutoModelForCausalLM

    base, _ = tiny
    loss = memory.lm_batch_loss(batch, context, base.config.vocab_size)
    measured = memory.measure(copy.deepcopy(base), loss)
    estimated = memory.estimate(lambda: AutoModelForCausalLM.from_config(base.config), loss)
    errors = estimated.relative_error(measured)
    assert max(errors.values()) <= 0.10, errors


def test_estimate_with_adapters_counts_only_their_gradients_and_state(tiny):
    from transformers import AutoModelForCausalLM

    base, _ = tiny

    def make():
        model = AutoModelForCausalLM.from_config(base.config)
        adapters.add_adapters(model, 8)
        adapters.train_adapters(model, norms=False)
        return model

    est = memory.estimate(make, memory.lm_batch_loss(2, 32, base.config.vocab_size))
    adapter_bytes = 8 * (2 * 128 * 8 + 128 + 8) * 4
    assert est.gradients == adapter_bytes
    assert est.optimizer == 2 * adapter_bytes + 4 * 8 * 4  # 4 tensors per adapter, 8 adapters


@pytest.mark.parametrize(
    "method,size,trainable",
    [
        ("full", None, None),
        ("head", None, {"head.weight", "head.bias"}),
        ("prompt", 4, {"head.weight", "head.bias", "body.prompt"}),
    ],
)
def test_peft_classifier_trains_what_its_method_says(tiny, method, size, trainable):
    base, tok = tiny
    clf = lm.peft_classifier(base, 3, tok.pad_token_id, method, size)
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    if trainable is None:
        assert names == {n for n, _ in clf.named_parameters()}
    else:
        assert names == trainable
    assert clf(_ids(tok)).shape == (2, 3)


def test_peft_classifier_adapters_freeze_every_pretrained_weight(tiny):
    base, tok = tiny
    for method in ("adapter", "int8-adapter"):
        clf = lm.peft_classifier(base, 3, tok.pad_token_id, method, 4)
        names = {n for n, p in clf.named_parameters() if p.requires_grad}
        assert names and all(".adapter." in n or n.startswith("head.") for n in names)
    with pytest.raises(ValueError, match="needs a size"):
        lm.peft_classifier(base, 3, tok.pad_token_id, "adapter")
    with pytest.raises(ValueError, match="method must be"):
        lm.peft_classifier(base, 3, tok.pad_token_id, "ia3", 4)


def test_every_method_comes_from_one_registry_and_a_new_one_is_one_entry(tiny):
    from ftcourse.methods import registry

    base, tok = tiny
    assert registry.names()[:2] == ("full", "head")
    assert {m.size for m in registry.METHODS.values()} == {
        None,
        "bottleneck",
        "prompt length",
        "rank",
    }

    @registry.register("norms", None, 3, "the layer norms and the head")
    def _norms(clf, size, alpha):
        for name, p in clf.body.named_parameters():
            p.requires_grad_("norm" in name)

    try:
        clf = lm.peft_classifier(base, 3, tok.pad_token_id, "norms")
        names = {n for n, p in clf.named_parameters() if p.requires_grad}
        assert names and all("norm" in n or n.startswith("head.") for n in names)
        with pytest.raises(ValueError, match="registered already"):
            registry.register("norms", None, 3, "again")(_norms)
    finally:
        del registry.METHODS["norms"]


def test_study_arms_name_a_method_and_a_size():
    from ftcourse.chapters import additive, lora
    from ftcourse.methods import registry

    assert additive.parse_arm("adapter 8") == ("adapter", 8)
    assert additive.parse_arm("full") == ("full", None)
    for module in (additive, lora):
        for arm in module.ARMS:
            method, size = additive.parse_arm(arm)
            assert method in registry.METHODS
            assert (size is None) == (registry.METHODS[method].size is None), arm
        plan = module.plan([])  # the first stage: every grid on the tuning seeds
        assert {p["arm"] for p in plan} == set(module.ARMS)
        assert {p["seed"] for p in plan} == set(module.TUNING_SEEDS)
