"""Where a tiny-preset training step spends its time on CPU: the encoder's CTC step, its conv front end, the
frozen encoder's forward, a stage-2 step (projector + decoder on the frozen encoder) and a joint step.

    python -m pytest -q -s tests/bench/test_bench_train_step.py

A randomly initialised model of the preset's sizes (nanoaudio.tiny.build_tiny) on one batch of 8 espeak-ng
utterances like the preset's training data (digit strings and sentences, 1-3 s). Forward and backward, the
optimizer excluded; median of NANOAUDIO_BENCH_REPEATS timings (default 5), alternating, after one warm-up, at the torch
threads the machine has (NANOAUDIO_BENCH_THREADS=N to change). The times do not depend on the weights, so an
untrained model measures what a training run pays per step.
"""

import os
import random
import types

import pytest
import torch
from timing import timed

from nanoaudio.audio import batch_audio

pytest.importorskip("espeakng_loader")
from nanoaudio import synth  # noqa: E402

REPEATS = int(os.environ.get("NANOAUDIO_BENCH_REPEATS", "5"))
THREADS = int(os.environ.get("NANOAUDIO_BENCH_THREADS", str(torch.get_num_threads())))


def test_bench_tiny_train_step():
    from nanoaudio.tiny import build_tiny

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_tiny(types.SimpleNamespace(stack=5, projector="linear", seed=0, ctc_weight=0.5),
                       torch.device("cpu")).train()
    rng, words = random.Random(0), synth.vocabulary()
    texts = [synth.random_text(rng, "mixed", words) for _ in range(8)]
    wave, mask = batch_audio([synth.speak(t, "en-us", 175, 50) for t in texts])

    def backward(lm):
        model.zero_grad(set_to_none=True)
        model(wave, mask, texts, lm=lm)["loss"].backward()

    def conv_front_end():
        model.zero_grad(set_to_none=True)
        model.encoder.feature_extractor(wave).sum().backward()

    def frozen_encoder():
        with torch.no_grad():
            model.encode_frames(wave, mask)

    def stage2():
        model.encoder.requires_grad_(False)
        try:
            backward(lm=True)
        finally:
            model.encoder.requires_grad_(True)

    ms = {name: t * 1000 for name, t in timed({
        "encoder CTC step (stage 1)": lambda: backward(lm=False),
        "  its conv front end": conv_front_end,
        "stage-2 step (projector + decoder)": stage2,
        "  its frozen encoder's forward": frozen_encoder,
        "joint step (everything trains)": lambda: backward(lm=True),
    }, REPEATS).items()}
    seconds = wave.shape[1] / 16000
    print(f"\ntiny preset, CPU, {THREADS} thread(s), batch 8 padded to {seconds:.2f} s, forward + backward")
    print("| part | ms |\n|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.0f} |")
    assert 0 < ms["  its conv front end"] < ms["encoder CTC step (stage 1)"]
    assert 0 < ms["  its frozen encoder's forward"] < ms["stage-2 step (projector + decoder)"]
