"""HuBERT encoder on CPU vs transformers' HubertModel at the hubert-large shape, 10 s of audio.

    python -m pytest -q -s tests/bench/test_bench_encoder.py

One set of random weights (fp32) shared by both models (transformers' state dict, renamed and weight-norm
folded exactly as load_encoder does), batch 1, 160,000 samples, torch.inference_mode for both, transformers'
default attention (SDPA). Each is timed NANOAUDIO_BENCH_REPEATS times (default 3), alternating, after one
warm-up; the median is reported. One torch thread (NANOAUDIO_BENCH_THREADS=N to change), so that other jobs on a
shared machine disturb the timing less. Also the conv feature extractor alone, where the two differ (see
encoder.py ConvLayer: channels-last, conv as a matmul over overlapping windows, no transposes).
Prints a table; no timed assertions (tests/bench/conftest.py marks this file slow).
"""

import json
import os
import platform
from pathlib import Path

import pytest
import torch
from timing import timed

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).parents[2]
SECONDS = 10
REPEATS = int(os.environ.get("NANOAUDIO_BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("NANOAUDIO_BENCH_THREADS", "1"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")  # unknown: try


def build_pair():
    from nanoaudio.config import EncoderConfig
    from nanoaudio.encoder import POS_CONV, HubertEncoder, fold_weight_norm, rename
    from nanoaudio.load import load_state

    hf_cfg = json.loads((ROOT / "nanoaudio" / "configs" / "hubert-large.json").read_text())
    hf_cfg["architectures"] = ["HubertModel"]
    torch.manual_seed(0)
    ref = transformers.HubertModel(transformers.HubertConfig(**hf_cfg)).eval()
    sd = {rename(k): v for k, v in ref.state_dict().items() if rename(k) is not None}
    w = fold_weight_norm(sd.pop(f"{POS_CONV}.weight_g"), sd.pop(f"{POS_CONV}.weight_v")).float()
    sd[f"{POS_CONV}.weight"] = w
    with torch.device("meta"):
        ours = HubertEncoder(EncoderConfig.from_hf_config(hf_cfg))
    load_state(ours, sd, "transformers HubertModel")
    return ref, ours.eval()


def test_bench_encoder_vs_transformers():
    if mem_available_gb() < 4:
        pytest.skip("needs ~3 GB of free memory: two copies of a 316M-parameter fp32 model")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        ref, ours = build_pair()
        x = torch.randn(1, SECONDS * 16000)
        with torch.inference_mode():
            diff = (ours(x) - ref(x).last_hidden_state).abs().max().item()
            t = timed({
                "transformers": lambda: ref(x).last_hidden_state,
                "nanoaudio": lambda: ours(x),
                "transformers conv": lambda: ref.feature_extractor(x),
                "nanoaudio conv": lambda: ours.feature_extractor(x),
            }, REPEATS)
    finally:
        torch.set_num_threads(old_threads)
    print(f"\nHuBERT forward, hubert-large shape (24 x 1024, 316M params), {SECONDS} s of audio, batch 1, fp32, "
          f"{cpu_name()}, {THREADS} thread(s), torch {torch.__version__}, transformers {transformers.__version__}, "
          f"median of {REPEATS}")
    print(f"{'':32} {'transformers':>13} {'nanoaudio':>10} {'speed-up':>9}")
    for label, key in (("full forward (s)", ""), ("conv feature extractor (s)", " conv")):
        a, b = t[f"transformers{key}"], t[f"nanoaudio{key}"]
        print(f"{label:32} {a:13.3f} {b:10.3f} {a / b:8.2f}x")
    a, b = t["transformers"], t["nanoaudio"]
    print(f"{'real-time factor (compute/audio)':32} {a / SECONDS:13.3f} {b / SECONDS:10.3f}")
    print(f"max |difference| of the last hidden state: {diff:.2e}")
    assert diff < 1e-3  # same weights, same math: a large difference would make the timing meaningless
