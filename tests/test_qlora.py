"""NF4 (chapter 5): the codebook and codes of bitsandbytes, the error bound, 4-bit layers that
keep no full-precision weight for the backward pass; LoRA files, swapping, placement, QLoRA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftcourse import lm, memory
from ftcourse.methods import lora, quant


def _bnb():
    import bitsandbytes.functional as bnb_f  # the reference implementation (CPU backend)

    return bnb_f


def test_codebook_is_bitsandbytes_nf4():
    code = quant.nf4_codebook()
    assert code.shape == (16,) and code[0] == -1 and code[-1] == 1 and 0.0 in code.tolist()
    assert torch.all(code[1:] > code[:-1])
    w = torch.randn(8, 64)
    _, state = _bnb().quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert (code - state.code).abs().max() <= 1e-6


@pytest.mark.parametrize("shape", [(64, 128), (352, 128), (3, 64), (128, 352)])
def test_codes_equal_bitsandbytes_and_dequantized_values_agree(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05
    ours = quant.quantize_nf4(w, block=64)
    codes, state = _bnb().quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(ours.codes, codes.flatten())
    assert torch.allclose(ours.absmax, state.absmax)
    if shape[-1] % 64 == 0:  # bitsandbytes 0.50's CPU de-quantization assumes whole-row blocks
        theirs = _bnb().dequantize_4bit(codes, state)
        assert (quant.dequantize_nf4(ours) - theirs).abs().max() <= 1e-6 * w.abs().max()


@pytest.mark.parametrize("double", [False, True])
def test_quantization_error_is_within_half_the_largest_gap(double):
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(2))
    w[0, 0] = 40.0  # an outlier only hurts its own block
    q = quant.quantize_nf4(w, block=64, double=double)
    deq = quant.dequantize_nf4(q)
    code = quant.nf4_codebook()
    half_gap = float((code[1:] - code[:-1]).max() / 2)
    per_block = (w - deq).abs().reshape(-1, 64).amax(1)
    absmax = w.abs().reshape(-1, 64).amax(1)
    if not double:
        assert torch.all(per_block <= absmax * half_gap + 1e-6)
        assert q.nbytes == w.numel() // 2 + 4 * w.numel() // 64
    else:
        # the scales themselves are rounded: within half a second-level step of the exact ones
        step = q.absmax_step.repeat_interleave(256)[: q.num_blocks]
        assert torch.all((q.scales() - absmax).abs() <= step / 2 + 1e-6)
        # |level * s' - w| <= |s' - s| + s' * half_gap, with |level| <= 1
        assert torch.all(per_block <= q.scales() * half_gap + step / 2 + 1e-6)
        assert q.nbytes < quant.quantize_nf4(w, block=64).nbytes
    mean_error = (w - deq).abs().reshape(-1, 64).mean(1)  # the outlier coarsens its block only
    assert mean_error[0] > 5 * mean_error[1:].max()
    with pytest.raises(ValueError, match="blocks of 64"):
        quant.quantize_nf4(torch.randn(10, 10))


def test_nf4_linear_computes_with_the_dequantized_weight_and_saves_no_weight():
    linear = nn.Linear(128, 96)
    layer = quant.NF4Linear(linear)
    x = torch.randn(7, 128, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    with memory.SavedActivations(layer) as saved:
        out = layer(x)
    out.square().sum().backward()
    reference = nn.functional.linear(x2, layer.weight, layer.bias)
    reference.square().sum().backward()
    assert (out - reference).abs().max() <= 1e-6
    assert (x.grad - x2.grad).abs().max() <= 1e-5
    assert saved.bytes < layer.weight.numel() * 4  # the fp32 weight was not kept
    assert memory.parameter_bytes(layer) < memory.parameter_bytes(linear) / 5
    assert not any(p.requires_grad for p in layer.parameters())


def test_lora_on_nf4_trains_and_leaves_the_4bit_weights_bit_identical(tiny):
    base, tok = tiny
    clf = lm.peft_classifier(base, 3, tok.pad_token_id, "qlora", 4, alpha=8)
    assert sum(isinstance(m, quant.NF4Linear) for m in clf.modules()) == 7 * 4
    before = {k: v.clone() for k, v in clf.body.state_dict().items() if "lora_" not in k}
    ids = lm.encode_texts(tok, ["A beagle is a kind of hound.", "Good night, sweet prince."], 12)
    y = torch.tensor([0, 2])
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(clf(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = {k: v for k, v in clf.body.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.abs().sum() > 0 for p in lora.lora_parameters(clf) if p.shape[1] == 4)


def test_merging_into_4_bits_refuses_silently_rounding_and_rounds_on_request(tiny):
    base, _ = tiny
    model = copy.deepcopy(base)
    quant.quantize_model_nf4(model.model)
    lora.add_lora(model, r=4, alpha=8)
    for p in lora.lora_parameters(model):
        p.data.normal_(0, 0.05)
    with pytest.raises(TypeError, match="quantized"):
        lora.merge_lora(model)
    layer = model.model.layers[0].self_attn.q_proj
    exact = (layer.base.weight + layer.delta()).detach()
    assert lora.merge_into_quantized(model) == 8
    merged = model.model.layers[0].self_attn.q_proj
    assert isinstance(merged, quant.NF4Linear)
    code = quant.nf4_codebook()
    bound = exact.abs().reshape(-1, 64).amax(1) * float((code[1:] - code[:-1]).max() / 2)
    assert torch.all((merged.weight - exact).abs().reshape(-1, 64).amax(1) <= bound + 1e-6)


def test_lora_training_leaves_the_base_weights_bit_identical(tiny):
    base, tok = tiny
    clf = lm.peft_classifier(base, 2, tok.pad_token_id, "lora", 4, alpha=8)
    before = {k: v.clone() for k, v in clf.body.state_dict().items() if "lora_" not in k}
    ids = lm.encode_texts(tok, ["To be, or not to be.", "It is a truth universally"], 12)
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(clf(ids), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = clf.body.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(p.abs().sum() > 0 for p in lora.lora_parameters(clf) if p.shape[0] != 4)


def test_lora_files_swap_tasks_and_refuse_a_mismatch(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    base, tok = tiny
    model = copy.deepcopy(base)
    lora.add_lora(model, r=2)
    for p in lora.lora_parameters(model):
        p.data.normal_(0, 0.1)
    state = lora.lora_state_dict(model)
    assert len(state) == 2 * 2 * base.config.num_hidden_layers
    save_file(state, tmp_path / "task.safetensors")
    assert (tmp_path / "task.safetensors").stat().st_size < 0.05 * memory.parameter_bytes(base)
    ids = lm.encode_texts(tok, ["Good night, sweet prince."], 8)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        for p in lora.lora_parameters(model):
            p.zero_()
        assert not torch.equal(model(input_ids=ids).logits, want)
        lora.load_lora(model, load_file(tmp_path / "task.safetensors"))
        assert torch.equal(model(input_ids=ids).logits, want)
    other = copy.deepcopy(base)
    lora.add_lora(other, r=2, targets=("q_proj",))
    with pytest.raises(KeyError, match="differ"):
        lora.load_lora(other, state)


def test_parameter_counts_and_the_placement_pair(tiny):
    base, tok = tiny
    assert lm.placement_ranks(base, 5) == (24, 5)  # 24 x 512 = 12,288 vs 5 x 2,464 = 12,320
    for method, targets, r in (("lora", lora.ATTENTION, 24), ("lora-all", lora.ALL_LINEAR, 5)):
        clf = lm.peft_classifier(base, 10, tok.pad_token_id, method, r)
        head = 10 * (base.config.hidden_size + 1)
        expected = lora.lora_parameter_count(base, r, targets) + head
        assert memory.count_parameters(clf, trainable_only=True) == expected
    with pytest.raises(ValueError, match="needs a size"):
        lm.peft_classifier(base, 10, tok.pad_token_id, "lora")


def test_dequantize_model_gives_an_exact_fp32_copy(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    quant.quantize_model_nf4(model.model)
    ids = lm.encode_texts(tok, ["Good night, sweet prince."], 8)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert quant.dequantize_model(model) == 7 * 4
        assert not any(isinstance(m, quant.NF4Linear) for m in model.modules())
        assert (model(input_ids=ids).logits - want).abs().max() <= 1e-5
