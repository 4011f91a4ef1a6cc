"""Where a tiny-preset training step spends its time on CPU: the encoder's CTC step, its conv front end, the
frozen encoder's forward, a stage-2 step (projector + decoder on the frozen encoder) and a joint step, in fp32
and (on a CPU with AMX) under bf16 autocast as train.py runs it; and what denormal floats cost a trained model.

    python -m pytest -q -s tests/bench/test_bench_train_step.py

A randomly initialised model of the preset's sizes (nanoaudio.tiny.build_tiny) on one batch of 8 espeak-ng
utterances like the preset's training data (digit strings and sentences, 1-3 s). Forward and backward, the
optimizer excluded; median of NANOAUDIO_BENCH_REPEATS timings (default 5), alternating, after one warm-up, at the torch
threads the machine has (NANOAUDIO_BENCH_THREADS=N to change). The times do not depend on the weights, as long
as no denormal floats turn up: the last test times the bundled (trained) model's CTC step with them kept and
flushed to zero (train.py flushes them), on one thread (the flag is per thread).
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


def utterances():
    rng, words = random.Random(0), synth.vocabulary()
    texts = [synth.random_text(rng, "mixed", words) for _ in range(8)]
    return texts, [synth.speak(t, "en-us", 175, 50) for t in texts]


def test_bench_tiny_train_step():
    import train
    from nanoaudio.tiny import build_tiny

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_tiny(types.SimpleNamespace(stack=5, projector="linear", seed=0, ctc_weight=0.5),
                       torch.device("cpu")).train()
    texts, audio = utterances()
    wave, mask = batch_audio(audio)
    bf16 = train.resolve_precision("auto", torch.device("cpu")) == "bf16"
    wave_bf16, mask_bf16 = batch_audio(audio, pad_to_multiple_of=8000)  # as train.py pads under CPU bf16

    def backward(lm, autocast=False):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(*((wave_bf16, mask_bf16) if autocast else (wave, mask)), texts, lm=lm)["loss"]
        loss.backward()

    def conv_front_end():
        model.zero_grad(set_to_none=True)
        model.encoder.feature_extractor(wave).sum().backward()

    def frozen_encoder():
        with torch.no_grad():
            model.encode_frames(wave, mask)

    def stage2(autocast=False):
        model.encoder.requires_grad_(False)
        try:
            backward(lm=True, autocast=autocast)
        finally:
            model.encoder.requires_grad_(True)

    fns = {
        "encoder CTC step (stage 1)": lambda: backward(lm=False),
        "  its conv front end": conv_front_end,
        "stage-2 step (projector + decoder)": stage2,
        "  its frozen encoder's forward": frozen_encoder,
        "joint step (everything trains)": lambda: backward(lm=True),
    }
    if bf16:  # (no AMX: train.py --precision auto trains in fp32, and bf16 would only be emulated)
        padded = wave_bf16.shape[1] / 16000
        fns |= {f"bf16 autocast, padded to {padded:.1f} s: encoder CTC step": lambda: backward(lm=False, autocast=True),
                "bf16 autocast: stage-2 step": lambda: stage2(autocast=True),
                "bf16 autocast: joint step": lambda: backward(lm=True, autocast=True)}
    ms = {name: t * 1000 for name, t in timed(fns, REPEATS).items()}
    seconds = wave.shape[1] / 16000
    print(f"\ntiny preset, CPU, {THREADS} thread(s), batch 8 padded to {seconds:.2f} s, forward + backward")
    print("| part | ms |\n|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.0f} |")
    assert 0 < ms["  its conv front end"] < ms["encoder CTC step (stage 1)"]
    assert 0 < ms["  its frozen encoder's forward"] < ms["stage-2 step (projector + decoder)"]


def test_bench_denormals():
    from nanoaudio.model import ASRModel
    from nanoaudio.tiny import BUNDLED

    if not BUNDLED.is_dir():
        pytest.skip(f"no bundled model at {BUNDLED}")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the flush flag set here is the flag every op runs under
    try:
        model = ASRModel.load(BUNDLED).train()
        texts, audio = utterances()
        wave, mask = batch_audio(audio)

        def ctc_step(flush):
            def step():
                torch.set_flush_denormal(flush)
                model.zero_grad(set_to_none=True)
                model(wave, mask, texts, lm=False)["loss"].backward()
            return step

        ms = {name: t * 1000 for name, t in timed({"kept": ctc_step(False), "flushed": ctc_step(True)},
                                                  REPEATS).items()}
    finally:
        torch.set_flush_denormal(False)  # torch's default, for whatever runs next in this process
        torch.set_num_threads(old)
    print(f"\nbundled (trained) tiny model, CTC step, 1 thread: denormals kept {ms['kept']:.0f} ms, "
          f"flushed to zero {ms['flushed']:.0f} ms")
    assert ms["kept"] > 0 and ms["flushed"] > 0
