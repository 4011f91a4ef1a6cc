"""Decoder parity against transformers on tiny random checkpoints written to disk, and the decoder config.

    python -m pytest -q tests/test_decoder.py

Each case builds a transformers model (Qwen3ForCausalLM / SmolLM3ForCausalLM / LlamaForCausalLM) with random
weights, saves it as a real checkpoint folder (config.json + safetensors, sharded in some cases), loads it with
nanoaudio.load_decoder and compares fp32 logits and greedy generations with the transformers model.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from checkpoints import randomize_, save_checkpoint, save_transformers_model  # noqa: E402

from nanoaudio import NanoaudioError  # noqa: E402
from nanoaudio.config import DecoderConfig  # noqa: E402
from nanoaudio.decoder import Decoder, KVCache, load_decoder  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
V = 96  # tiny vocabulary

# name: (transformers config class, kwargs, checkpoint options). Together they cover: tied and untied, GQA
# ratios 1/2/4, head_dim != hidden/heads, NoPE layers, llama3 rope scaling, biases, sharded files and a
# family default for tie_word_embeddings (SmolLM3 without the key).
CASES = {
    "qwen3-gqa2-headdim24-untied": ("Qwen3Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=24, tie_word_embeddings=False, rope_theta=10000.0), dict()),
    "qwen3-gqa1-tied-sharded": ("Qwen3Config", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
        head_dim=16, tie_word_embeddings=True, rope_theta=1e6), dict(shards=3)),
    "smollm3-gqa4-nope-tied-by-default": ("SmolLM3Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        rope_theta=5e6), dict(drop_config_keys=("tie_word_embeddings",))),
    "llama-llama3-rope-bias-sharded": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False, attention_bias=True, mlp_bias=True, max_position_embeddings=256,
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=64)),
        dict(shards=2)),
}
GENERATION_CONFIG = {"eos_token_id": [3, 7], "pad_token_id": 0}


def make_hf(name):
    cls_name, kw, _ = CASES[name]
    cfg = getattr(transformers, cls_name)(vocab_size=V, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=3,
                                          pad_token_id=0, **kw)
    cfg._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    return randomize_(model, seed=len(name)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (transformers model, checkpoint folder); built once per module."""
    out = {}
    for name, (_, _, opts) in CASES.items():
        hf = make_hf(name)
        folder = save_transformers_model(hf, tmp_path_factory.mktemp(name), GENERATION_CONFIG, **opts)
        out[name] = (hf, folder)
    return out


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


# -----------------------------------------------------------------------------
# config


