"""Audio in: reading, resampling, normalization and batching (nanoaudio/audio.py).

    python -m pytest -q tests/test_audio.py

References: scipy.signal.resample_poly (the resampler), transformers' Wav2Vec2FeatureExtractor (normalization
and padding), a real conv stack (the frame constants), soundfile (the formats).
"""

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    batch_audio,
    load_audio,
    normalize,
    resample,
)

signal = pytest.importorskip("scipy.signal")


def speech_like(sr: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a glottal pulse train with a gliding pitch through three formant resonators) and
    fricative noise bursts, under a syllable-rate envelope: the spectrum of speech, without espeak."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)  # pitch glides between 80 and 160 Hz
    phase = np.cumsum(f0 / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    voiced = pulses
    for freq, bw in ((700, 110), (1220, 120), (2600, 160)):  # the formants of an /a/
        r = math.exp(-math.pi * bw / sr)
        voiced = signal.lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * freq / sr), r * r], voiced)
    fricative = signal.lfilter([1, -0.9], [1], rng.standard_normal(n)) * 0.05  # tilted up: /s/-like
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)  # 4 syllables per second
    voicing = (np.sin(2 * np.pi * 2 * t) > -0.3).astype(np.float64)  # voiced stretches, noisy gaps
    x = syllables * (voicing * voiced / np.abs(voiced).max() + (1 - voicing) * fricative)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def tones_and_chirp(sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    top = min(sr, SAMPLE_RATE) / 2  # the lower Nyquist
    x = sum(np.sin(2 * np.pi * f * t + p) / (i + 1) for i, (f, p) in enumerate(((220, 0.1), (1000, 1.0), (3300, 2.0))))
    x = x + np.sin(2 * np.pi * (50 * t + 0.5 * (0.8 * top - 50) / seconds * t ** 2))  # chirp 50 Hz -> 0.8 Nyquist
    return (0.25 * x).astype(np.float32)


def db_error(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return 10 * math.log10(((y - ref) ** 2).sum() / (ref ** 2).sum())


def test_the_frame_arithmetic_matches_a_real_conv_stack():
    # push zeros through HuBERT's real conv shapes and count frames: the config's arithmetic must agree
    from nanoaudio.config import EncoderConfig

    cfg = EncoderConfig()  # HuBERT's conv stack: kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2

    def frames(S):
        x = torch.zeros(1, 1, S)
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
            if x.shape[-1] < k:
                return 0
            x = torch.nn.functional.conv1d(x, torch.zeros(1, 1, k), stride=s)
        return x.shape[-1]

    r, hop = cfg.receptive_field, cfg.hop_length
    assert (r, hop, MIN_SAMPLES) == (400, 320, 400)  # 25 ms, 20 ms: 50 frames per second
    for S in (r - 1, r, r + hop - 1, r + hop, 10 * SAMPLE_RATE, 12345):
        assert frames(S) == cfg.num_frames(S)
    assert frames(10 * SAMPLE_RATE) == 10 * SAMPLE_RATE // hop - 1  # 10 s: 499 frames, ~50 per second


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("kind", ["speech", "tones"])
def test_resample_matches_scipy(sr, kind):
    x = speech_like(sr) if kind == "speech" else tones_and_chirp(sr)
    g = math.gcd(sr, SAMPLE_RATE)
    ref = signal.resample_poly(x.astype(np.float64), SAMPLE_RATE // g, sr // g)
    y = resample(torch.from_numpy(x), sr, SAMPLE_RATE)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert db_error(y.numpy(), ref) <= -60.0


def test_resample_is_band_limited():
    # independent of scipy: a 5 kHz tone passes 48k -> 16k intact, a 12 kHz tone (above the new Nyquist,
    # it would alias to 4 kHz) is removed
    sr, n = 48000, 48000
    t = np.arange(n) / sr
    keep = resample(torch.from_numpy(np.sin(2 * np.pi * 5000 * t).astype(np.float32)), sr, SAMPLE_RATE).numpy()
    t16 = np.arange(len(keep)) / SAMPLE_RATE
    mid = slice(1000, -1000)  # away from the edges, where the filter sees zeros
    assert db_error(keep[mid], np.sin(2 * np.pi * 5000 * t16)[mid]) < -40
    alias = resample(torch.from_numpy(np.sin(2 * np.pi * 12000 * t).astype(np.float32)), sr, SAMPLE_RATE).numpy()
    assert 20 * math.log10(np.abs(alias[mid]).max()) < -40


def test_formats_channels_and_rates(tmp_path):
    x = speech_like(44100, 0.5)
    stereo = np.stack([x, 0.5 * x[::-1]], axis=1)  # two different channels
    g = math.gcd(44100, SAMPLE_RATE)
    for subtype, ext, fmt in (("PCM_16", "wav", "WAV"), ("PCM_32", "wav", "WAV"), ("FLOAT", "wav", "WAV"),
                              ("PCM_16", "flac", "FLAC")):
        path = tmp_path / f"a_{subtype}.{ext}"
        sf.write(path, stereo, 44100, subtype=subtype, format=fmt)
        stored, _ = sf.read(path, dtype="float64", always_2d=True)  # what the file holds after quantization
        ref = signal.resample_poly(stored.mean(axis=1), SAMPLE_RATE // g, 44100 // g)
        y = load_audio(path)
        assert y.dtype == torch.float32 and y.dim() == 1
        assert db_error(y.numpy(), ref) <= -60.0, subtype
    # 16 kHz mono float: returned exactly as stored
    path = tmp_path / "b.wav"
    sf.write(path, x[:8000], SAMPLE_RATE, subtype="FLOAT")
    assert torch.equal(load_audio(path), torch.from_numpy(x[:8000]))
    # ogg/vorbis is lossy: just its length and rough content
    path = tmp_path / "c.ogg"
    sf.write(path, x, 44100, format="OGG", subtype="VORBIS")
    y = load_audio(path)
    assert abs(len(y) - math.ceil(len(x) * 16000 / 44100)) <= 1 and y.abs().max() > 0.1


def test_file_objects_and_bytes(tmp_path):
    x = speech_like(SAMPLE_RATE, 0.3)
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    ref = load_audio(io.BytesIO(data))

    class Pipe:  # stdin: read() only, no seek
        def __init__(self, b):
            self.b = b

        def read(self, *args):
            b, self.b = self.b, b""
            return b

        def seekable(self):
            return False

    assert torch.equal(load_audio(data), ref)
    assert torch.equal(load_audio(Pipe(data)), ref)
    assert torch.allclose(ref, torch.from_numpy(x), atol=1 / 32768)  # int16 quantization only


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), SAMPLE_RATE)
    wav = load_audio(path)
    batch, mask = batch_audio([wav, torch.ones(500)])
    assert torch.isfinite(batch).all() and batch[0].abs().max() == 0 and mask.sum() == 16500


def test_batch_audio_pads_to_a_multiple():
    a, b = torch.randn(1234), torch.randn(8001)
    wave, mask = batch_audio([a, b], pad_to_multiple_of=8000)
    assert wave.shape == mask.shape == (2, 16000)
    assert mask.sum(1).tolist() == [1234, 8001] and wave[:, 8001:].abs().max() == 0
    plain, plain_mask = batch_audio([a, b])  # the real samples are the same either way
    assert plain.shape == (2, 8001) and torch.equal(wave[:, :8001], plain) and torch.equal(mask[:, :8001], plain_mask)
    assert batch_audio([torch.randn(16000)], pad_to_multiple_of=8000)[0].shape == (1, 16000)  # already a multiple


def _write(path, samples, sr=SAMPLE_RATE, subtype="FLOAT"):
    sf.write(path, np.asarray(samples, np.float32), sr, subtype=subtype)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("folder", "is a folder"),
    ("text", "not an audio file soundfile can read"),
    ("empty_file", "not an audio file soundfile can read"),
    ("zero", "zero samples"),
    ("short", "shorter than one encoder frame"),
    ("short_8k", "shorter than one encoder frame"),
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
])
def test_bad_input(tmp_path, case, message):
    path = tmp_path / f"{case}.wav"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not audio\n" * 50)
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "zero":
        _write(path, np.zeros(0))
    elif case == "short":
        _write(path, np.ones(MIN_SAMPLES - 1) * 0.1)  # 399 samples at 16 kHz: 24.9 ms
    elif case == "short_8k":
        _write(path, np.ones(199) * 0.1, sr=8000)  # 398 samples once at 16 kHz
    elif case in ("nan", "inf"):
        x = np.full(1000, 0.1)
        x[500] = np.nan if case == "nan" else np.inf
        _write(path, x)
    with pytest.raises(NanoaudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert message in msg and str(path) in msg and "\n" not in msg


def test_shortest_valid_input(tmp_path):
    assert load_audio(_write(tmp_path / "a.wav", np.ones(MIN_SAMPLES) * 0.1)).shape == (MIN_SAMPLES,)


def test_normalize_and_batch_match_wav2vec2_feature_extractor():
    transformers = pytest.importorskip("transformers")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                               do_normalize=True, return_attention_mask=True)
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * s + o).astype(np.float32) for n, s, o in
             ((1200, 0.3, 0.1), (4000, 2.0, -0.5), (401, 0.01, 0.0))]
    ref = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    wave, mask = batch_audio([torch.from_numpy(w) for w in waves])
    assert wave.dtype == torch.float32 and mask.dtype == torch.long
    assert torch.equal(mask, ref["attention_mask"].long())
    torch.testing.assert_close(wave, ref["input_values"], atol=1e-5, rtol=1e-5)
    one = normalize(torch.from_numpy(waves[1]))
    torch.testing.assert_close(one, ref["input_values"][1], atol=1e-5, rtol=1e-5)
