"""HuBERT encoder parity with transformers' HubertModel / HubertForCTC (nanoaudio/encoder.py).

    python -m pytest -q tests/test_encoder.py

Tiny random configs of both arrangements (group-norm + post-LN like hubert-base, layer-norm + stable pre-LN
like hubert-large/xlarge) are saved as real checkpoints (save_pretrained, or raw safetensors with the older
weight_g/weight_v spelling) and loaded by nanoaudio.load_encoder; outputs are compared in fp32 (<= 1e-5) and
float64 (<= 1e-10, which shows the math is the same, not just close).
"""

import json

import pytest
import torch

from nanoaudio import NanoaudioError, load_encoder
from nanoaudio.config import EncoderConfig
from nanoaudio.encoder import HubertEncoder, save_encoder

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import HubertConfig, HubertForCTC, HubertModel  # noqa: E402

num_frames = EncoderConfig().num_frames  # HuBERT's conv stack: the config's default (the arithmetic's one home)

# awkward sizes: conv widths differ per layer, an even (group variant) and an odd (layer variant) pos-conv kernel
VARIANTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_conv_pos_embeddings=16),
    "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=15),
}


def tiny_config(variant: str, **kw) -> HubertConfig:
    return HubertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                        conv_dim=(8, 12, 12, 16, 16, 16, 24), num_conv_pos_embedding_groups=4, vocab_size=11,
                        hidden_act="gelu", **(VARIANTS[variant] | kw))


def hf_model(variant: str, ctc: bool, seed: int = 0):
    torch.manual_seed(seed)
    cls = HubertForCTC if ctc else HubertModel
    model = cls(tiny_config(variant)).eval()
    with torch.no_grad():  # non-trivial norms and biases (transformers initializes them to 1 and 0)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hidden(model, x, mask=None):
    base = model.hubert if isinstance(model, HubertForCTC) else model
    return base(x, attention_mask=mask).last_hidden_state


@pytest.fixture(scope="module")
def waves():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5000, generator=g)


@pytest.mark.parametrize("variant", ["base", "large"])
@pytest.mark.parametrize("ctc", [False, True], ids=["HubertModel", "HubertForCTC"])
def test_parity_with_transformers(tmp_path, waves, variant, ctc):
    ref = hf_model(variant, ctc)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    enc = load_encoder(tmp_path)
    assert (enc.lm_head is not None) == ctc and enc.config.ctc_head == ctc
    assert not enc.training
    with torch.no_grad():
        h = enc(waves)
        torch.testing.assert_close(h, hidden(ref, waves), atol=1e-5, rtol=0)
        if ctc:
            torch.testing.assert_close(enc.ctc_logits(h), ref(waves).logits, atol=1e-5, rtol=0)
    # float64: the same computation up to rounding
    enc64, ref64 = load_encoder(tmp_path, dtype=torch.float64), ref.double()
    with torch.no_grad():
        torch.testing.assert_close(enc64(waves.double()), hidden(ref64, waves.double()), atol=1e-10, rtol=0)