def test_config_real_files_agree_with_transformers():
    for name in ("Qwen3-8B", "Qwen3-1.7B", "SmolLM3-3B"):
        folder = FIXTURES / name
        ours = DecoderConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
        ref = transformers.AutoConfig.from_pretrained(folder)
        assert ours.model_type == ref.model_type
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
            assert getattr(ours, key) == getattr(ref, key), (name, key)
        # transformers' own rule (modeling_smollm3/qwen3): head_dim, else hidden_size // num_attention_heads
        assert ours.head_dim == (getattr(ref, "head_dim", None) or ref.hidden_size // ref.num_attention_heads)
        assert ours.rope_theta == ref.rope_parameters["rope_theta"]
        assert ours.qk_norm == (name != "SmolLM3-3B")
        if name == "SmolLM3-3B":
            assert ours.no_rope_layers == tuple(ref.no_rope_layers)
            assert [i for i in range(36) if not ours.uses_rope(i)] == list(range(3, 36, 4))
    # the two dtype spellings: re-saved files say "dtype", original ones "torch_dtype"
    assert DecoderConfig.from_hf_config(json.loads((FIXTURES / "Qwen3-1.7B/config.json").read_text())).torch_dtype \
        == "float16"
    assert DecoderConfig.from_hf_config(json.loads((FIXTURES / "SmolLM3-3B/config.json").read_text())).torch_dtype \
        == "bfloat16"


def test_config_roundtrip_and_errors():
    cfg = DecoderConfig.from_hf_config(json.loads((FIXTURES / "SmolLM3-3B/config.json").read_text()))
    assert DecoderConfig.from_hf_config(cfg.to_hf_config()) == cfg
    llama = make_hf("llama-llama3-rope-bias-sharded").config.to_dict()  # transformers 5: rope_parameters
    cfg = DecoderConfig.from_hf_config(llama)
    assert (cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_position_embeddings) == ("llama3", 8.0, 64)
    assert DecoderConfig.from_hf_config(cfg.to_hf_config()) == cfg
    with pytest.raises(NanoaudioError, match="model_type 'gpt2'"):
        DecoderConfig.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(NanoaudioError, match=r"config.json: missing key '\w+'"):
        DecoderConfig.from_hf_config({"model_type": "qwen3", "vocab_size": 5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3


# -----------------------------------------------------------------------------
# logits


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(saved, name):
    hf, folder = saved[name]
    ours = load_decoder(folder)
    assert ours.lm_head.weight.dtype == torch.float32  # the config names no dtype -> fp32
    tied = ours.config.tie_word_embeddings
    assert tied == hf.config.tie_word_embeddings
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    # the state dict keys ARE the checkpoint's keys
    assert set(ours.state_dict()) == set(hf.state_dict())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 11), generator=g)
    with torch.no_grad():
        ref = hf(ids).logits
        out = ours(ids)
    assert out.shape == ref.shape == (2, 11, V)
    assert rel_err(out, ref) <= 1e-5
    # left padding: row 0 has 4 padding tokens; real positions must match transformers'
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out = ours(ids, mask)
    assert rel_err(out[mask.bool()], ref[mask.bool()]) <= 1e-5


def test_kv_cache_steps_equal_full_forward(saved):
    _, folder = saved["smollm3-gqa4-nope-tied-by-default"]
    ours = load_decoder(folder)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        full = ours(ids, mask)
        cache = KVCache(ours.config, 2, 16, torch.float32, "cpu")
        parts = [ours(ids[:, :5], mask[:, :5], cache=cache)]  # prefill
        for t in range(5, 9):  # then one token at a time
            parts.append(ours(ids[:, t:t + 1], mask[:, :t + 1], cache=cache))
    assert cache.pos == 9
    stepped = torch.cat(parts, 1)
    assert rel_err(stepped[mask.bool()], full[mask.bool()]) <= 1e-5


def test_bf16_loading(saved, tmp_path):
    hf, _ = saved["qwen3-gqa2-headdim24-untied"]
    folder = save_transformers_model(hf, tmp_path / "bf16", GENERATION_CONFIG, dtype=torch.bfloat16)
    ours = load_decoder(folder)  # dtype None: the config says bfloat16
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, want = ours(ids), ref(ids).logits
    assert out.dtype == torch.bfloat16
    assert rel_err(out, want) <= 2e-2  # bf16: ~3 significant digits
    # an fp32 checkpoint cast while loading holds exactly the cast tensors
    fp32 = load_decoder(saved["qwen3-gqa2-headdim24-untied"][1], dtype="bf16")
    for k, v in hf.state_dict().items():
        assert torch.equal(fp32.state_dict()[k], v.to(torch.bfloat16)), k


# -----------------------------------------------------------------------------
# generation


@pytest.mark.parametrize("name", ["qwen3-gqa2-headdim24-untied", "smollm3-gqa4-nope-tied-by-default",
                                  "llama-llama3-rope-bias-sharded"])
def test_greedy_generation_matches_transformers(saved, name):
    hf, folder = saved[name]
    ours = load_decoder(folder)
    assert ours.eos_token_ids == [3, 7] and ours.pad_token_id == 0  # from generation_config.json
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(8, V, (3, 7), generator=g)  # no eos inside the prompts
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # three prompts of lengths 4, 7, 5, left padded
    mask[2, :2] = 0
    ids[mask == 0] = 0
    kw = dict(attention_mask=mask, max_new_tokens=12)
    want = hf.generate(ids, do_sample=False, eos_token_id=[3, 7], pad_token_id=0, **kw)
    got = ours.generate(ids, **kw)
    assert got.tolist() == want.tolist()
    # single prompt, no mask; with an eos id that ends the row early, the rest equals transformers too
    single = ids[1:2]
    want = hf.generate(single, do_sample=False, max_new_tokens=12, eos_token_id=[3, 7], pad_token_id=0)
    assert ours.generate(single, max_new_tokens=12).tolist() == want.tolist()
    first = int(want[0, 7])  # declare the first generated token an eos: generation stops right there
    got = ours.generate(single, max_new_tokens=12, eos_token_id=first)
    want = hf.generate(single, do_sample=False, max_new_tokens=12, eos_token_id=first, pad_token_id=0)
    assert got.tolist() == want.tolist() and got.shape[1] == 8


@pytest.mark.parametrize("name", ["qwen3-gqa2-headdim24-untied", "smollm3-gqa4-nope-tied-by-default",
                                  "llama-llama3-rope-bias-sharded"])
def test_beam_search_matches_transformers(saved, name):
    hf, folder = saved[name]
    ours = load_decoder(folder)
    prompt = torch.randint(8, V, (1, 6), generator=torch.Generator().manual_seed(6))

    def both(eos, beams=4, n=10):
        want = hf.generate(prompt, do_sample=False, num_beams=beams, num_return_sequences=beams, max_new_tokens=n,
                           early_stopping="never", length_penalty=0.0, eos_token_id=eos, pad_token_id=0,
                           return_dict_in_generate=True, output_scores=True)
        got = ours.beam_search(prompt, max_new_tokens=n, num_beams=beams, eos_token_id=eos)
        hyps = []
        for seq, score in zip(want.sequences[:, prompt.shape[1]:].tolist(), want.sequences_scores.tolist()):
            ends = [i for i, t in enumerate(seq) if t in eos]
            hyps.append((seq[:ends[0] + 1] if ends else seq, score))
        assert [ids for ids, _ in got] == [ids for ids, _ in hyps]
        assert [s for _, s in got] == pytest.approx([s for _, s in hyps], abs=1e-4)
        return got

    beams = both([3, 7])
    # make two tokens of the first beams eos ids: hypotheses now end early, at different lengths
    eos = [beams[0][0][3], beams[1][0][1]]
    beams = both(eos)
    assert min(len(ids) for ids, _ in beams) < 10 and beams[0][0][-1] in eos
    # one beam is greedy search
    greedy = ours.generate(prompt, max_new_tokens=10, eos_token_id=eos)[0, prompt.shape[1]:].tolist()
    (ids, _), = ours.beam_search(prompt, max_new_tokens=10, num_beams=1, eos_token_id=eos)
    assert ids == greedy[:len(ids)] and (len(ids) == 10 or ids[-1] in eos)


def test_generate_from_embeddings_and_streaming(saved):
    _, folder = saved["qwen3-gqa1-tied-sharded"]
    ours = load_decoder(folder)
    ids = torch.randint(8, V, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    full = ours.generate(ids, mask, max_new_tokens=6, eos_token_id=[])
    seen = []
    new = ours.generate(inputs_embeds=ours.model.embed_tokens(ids), attention_mask=mask, max_new_tokens=6,
                        eos_token_id=[], on_token=lambda step, tok: seen.append((step, tok.tolist())))
    assert new.shape == (2, 6) and torch.equal(new, full[:, 6:])  # embeddings in -> only new tokens out
    assert seen == [(i, new[:, i].tolist()) for i in range(6)]
    # rows that finish early are padded with the pad id while the others go on
    eos = int(full[0, 6])
    out = ours.generate(ids, mask, max_new_tokens=6, eos_token_id=eos)
    if eos not in full[1, 6:].tolist():
        assert out[0, 7:].eq(ours.pad_token_id).all() and torch.equal(out[1], full[1])


# -----------------------------------------------------------------------------
# models built in nanoaudio (from scratch) and training


def test_from_scratch_decoder_saves_a_checkpoint_transformers_reads(tmp_path):
    cfg = DecoderConfig(model_type="qwen3", vocab_size=V, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    ours = Decoder(cfg)
    std = ours.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.015 < std < 0.025  # init_weights: N(0, 0.02)
    folder = save_checkpoint(tmp_path / "scratch", ours.state_dict(), cfg.to_hf_config())
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, V, (1, 10))
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) <= 1e-5
    assert load_decoder(folder).config == cfg


def test_gradient_checkpointing_gives_the_same_gradients(saved):
    _, folder = saved["qwen3-gqa2-headdim24-untied"]
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(6))
    grads = []
    for ckpt in (False, True):
        model = load_decoder(folder).train()
        model.gradient_checkpointing = ckpt
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_load_errors_name_the_problem(saved, tmp_path):
    _, folder = saved["qwen3-gqa2-headdim24-untied"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(NanoaudioError, match="no model.safetensors"):
        load_decoder(bad)
