"""Whisper encoder on CPU vs transformers at the whisper-large-v3 shape, 30 s of audio; the two input modes.

    python -m pytest -q -s tests/bench/test_bench_whisper.py

One set of random weights (fp32, never downloaded: built from nanoaudio/configs/whisper-large-v3.json) shared by
both models: transformers' WhisperEncoder and ours hold the very same tensors (load_state assigns them), batch 1,
torch.inference_mode for both, transformers' default attention (SDPA). Timed:
- the log-mel front end: ours vs transformers' WhisperFeatureExtractor (its torch path, device="cpu"), 30 s;
- the encoder on the same log-mel (1500 frames), and end to end (waveform in, hidden states out);
- our two modes on 5 s and 30 s of audio: pad-to-30 s always computes 1500 frames, true length only the real ones.
Each is timed NANOAUDIO_BENCH_REPEATS times (default 3), alternating, after one warm-up; the median is reported.
One torch thread (NANOAUDIO_BENCH_THREADS=N to change). NANOAUDIO_BENCH_WHISPER_LAYERS=N runs N of the 32 layers
(the table says how many; the time per layer is what scales). Prints a table; no timed assertions.
"""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from test_bench_encoder import cpu_name, mem_available_gb
from timing import timed

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).parents[2]
REPEATS = int(os.environ.get("NANOAUDIO_BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("NANOAUDIO_BENCH_THREADS", "1"))
LAYERS = int(os.environ.get("NANOAUDIO_BENCH_WHISPER_LAYERS", "32"))


def build_pair():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    from nanoaudio.config import WhisperEncoderConfig
    from nanoaudio.load import load_state
    from nanoaudio.whisper import WhisperEncoder

    hf_cfg = json.loads((ROOT / "nanoaudio" / "configs" / "whisper-large-v3.json").read_text())
    hf_cfg |= {"encoder_layers": LAYERS, "dtype": "float32"}
    torch.manual_seed(0)
    ref = HFWhisperEncoder(transformers.WhisperConfig(**hf_cfg)).float().eval()
    cfg = dataclasses.replace(WhisperEncoderConfig.from_hf_config(hf_cfg), torch_dtype="float32")
    with torch.device("meta"):
        ours = WhisperEncoder(cfg)
        short = WhisperEncoder(dataclasses.replace(cfg, pad_to_30s=False))  # the true-length mode
    # all three hold the very same tensors (load_state assigns, it does not copy)
    load_state(ours, dict(ref.state_dict()), "transformers WhisperEncoder")
    load_state(short, dict(ref.state_dict()), "transformers WhisperEncoder")
    return ref, ours.eval(), short.eval()


def test_bench_whisper_vs_transformers():
    if mem_available_gb() < 4:
        pytest.skip("needs ~3 GB of free memory: a 637M-parameter fp32 encoder")
    from nanoaudio.whisper import N_SAMPLES, log_mel_spectrogram

    old_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        ref, ours, short = build_pair()
        n_params = sum(p.numel() for p in ours.parameters())
        fe = transformers.WhisperFeatureExtractor(feature_size=128)
        g = torch.Generator().manual_seed(0)
        x30 = 0.1 * torch.randn(1, N_SAMPLES, generator=g)
        x5 = x30[:, :5 * 16000].contiguous()
        hf_mel = lambda x: fe(x[0].numpy(), sampling_rate=16000, return_tensors="pt",  # noqa: E731
                              device="cpu").input_features
        with torch.inference_mode():
            mel = log_mel_spectrogram(x30, 128)
            mel_diff = (mel - hf_mel(x30)).abs().max().item()
            diff = (ours(x30) - ref(hf_mel(x30)).last_hidden_state).abs().max().item()
            t = timed({
                "mel ours": lambda: log_mel_spectrogram(x30, 128),
                "mel transformers": lambda: hf_mel(x30),
                "encoder ours": lambda: ours.encode(mel),
                "encoder transformers": lambda: ref(mel).last_hidden_state,
                "e2e ours": lambda: ours(x30),
                "e2e transformers": lambda: ref(hf_mel(x30)).last_hidden_state,
                "pad 5 s": lambda: ours(x5),
                "true 5 s": lambda: short(x5),
                "true 30 s": lambda: short(x30),
            }, REPEATS)
    finally:
        torch.set_num_threads(old_threads)
    layers = f"{LAYERS} of large-v3's 32 layers" if LAYERS != 32 else "32 layers"
    print(f"\nWhisper encoder, whisper-large-v3 shape ({layers} x 1280, 128 mel bins, {n_params / 1e6:.0f}M params), "
          f"batch 1, fp32, {cpu_name()}, {THREADS} thread(s), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, median of {REPEATS}")
    print(f"{'30 s of audio':40} {'transformers':>13} {'nanoaudio':>10} {'speed-up':>9}")
    for label, key in (("log-mel front end (s)", "mel"), ("encoder on the same log-mel (s)", "encoder"),
                       ("end to end, waveform in (s)", "e2e")):
        a, b = t[f"{key} transformers"], t[f"{key} ours"]
        print(f"{label:40} {a:13.3f} {b:10.3f} {a / b:8.2f}x")
    print(f"{'real-time factor (end to end / 30 s)':40} {t['e2e transformers'] / 30:13.3f} {t['e2e ours'] / 30:10.3f}")
    print(f"max |difference|: log-mel {mel_diff:.1e}, last hidden state {diff:.1e}")
    print(f"{'nanoaudio modes (s)':40} {'5 s':>13} {'30 s':>10}")
    print(f"{'pad to 30 s (1500 frames, default)':40} {t['pad 5 s']:13.3f} {t['e2e ours']:10.3f}")
    print(f"{'true length (250 / 1500 frames)':40} {t['true 5 s']:13.3f} {t['true 30 s']:10.3f}")
    assert mel_diff < 1e-4 and diff < 1e-2  # same weights, same math: a large difference would void the timing
