"""Real-time factor of the bundled tiny model on CPU, through the library's decoding path, 10 s and 60 s inputs.

    python -m pytest -q -s tests/bench/test_bench_sample.py

The input is espeak-ng speech (digit strings with short pauses, the kind of audio the tiny model knows),
transcribed exactly as `python sample.py FILE --batch-size 8` does (nanoaudio/decoding.py): cut into the model's
4 s windows with overlap, the windows batched, decoded (the default, 8 beams rescored with the encoder's CTC head, and greedy,
--beams 1, both with a KV cache), transcripts stitched. RTF = compute seconds / audio seconds (below 1: faster
than real time). One torch thread by default
(NANOAUDIO_BENCH_THREADS=N to change); median of NANOAUDIO_BENCH_REPEATS runs (default 3) after one warm-up.
"""

import os
import random
import statistics
import time

import pytest
import torch

from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.decoding import BEAMS, DecodingOptions, transcribe
from nanoaudio.tiny import BUNDLED

pytest.importorskip("espeakng_loader")
from nanoaudio import synth  # noqa: E402

REPEATS = int(os.environ.get("NANOAUDIO_BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("NANOAUDIO_BENCH_THREADS", "1"))


def speech(seconds: float, seed: int = 0) -> torch.Tensor:
    rng, pieces, n = random.Random(seed), [], 0
    pause = torch.zeros(int(0.3 * SAMPLE_RATE))
    while n < seconds * SAMPLE_RATE:
        text = " ".join(rng.choice(synth.DIGITS) for _ in range(4))
        pieces += [synth.speak(text, "en-us", 170, 50), pause]
        n += len(pieces[-2]) + len(pause)
    return torch.cat(pieces)[: int(seconds * SAMPLE_RATE)]


def test_real_time_factor():
    from nanoaudio.model import ASRModel

    if not BUNDLED.is_dir():
        pytest.skip(f"no bundled model at {BUNDLED}")
    torch.set_num_threads(THREADS)
    model = ASRModel.load(BUNDLED)
    rows = []
    for beams in (BEAMS, 1):
        options = DecodingOptions(beams=beams, batch_size=8)  # the library's defaults otherwise, as the CLI's
        for seconds in (10, 60):
            wave = speech(seconds)
            transcribe(model, [wave], options)  # warm-up
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                text = transcribe(model, [wave], options)[0]
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            how = options.describe() + (" (default)" if beams == BEAMS else "")
            rows.append((how, seconds, t, t / seconds, len(text.split())))
    print(f"\nbundled tiny model, CPU, {THREADS} thread(s), batch 8 chunks of {model.config.window_seconds:g} s")
    print("| decoding | audio | compute | RTF | words |\n|---|---|---|---|---|")
    for how, seconds, t, rtf, words in rows:
        print(f"| {how} | {seconds} s | {t:.2f} s | {rtf:.3f} | {words} |")
    assert all(row[3] < 1.0 for row in rows)  # faster than real time on one CPU thread
