"""Whisper's front end and encoder (nanoaudio/whisper.py) against whisper's own filters and transformers.

    python -m pytest -q tests/test_whisper.py

- the mel filters, computed in code, are bit-identical to whisper's mel_filters.npz (tests/fixtures/whisper/);
- log_mel_spectrogram matches transformers' WhisperFeatureExtractor (its torch path, device="cpu") within 1e-5
  on lengths under and at 30 s, 80 and 128 bins. Over 30 s, transformers keeps the first 30 s without a word;
  nanoaudio raises, and the first 30 s cut by hand give transformers' output;
- tiny random Whisper models (2 encoder layers, 48-d) saved as real checkpoints, WhisperModel (one file, with
  preprocessor_config.json) and WhisperForConditionalGeneration (3 shards, with transformers 5's
  processor_config.json), loaded by nanoaudio.load_encoder: fp32 within 1e-5 of the output's scale, float64 on the
  same log-mel within 1e-10; a padded batch of different lengths equals single runs in both modes; bf16 loading;
  the loading errors name the file, the tensor, the shape;
- the shipped configs give the published parameter counts; `python -m nanoaudio.compare encoders`; the memory
  budget's Whisper terms against measured peaks; the Triton attention kernel against the PyTorch path.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoaudio import NanoaudioError, load_encoder
from nanoaudio.audio import batch_audio
from nanoaudio.config import WhisperEncoderConfig
from nanoaudio.whisper import (N_FRAMES, N_SAMPLES, WhisperEncoder, log_mel_spectrogram, mel_filters,
                               save_whisper_encoder)

transformers = pytest.importorskip("transformers")
from checkpoints import randomize_, save_checkpoint, save_transformers_model  # noqa: E402
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration  # noqa: E402
from transformers import WhisperModel  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "whisper"
CONFIGS = Path(__file__).parents[1] / "nanoaudio" / "configs"
SR = 16000


def hf_mel(waves, n_mels):
    """transformers' log-mel: a list of (S_i,) -> (B, M, 3000), each padded (or cut) to 30 s."""
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    return fe([np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=SR, return_tensors="pt",
              device="cpu").input_features


def speechlike(S, seed=0):
    """A waveform with structure (harmonics that change over time, some noise), at a speech-like level."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / SR
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t)
    x = sum(torch.sin(2 * torch.pi * h * torch.cumsum(f0, 0) / SR) / h for h in range(1, 6))
    return 0.1 * x + 0.01 * torch.randn(S, generator=g)


# -----------------------------------------------------------------------------
# the front end


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_whispers_bit_for_bit(n_mels):
    ref = torch.from_numpy(np.load(FIXTURES / "mel_filters.npz")[f"mel_{n_mels}"])
    ours = mel_filters(n_mels)
    assert ours.dtype == torch.float32 and ours.shape == (n_mels, 201)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("S", [1, 399, 16000 * 3 + 17, 160 * 1000, N_SAMPLES - 1, N_SAMPLES])
def test_log_mel_against_transformers(n_mels, S):
    x = speechlike(S, seed=S)
    ours = log_mel_spectrogram(x, n_mels)
    assert ours.shape == (n_mels, N_FRAMES)
    torch.testing.assert_close(ours, hf_mel([x], n_mels)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_over_30_seconds(n_mels):
    # transformers' WhisperFeatureExtractor (truncation=True by default) drops everything after 30 s, silently;
    # nanoaudio refuses, so that no caller loses audio without knowing. Cut by hand, the two agree.
    x = speechlike(N_SAMPLES + 12345, seed=1)
    with pytest.raises(NanoaudioError, match="longer than Whisper's 30 s window"):
        log_mel_spectrogram(x, n_mels)
    torch.testing.assert_close(log_mel_spectrogram(x[:N_SAMPLES], n_mels), hf_mel([x], n_mels)[0], atol=1e-5, rtol=0)


def test_log_mel_batch_is_per_utterance():
    # each row gets its own floor (its maximum - 8), whatever the other rows hold
    waves = [speechlike(20000, seed=2), 0.01 * speechlike(7000, seed=3)]
    wave, mask = batch_audio(waves, normalize=False)
    assert torch.equal(wave[1, :7000], waves[1])  # raw samples: no normalization
    ours = log_mel_spectrogram(wave, 80)
    torch.testing.assert_close(ours, hf_mel(waves, 80), atol=1e-5, rtol=0)
    # the true-length mode's log-mel is the first columns of the same 30 s spectrogram
    T = -(-20000 // 160)
    torch.testing.assert_close(log_mel_spectrogram(wave, 80, frames=T), ours[..., :T], atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------
# the encoder on tiny random checkpoints


def tiny_config(n_mels=80, **kw) -> WhisperConfig:
    return WhisperConfig(num_mel_bins=n_mels, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                         encoder_ffn_dim=80, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=32,
                         vocab_size=67, max_target_positions=16, max_source_positions=1500, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1, decoder_start_token_id=2, **kw)


def hf_model(cls=WhisperModel, n_mels=80, seed=0):
    torch.manual_seed(seed)
    model = cls(tiny_config(n_mels)).eval()
    randomize_(model, std=0.08, seed=seed)  # embed_positions too: it must be read from the file, not recomputed
    return model


def hf_encoder(model):
    return model.model.encoder if isinstance(model, WhisperForConditionalGeneration) else model.encoder


def preprocessor(n_mels):
    return {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": n_mels, "sampling_rate": SR,
            "n_fft": 400, "hop_length": 160, "chunk_length": 30, "padding_value": 0.0}


def save_layout(model, folder, layout, n_mels=80, extra=None) -> Path:
    """WhisperModel: one model.safetensors + preprocessor_config.json (the hub's layout);
    WhisperForConditionalGeneration: 3 shards + processor_config.json (what transformers 5 writes)."""
    if layout == "WhisperModel":
        save_transformers_model(model, folder)
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(preprocessor(n_mels)))
    else:
        save_transformers_model(model, folder, shards=3)
        (Path(folder) / "processor_config.json").write_text(
            json.dumps({"feature_extractor": preprocessor(n_mels), "processor_class": "WhisperProcessor"}))
    if extra:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        (Path(folder) / "config.json").write_text(json.dumps(cfg | extra))
    return Path(folder)


def reference(model, waves, n_mels):
    """transformers, end to end: feature extractor, then the encoder, each sample's first F frames."""
    enc = hf_encoder(model)
    with torch.no_grad():
        h = enc(hf_mel(waves, n_mels)).last_hidden_state  # (B, 1500, C)
    cfg = WhisperEncoderConfig()
    return [h[b, :cfg.num_frames(len(w))] for b, w in enumerate(waves)]


def close(a, b, rel=1e-5):
    """|a - b| within rel of b's largest value (the output's scale)."""
    err = (a - b).abs().max().item()
    assert err <= rel * b.abs().max().item(), (err, b.abs().max().item())


@pytest.mark.parametrize("layout,n_mels", [("WhisperModel", 80), ("WhisperForConditionalGeneration", 128)])
def test_parity_with_transformers(tmp_path, layout, n_mels):
    cls = WhisperModel if layout == "WhisperModel" else WhisperForConditionalGeneration
    ref = hf_model(cls, n_mels)
    enc = load_encoder(save_layout(ref, tmp_path, layout, n_mels))
    assert isinstance(enc, WhisperEncoder) and not enc.training
    assert enc.config.num_mel_bins == n_mels and enc.config.hidden_size == 48 and enc.config.pad_to_30s
    assert enc.source == str(tmp_path) and enc.lm_head is None and enc.normalize_audio is False
    # the encoder's tensors only, under transformers' names (prefix stripped), the decoder's never read
    assert set(enc.state_dict()) == {k.removeprefix("model.").removeprefix("encoder.")
                                     for k in ref.state_dict() if ".encoder." in f".{k}"}
    for S in (N_SAMPLES, 16000 * 4 + 123):
        x = speechlike(S, seed=S)
        with torch.no_grad():
            h = enc(x[None])
        assert h.shape == (1, enc.num_frames(S), 48)
        close(h[0], reference(ref, [x], n_mels)[0])
    # float64, both fed the same log-mel: the same computation up to rounding
    enc64 = load_encoder(tmp_path, dtype=torch.float64)
    mel = hf_mel([speechlike(50000)], n_mels).double()
    with torch.no_grad():
        torch.testing.assert_close(enc64.encode(mel), hf_encoder(ref).double()(mel).last_hidden_state,
                                   atol=1e-10, rtol=0)


LENGTHS = [16000 * 2 + 77, 5000, 321, 16000, 1]


@pytest.mark.parametrize("pad_to_30s", [True, False], ids=["pad-to-30s", "true-length"])
def test_padded_batch_equals_each_sample_alone(tmp_path, pad_to_30s):
    ref = hf_model(WhisperModel, seed=1)
    # the mode is recorded in config.json, and read back from it
    enc = load_encoder(save_layout(ref, tmp_path, "WhisperModel", extra={"pad_to_30s": pad_to_30s}))
    assert enc.config.pad_to_30s is pad_to_30s
    waves = [speechlike(n, seed=i) for i, n in enumerate(LENGTHS)]
    x, mask = batch_audio(waves, normalize=False)
    with torch.no_grad():
        h = enc(x, mask)  # (B, F, C)
        valid = enc.frame_mask(mask)
        assert h.shape[:2] == valid.shape == (len(LENGTHS), enc.num_frames(max(LENGTHS)))
        assert valid.sum(1).tolist() == [(-(-n // 160) - 1) // 2 + 1 for n in LENGTHS]
        refs = reference(ref, waves, 80)
        for b, w in enumerate(waves):
            alone = enc(w[None])[0]  # (F_b, C)
            assert alone.shape[0] == int(valid[b].sum())
            close(h[b, :alone.shape[0]], alone)
            if pad_to_30s:
                close(alone, refs[b])  # transformers agrees, sample by sample
            else:
                close(alone, true_length_reference(ref, w))


def true_length_reference(model, w):
    """The true-length mode built from transformers' own modules: its log-mel cut to the ceil(S/160) frames that
    cover the audio, its convs, its positional table sliced to the frames, its layers without a mask."""
    enc = hf_encoder(model)
    T = -(-w.shape[0] // 160)
    with torch.no_grad():
        x = hf_mel([w], 80)[..., :T]
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(x)))).transpose(1, 2)
        x = x + enc.embed_positions.weight[:x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)[0]


def test_true_length_is_shorter_and_differs_only_in_what_it_attends(tmp_path):
    ref = hf_model(WhisperModel, seed=2)
    enc = load_encoder(save_layout(ref, tmp_path, "WhisperModel"))
    short = WhisperEncoder(dataclasses.replace(enc.config, pad_to_30s=False))
    short.load_state_dict(enc.state_dict())
    x = speechlike(16000 * 3)[None]
    with torch.no_grad():
        a, b = enc(x), short.eval()(x)
    assert a.shape == b.shape == (1, 150, 48)
    assert (a - b).abs().max() > 1e-3  # the 30 s mode's frames also attend over the silence after the audio
    # a 30 s input: the two modes are the same computation
    x = speechlike(N_SAMPLES)[None]
    with torch.no_grad():
        close(enc(x), short(x))


def test_bf16_loading(tmp_path):
    ref = hf_model(WhisperForConditionalGeneration, seed=3)
    enc = load_encoder(save_layout(ref, tmp_path, "WhisperForConditionalGeneration"), dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    x = speechlike(16000 * 5)
    with torch.no_grad():
        h = enc(x[None].to(torch.bfloat16))[0].float()  # the log-mel is computed in fp32 inside
    r = reference(ref, [x], 80)[0]
    assert (h - r).abs().max() < 0.1 * r.abs().max()  # bf16: ~3 significant digits


def test_save_whisper_encoder_round_trip(tmp_path):
    # random init (training from scratch), saved, read back by us and by transformers' WhisperEncoder
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder
    from transformers.models.whisper.modeling_whisper import sinusoids

    cfg = WhisperEncoderConfig.from_hf_config(tiny_config().to_dict() | {"pad_to_30s": False})
    torch.manual_seed(0)
    enc = WhisperEncoder(cfg).eval()
    torch.testing.assert_close(enc.embed_positions.weight, sinusoids(1500, 48), atol=0, rtol=0)  # the table's init
    save_whisper_encoder(enc, tmp_path)
    again = load_encoder(tmp_path)
    assert again.config == dataclasses.replace(cfg, torch_dtype="float32")
    ours, info = HFWhisperEncoder.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = speechlike(N_SAMPLES)
    mel = log_mel_spectrogram(x, 80)[None]
    with torch.no_grad():
        torch.testing.assert_close(again(x[None]), enc(x[None]), atol=0, rtol=0)
        close(enc.encode(mel), ours.eval()(mel).last_hidden_state)


def test_frame_arithmetic_and_interface():
    enc = WhisperEncoder(WhisperEncoderConfig.from_hf_config(tiny_config().to_dict()))
    hf = WhisperModel(tiny_config())
    S = torch.tensor([1, 159, 160, 161, 320, 321, 481, 16000, 16001, 160000, N_SAMPLES - 1, N_SAMPLES])
    mel = -(-S // 160)  # mel frames covering the audio, as transformers' rescaled attention mask counts them
    assert enc.config.num_frames(S).tolist() == hf._get_feat_extract_output_lengths(mel).tolist()
    assert [enc.num_frames(int(s)) for s in S] == enc.config.num_frames(S).tolist()
    assert enc.num_frames(N_SAMPLES) == 1500 and enc.num_frames(16000) == 50 and enc.num_frames(0) == 0
    mask = torch.zeros(2, 16001, dtype=torch.long)
    mask[0], mask[1, :321] = 1, 1
    assert enc.frame_lengths(mask).tolist() == [51, 2] and enc.frame_mask(mask).shape == (2, 51)
    with pytest.raises(NanoaudioError, match="no CTC head"):
        enc.ctc_logits(torch.zeros(1, 2, 48))
    with pytest.raises(NanoaudioError, match="takes 1 to 480000 samples"):
        enc(torch.zeros(1, N_SAMPLES + 1))
    from nanoaudio.encoder import HubertEncoder

    assert HubertEncoder.normalize_audio is True and WhisperEncoder.normalize_audio is False
    raw, _ = batch_audio([torch.ones(5) * 3.0], normalize=False)
    assert raw.tolist() == [[3.0] * 5]


def test_bad_checkpoints(tmp_path):
    ref = hf_model(WhisperModel)
    ok = save_layout(ref, tmp_path / "ok", "WhisperModel")
    cfg = json.loads((ok / "config.json").read_text())
    # a config that does not match the weights: the error names the file's tensor and both shapes
    (ok / "config.json").write_text(json.dumps(cfg | {"encoder_ffn_dim": 96}))
    with pytest.raises(NanoaudioError, match=r"model.safetensors:encoder\.layers\.0\.fc1\.(weight|bias)"
                                             r".* but the model expects \(96"):
        load_encoder(ok)
    (ok / "config.json").write_text(json.dumps(cfg | {"model_type": "wav2vec2"}))
    with pytest.raises(NanoaudioError, match=r"config.json: model_type 'wav2vec2' is not an encoder"):
        load_encoder(ok)
    (ok / "config.json").write_text(json.dumps(cfg | {"activation_function": "relu"}))
    with pytest.raises(NanoaudioError, match="config.json: activation_function 'relu' is not supported"):
        load_encoder(ok)
    (ok / "config.json").write_text(json.dumps(cfg))
    (ok / "preprocessor_config.json").write_text(json.dumps(preprocessor(128)))
    with pytest.raises(NanoaudioError, match="preprocessor_config.json: feature_size 128 disagrees"):
        load_encoder(ok)
    (ok / "preprocessor_config.json").write_text(json.dumps(preprocessor(80) | {"hop_length": 320}))
    with pytest.raises(NanoaudioError, match="preprocessor_config.json: hop_length 320 is not supported"):
        load_encoder(ok)
    # a tensor missing from the file
    sd = {k: v for k, v in ref.state_dict().items() if k != "encoder.layers.1.fc2.bias"}
    save_checkpoint(tmp_path / "missing", sd, cfg)
    with pytest.raises(NanoaudioError, match=r"missing tensor\(s\) layers\.1\.fc2\.bias"):
        load_encoder(tmp_path / "missing")
    # an encoder tensor the model does not have
    save_checkpoint(tmp_path / "extra", ref.state_dict() | {"encoder.layers.0.self_attn.k_proj.bias": torch.zeros(48)},
                    cfg)
    with pytest.raises(NanoaudioError, match=r"k_proj\.bias: unexpected tensor"):
        load_encoder(tmp_path / "extra")


# -----------------------------------------------------------------------------
# the real configs


PUBLISHED = {"whisper-tiny": 37_760_640, "whisper-base": 72_593_920, "whisper-small": 241_734_912,
             "whisper-large-v3": 1_543_490_560, "whisper-large-v3-turbo": 808_878_080}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shipped_configs_have_the_published_sizes(name):
    d = json.loads((CONFIGS / f"{name}.json").read_text())
    with torch.device("meta"):
        hf = WhisperForConditionalGeneration(WhisperConfig(**d))
        ours = WhisperEncoder(WhisperEncoderConfig.from_hf_config(d))
    assert sum(p.numel() for p in hf.parameters()) == PUBLISHED[name]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.model.encoder.parameters())
    assert ours.config.hidden_size == {"whisper-tiny": 384, "whisper-base": 512, "whisper-small": 768}.get(name, 1280)
    assert ours.config.num_mel_bins == (128 if "large" in name else 80)


def test_large_v3_processor_config_gives_128_bins():
    d = json.loads((CONFIGS / "whisper-large-v3.json").read_text())
    pre = json.loads((FIXTURES / "processor_config.json").read_text())
    cfg = WhisperEncoderConfig.from_hf_config({k: v for k, v in d.items() if k != "num_mel_bins"}, preprocessor=pre)
    assert cfg.num_mel_bins == 128 and cfg.torch_dtype == "float16"


def test_compare_encoders(capsys):
    from nanoaudio.compare import encoder_rows, main
    from nanoaudio.encoder import HubertEncoder

    rows = {r["name"]: r for r in encoder_rows()}
    assert rows["whisper-large-v3"]["params"] == rows["whisper-large-v3-turbo"]["params"] == 636_968_960
    assert rows["whisper-large-v3"]["frames_30s"] == 1500 and rows["hubert-large"]["frames_30s"] == 1499
    assert [rows[n]["Ce"] for n in ("whisper-small", "whisper-base", "whisper-tiny")] == [768, 512, 384]
    with torch.device("meta"):
        for name in ("hubert-large", "whisper-tiny"):
            r = rows[name]
            cls = WhisperEncoder if name.startswith("whisper") else HubertEncoder
            assert r["params"] == sum(p.numel() for p in cls(r["config"]).parameters())
    assert rows["whisper-large-v3"]["proj"]["qwen3-8b"] == 5 * 1280 * 4096 + 5 * 1280 + 4096  # + 2 RMSNorms
    main(["encoders"])
    out = capsys.readouterr().out
    assert "636,968,960" in out and "whisper-tiny" in out and "hubert-xlarge" in out
    # the decoder table and its memory budget take a Whisper encoder too
    from nanoaudio.compare import decoder_rows

    (row,) = decoder_rows(["smollm3-3b"], encoder="whisper-tiny", batch_size=2, seconds=10.0)
    assert row["budget"].params_encoder == rows["whisper-tiny"]["params"]
    assert row["budget"].audio_tokens == 100  # 500 frames in 10 s, k = 5


# -----------------------------------------------------------------------------
# the memory budget


@pytest.mark.parametrize("pad_to_30s", [True, False], ids=["pad-to-30s", "true-length"])
def test_budget_frozen_whisper_transient_against_its_measured_peak(pad_to_30s):
    from test_compare import profiled_peak

    from nanoaudio.budget import encoder_transient_bytes

    cfg = WhisperEncoderConfig(d_model=256, encoder_attention_heads=4, encoder_ffn_dim=1024, encoder_layers=2,
                               pad_to_30s=pad_to_30s)
    enc = WhisperEncoder(cfg).eval()
    wave = speechlike(16000 * 5)[None].repeat(2, 1)
    with torch.no_grad():
        measured = profiled_peak(lambda: enc(wave))
    est = encoder_transient_bytes(cfg, 2, 16000 * 5, 4)
    assert 1.0 <= est / measured <= 1.1, (est, measured)


def test_budget_trained_whisper_activations_traced_on_meta_equal_the_real_ones():
    from test_compare import saved_bytes

    from nanoaudio.budget import encoder_activation_bytes, estimate
    from nanoaudio.compare import decoder_config

    cfg = WhisperEncoderConfig(d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128, encoder_layers=2,
                               pad_to_30s=False)
    enc = WhisperEncoder(cfg).train()
    wave = speechlike(24000)[None].repeat(2, 1)
    real = saved_bytes(enc, lambda: enc(wave))
    # On meta, SDPA takes its math path, which keeps each layer's (B, H, F, F) attention weights for backward; the
    # real CPU path (flash) keeps a (B, H, F) logsumexp instead. Apart from that the trace is exact.
    L, B, H, F_ = 2, 2, 4, cfg.num_frames(24000)
    assert encoder_activation_bytes(cfg, 2, 24000, 4) == real + L * B * H * F_ * (F_ - 1) * 4
    # the whole estimate takes a Whisper encoder, frozen or trained
    from nanoaudio.config import ProjectorConfig

    dec = decoder_config("qwen3-0.6b")
    pcfg = ProjectorConfig(stack=5, encoder_dim=64, decoder_dim=dec.hidden_size)
    frozen = estimate(dec, cfg, pcfg, batch_size=2, audio_seconds=1.5)
    trained = estimate(dec, cfg, pcfg, batch_size=2, audio_seconds=1.5, trainable="all", train_encoder=True)
    assert frozen.audio_tokens == -(-cfg.num_frames(24000) // 5) == 15
    assert frozen.params_encoder == trained.params_encoder == sum(p.numel() for p in enc.parameters())


# -----------------------------------------------------------------------------
# the attention kernel (nanoaudio.nn's switch): the Triton path gives the PyTorch path's numbers


@pytest.mark.parametrize("pad_to_30s", [False, True], ids=["true-length", "pad-to-30s"])
def test_triton_attention_matches_pytorch(monkeypatch, pad_to_30s):
    # On a machine without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET):
    # 2 s for the true-length mode's 15 frames, ~4 minutes for the 30 s mode's 1500, which runs on a GPU only.
    pytest.importorskip("triton")
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1: the kernels cannot run")
    if pad_to_30s and not torch.cuda.is_available():
        pytest.skip("1500 frames through Triton's interpreter take minutes: GPU only")
    import nanoaudio.kernels.flash_attention as fa

    monkeypatch.setattr(fa, "AUTOTUNE", False)
    calls = []
    original = fa.flash_attention
    monkeypatch.setattr(fa, "flash_attention", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = 2
    cfg = WhisperEncoderConfig(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=48, encoder_layers=layers,
                               pad_to_30s=pad_to_30s)
    torch.manual_seed(0)
    enc = WhisperEncoder(cfg).to(device).eval()
    x, mask = batch_audio([speechlike(3000), speechlike(1700, seed=1)], normalize=False)
    x, mask = x.to(device), mask.to(device)

    def run(mode):
        monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
        enc.zero_grad(set_to_none=True)
        out = enc(x, mask)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(device)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    out0, grads0 = run("0")
    assert not calls
    out1, grads1 = run("1")
    assert len(calls) == layers and all(kw["softmax_scale"] == 1.0 for kw in calls)
    assert [kw["kv_lens"] is not None for kw in calls] == [not pad_to_30s] * layers  # 30 s: every key is real
    torch.testing.assert_close(out1, out0, atol=1e-5, rtol=1e-5)
    assert set(grads1) == set(grads0)
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], atol=1e-4 * grads0[n].abs().max().item() + 1e-7, rtol=0,
                                   msg=lambda m, n=n: f"{n}: {m}")
