"""LoRA: the invariants (B = 0 is the identity, merge equals the unmerged forward, only LoRA trains) and adapter
files that `peft` loads into transformers' Qwen3ForCausalLM with the same logits as ours, in both directions.

    python -m pytest -q tests/test_lora.py
"""

import json

import pytest
import torch
from torch import nn

from nanoaudio import NanoaudioError
from nanoaudio.config import DecoderConfig
from nanoaudio.decoder import Decoder, load_decoder
from nanoaudio.lora import (TARGETS, LoRALinear, apply_lora, load_adapter, lora_layers, lora_state_dict, merge_lora,
                            save_adapter)

CFG = DecoderConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=64,
                    tie_word_embeddings=True)


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    d = Decoder(CFG).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.1)  # peaked logits, norms that matter
    return d


def randomize_lora_(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.3)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.3)


IDS = torch.tensor([[5, 9, 3, 60, 1, 17, 22], [2, 2, 40, 41, 42, 43, 44]])


# -----------------------------------------------------------------------------
# the invariants


@pytest.mark.parametrize("targets", [("q_proj", "k_proj", "v_proj", "o_proj"), TARGETS, ("down_proj",)])
def test_zero_B_is_the_identity_and_only_lora_trains(targets):
    d = tiny_decoder()
    before = d(IDS)
    apply_lora(d, targets, r=4, alpha=8, dropout=0.0)
    torch.testing.assert_close(d(IDS), before, rtol=0, atol=0)  # B = 0: not a bit changes
    layers = lora_layers(d)
    assert len(layers) == CFG.num_hidden_layers * len(targets)
    assert {n.rsplit(".", 1)[-1] for n in layers} == set(targets)
    trainable = {n for n, p in d.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    # r * (in + out) per adapted linear, from the real module shapes
    assert sum(d.get_parameter(n).numel() for n in trainable) == sum(
        4 * (m.base_layer.in_features + m.base_layer.out_features) for m in layers.values())


def test_a_training_step_changes_only_lora():
    d = tiny_decoder()
    apply_lora(d, r=4, alpha=8, dropout=0.1)
    d.train()
    frozen = {n: p.clone() for n, p in d.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # step 1 moves B off zero, step 2 then also moves A
        d(IDS).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in d.named_parameters() if n in frozen)
    assert all(m.lora_B.weight.abs().sum() > 0 for m in lora_layers(d).values())


def test_lora_matches_the_formula_and_merge_equals_unmerged():
    torch.manual_seed(0)
    base = nn.Linear(10, 6, bias=True)
    m = LoRALinear(base, r=3, alpha=6, dropout=0.0)
    assert m.lora_B.weight.abs().sum() == 0 and m.lora_A.weight.abs().max() <= 1 / 10 ** 0.5
    randomize_lora_(nn.ModuleDict({"m": m}))
    x = torch.randn(4, 10)
    W = base.weight.clone()
    expect = x @ (W + 2.0 * m.lora_B.weight @ m.lora_A.weight).T + base.bias  # scaling alpha / r = 2
    y = m(x)
    torch.testing.assert_close(y, expect)
    m.merge()
    assert m.merged
    torch.testing.assert_close(m(x), y)
    m.unmerge()
    torch.testing.assert_close(base.weight, W, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m(x), y)


def test_merge_lora_on_a_decoder_gives_a_plain_model():
    d = tiny_decoder()
    apply_lora(d, TARGETS, r=4, alpha=16, dropout=0.05)
    randomize_lora_(d)
    d.eval()
    y = d(IDS)
    for m in lora_layers(d).values():
        m.merge()
    torch.testing.assert_close(d(IDS), y, rtol=1e-5, atol=1e-5)
    merge_lora(d)
    assert not lora_layers(d)
    plain = Decoder(CFG)
    plain.load_state_dict(d.state_dict())  # the checkpoint names again: model.layers.0.self_attn.q_proj.weight
    torch.testing.assert_close(plain.eval()(IDS), y, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    d = tiny_decoder()
    with pytest.raises(NanoaudioError, match="qkv"):
        apply_lora(d, ("qkv",))
    with pytest.raises(NanoaudioError, match="rank"):
        apply_lora(d, r=0)
    apply_lora(d)
    with pytest.raises(NanoaudioError, match="already"):
        apply_lora(d)


def test_save_load_round_trip_and_mismatch(tmp_path):
    d = tiny_decoder()
    apply_lora(d, ("q_proj", "v_proj"), r=4, alpha=8, dropout=0.0)
    randomize_lora_(d)
    save_adapter(d, tmp_path, base_model_name="tiny")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    fresh = load_adapter(tiny_decoder(), tmp_path)  # applies LoRA from adapter_config.json, then loads
    for k, v in lora_state_dict(d).items():
        assert torch.equal(lora_state_dict(fresh)[k], v)
    torch.testing.assert_close(fresh(IDS), d(IDS), rtol=0, atol=0)
    other = apply_lora(tiny_decoder(), ("q_proj",), r=4, alpha=8)
    with pytest.raises(NanoaudioError, match="does not match"):
        load_adapter(other, tmp_path)


# -----------------------------------------------------------------------------
# peft interoperability


@pytest.fixture(scope="module")
def hf_and_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from checkpoints import randomize_, save_transformers_model

    cfg = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                   max_position_embeddings=64, tie_word_embeddings=True, rms_norm_eps=1e-6)
    hf = randomize_(transformers.Qwen3ForCausalLM(cfg), seed=3).eval()
    return hf, save_transformers_model(hf, tmp_path_factory.mktemp("qwen3"))


def test_peft_loads_our_adapter(hf_and_folder, tmp_path):
    from peft import PeftModel

    hf, folder = hf_and_folder
    ours = load_decoder(folder)
    apply_lora(ours, TARGETS, r=4, alpha=16, dropout=0.05)
    randomize_lora_(ours)
    ours.eval()
    save_adapter(ours, tmp_path, base_model_name=str(folder))
    peft_model = PeftModel.from_pretrained(hf, tmp_path).eval()
    with torch.no_grad():
        expect = peft_model(input_ids=IDS).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(input_ids=IDS).logits
    torch.testing.assert_close(ours(IDS), expect, rtol=1e-5, atol=1e-5)
    assert (expect - plain).abs().max() > 1e-2  # the adapter really changes the logits
    peft_model.unload()  # give the fixture's model back without adapters


def test_we_load_a_peft_adapter(hf_and_folder, tmp_path):
    from peft import LoraConfig, get_peft_model

    hf, folder = hf_and_folder
    peft_model = get_peft_model(hf, LoraConfig(r=2, lora_alpha=5, target_modules=["k_proj", "up_proj"],
                                               lora_dropout=0.0, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(tmp_path)
    with torch.no_grad():
        expect = peft_model.eval()(input_ids=IDS).logits
    peft_model.unload()
    ours = load_adapter(load_decoder(folder), tmp_path)
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(ours)} == {"k_proj", "up_proj"}
    torch.testing.assert_close(ours.eval()(IDS), expect, rtol=1e-5, atol=1e-5)