def test_weight_g_weight_v_spelling(tmp_path, waves):
    # the hub's older checkpoints store the weight-normed positional conv as weight_g / weight_v
    ref = hf_model("large", ctc=True)
    sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                             "weight_v"): v.contiguous()
          for k, v in ref.state_dict().items()}
    assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in sd)
    save_file(sd, tmp_path / "model.safetensors")
    ref.config.to_json_file(tmp_path / "config.json")
    enc = load_encoder(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(enc(waves), hidden(ref, waves), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["base", "large"])
def test_padded_batch_equals_each_sample_alone(tmp_path, variant):
    ref = hf_model(variant, ctc=False, seed=1)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    enc = load_encoder(tmp_path)
    g = torch.Generator().manual_seed(1)
    lengths = [3001, 5000, 720, 4321]
    x = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randn(n, generator=g)
        mask[b, :n] = 1
    with torch.no_grad():
        h = enc(x, mask)
        valid = enc.frame_mask(mask)
        assert valid.sum(1).tolist() == [num_frames(n) for n in lengths]
        for b, n in enumerate(lengths):
            alone = enc(x[b:b + 1, :n])[0]  # (F_b, C)
            assert alone.shape[0] == num_frames(n)
            torch.testing.assert_close(h[b, :alone.shape[0]], alone, atol=1e-5, rtol=0)
        if variant == "large":
            # transformers agrees on the valid frames. (For "base" it does not: its GroupNorm averages over the
            # padding too, so transformers' own padded and lone results differ; ours normalizes over real samples.)
            torch.testing.assert_close(h[valid], hidden(ref, x, mask)[valid], atol=1e-5, rtol=0)


def test_num_frames_matches_transformers():
    ref = HubertModel(tiny_config("large"))
    S = torch.tensor(list(range(395, 1500)) + [16000, 160000, 480000, 480001])
    expected = ref._get_feat_extract_output_lengths(S).clamp(min=0).tolist()
    assert [num_frames(int(s)) for s in S] == expected
    assert num_frames(0) == 0 and num_frames(399) == 0 and num_frames(400) == 1
    enc = HubertEncoder(EncoderConfig.from_hf_config(tiny_config("large").to_dict()))
    assert enc.num_frames(16000) == 49 and enc.frame_lengths(torch.ones(1, 16000)).item() == 49
    with torch.no_grad():
        assert enc(torch.randn(1, 1234)).shape == (1, num_frames(1234), 48)


def test_save_encoder_is_a_transformers_checkpoint(tmp_path, waves):
    # random init (the tiny preset trains its encoder from scratch), saved, read back by transformers and by us
    cfg = EncoderConfig.from_hf_config(tiny_config("large").to_dict() | {"architectures": ["HubertForCTC"]})
    torch.manual_seed(0)
    enc = HubertEncoder(cfg).eval()
    save_encoder(enc, tmp_path)
    ref, info = HubertForCTC.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    again = load_encoder(tmp_path)
    with torch.no_grad():
        h = enc(waves)
        torch.testing.assert_close(h, hidden(ref.eval(), waves), atol=1e-5, rtol=0)
        torch.testing.assert_close(enc.ctc_logits(h), ref(waves).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(again(waves), h, atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["HubertForCTC"]
    assert set(again.state_dict()) == set(enc.state_dict())


def test_random_init_without_ctc_head():
    cfg = EncoderConfig.from_hf_config(tiny_config("base").to_dict() | {"architectures": ["HubertModel"]})
    enc = HubertEncoder(cfg)
    assert enc.lm_head is None and enc.config.hidden_size == 48
    assert all(not k.startswith("hubert.") for k in enc.state_dict())
    with pytest.raises(NanoaudioError, match="no CTC head"):
        enc.ctc_logits(torch.zeros(1, 2, 48))
    with pytest.raises(NanoaudioError, match="shorter than one encoder frame"):
        enc(torch.zeros(1, 399))


def test_bf16_loading(tmp_path, waves):
    ref = hf_model("large", ctc=False)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    enc = load_encoder(tmp_path, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    with torch.no_grad():
        h = enc(waves).float()  # the waveform is cast to the encoder's dtype inside
    # bf16 has ~3 significant digits: compare loosely, relative to the output's scale
    assert (h - hidden(ref, waves)).abs().max() < 0.1 * hidden(ref, waves).abs().max()


def test_pytorch_model_bin_is_converted_once(tmp_path, waves, capsys):
    ref = hf_model("base", ctc=False)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ref.config.to_json_file(tmp_path / "config.json")
    enc = load_encoder(tmp_path)
    assert "converting" in capsys.readouterr().err and (tmp_path / "model.safetensors").is_file()
    with torch.no_grad():
        torch.testing.assert_close(enc(waves), hidden(ref, waves), atol=1e-5, rtol=0)
    load_encoder(tmp_path)
    assert "converting" not in capsys.readouterr().err


def test_bad_checkpoints(tmp_path):
    ref = hf_model("large", ctc=False)
    ref.save_pretrained(tmp_path / "ok", safe_serialization=True)
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(NanoaudioError, match="config.json: missing"):
        load_encoder(tmp_path / "noconfig")
    # a config that does not match the weights: the error names the tensor and both shapes
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 96}))
    with pytest.raises(NanoaudioError, match=r"intermediate_dense\.(weight|bias).* but the model expects \(96"):
        load_encoder(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg | {"hidden_act": "relu"}))
    with pytest.raises(NanoaudioError, match="hidden_act 'relu' is not supported"):
        load_encoder(tmp_path / "ok")
    with pytest.raises(NanoaudioError, match="no such folder"):
        load_encoder(tmp_path / "nope")
