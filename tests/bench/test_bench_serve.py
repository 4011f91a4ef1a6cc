"""Throughput of the server (nanoaudio/serve.py) with 1, 4 and 16 concurrent clients, against the same clips
transcribed one at a time in-process (no HTTP, no batching), for both decodings.

    python -m pytest -q -s tests/bench/test_bench_serve.py

Each row sends the same REQUESTS clips, 1.2-2.3 s espeak-ng digit strings (the bundled tiny model's kind of
audio), through the official `openai` client; N clients each send their share one request after another. The
server batches what arrives together (serve.Worker), so more clients mean bigger batches: the table shows the
requests per batch that /health's counter gives. The server runs with torch's default threads, the in-process
baseline with as many, also outside the main thread; the first request of each (warm-up) is not timed. Median of
NANOAUDIO_BENCH_REPEATS rounds (default 3), every row once per round.
"""

import concurrent.futures
import os
import random
import statistics
import time

import pytest
import torch

from test_serve import running_server, wav_bytes  # tests/ is on sys.path under pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("espeakng_loader")
from nanoaudio import synth  # noqa: E402

REQUESTS = int(os.environ.get("NANOAUDIO_BENCH_REQUESTS", "48"))
REPEATS = int(os.environ.get("NANOAUDIO_BENCH_REPEATS", "3"))
CLIENTS = (1, 4, 16)


def clips(n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = random.Random(seed)
    return [synth.speak(" ".join(rng.choice(synth.DIGITS) for _ in range(rng.randint(3, 6))), "en-us", 170, 50)
            for _ in range(n)]


def run_clients(url: str, data: list[bytes], n_clients: int) -> tuple[float, list[str]]:
    """-> (seconds, texts): n_clients threads, each with its own client, sending its share of `data` in turn."""
    def client_loop(share):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
        return [(i, client.audio.transcriptions.create(model="tiny-asr", file=("a.wav", data[i])).text)
                for i in share]

    shares = [range(k, len(data), n_clients) for k in range(n_clients)]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
        answers = dict(pair for part in pool.map(client_loop, shares) for pair in part)
    return time.perf_counter() - t, [answers[i] for i in range(len(data))]


@pytest.mark.parametrize("beams", [8, 1])
def test_bench_serve_throughput(tmp_path, beams):
    from nanoaudio.decoding import DecodingOptions, transcribe
    from nanoaudio.model import ASRModel
    from nanoaudio.tiny import BUNDLED

    waves = clips(REQUESTS)
    data = [wav_bytes(w) for w in waves]
    audio_s = sum(len(w) for w in waves) / 16000
    model = ASRModel.load(BUNDLED)
    options = DecodingOptions(beams=beams)
    one_at_a_time = "in-process, one at a time"
    seconds, per_batch = {one_at_a_time: []}, {one_at_a_time: [1.0]}
    with running_server(tmp_path, "--beams", str(beams)) as url, concurrent.futures.ThreadPoolExecutor(1) as own:
        own.submit(transcribe, model, waves[:1], options).result()  # warm-up, both
        run_clients(url, data[:1], 1)
        for _ in range(REPEATS):  # the rows take turns, so a busy moment of the machine hits them all alike
            t = time.perf_counter()
            # in a thread of its own, as the server's worker runs the model: on the shared 2-core machine these
            # numbers come from (load ~10), torch's OpenMP threads ran a clip 20x slower in the main thread
            reference = own.submit(lambda: [transcribe(model, [w], options)[0] for w in waves]).result()
            seconds[one_at_a_time].append(time.perf_counter() - t)
            for n in CLIENTS:
                name = f"server, {n} client{'s' * (n > 1)}"
                before = httpx.get(f"{url}/health").json()["batches"]
                dt, texts = run_clients(url, data, n)
                batches = httpx.get(f"{url}/health").json()["batches"] - before
                assert texts == reference, f"{n} clients: answers differ from one at a time"
                seconds.setdefault(name, []).append(dt)
                per_batch.setdefault(name, []).append(REQUESTS / batches)
    base = statistics.median(seconds[one_at_a_time])
    print(f"\n{REQUESTS} requests ({audio_s:.0f} s of audio), {'greedy' if beams == 1 else f'{beams} beams'}, "
          f"torch threads {torch.get_num_threads()}, median of {REPEATS}")
    print(f"| {'':<26} | requests/s | audio s/s | vs one at a time | requests per batch |")
    print(f"|{'-' * 28}|------------|-----------|------------------|--------------------|")
    for name, ts in seconds.items():
        dt = statistics.median(ts)
        print(f"| {name:<26} | {REQUESTS / dt:10.1f} | {audio_s / dt:9.1f} | {base / dt:15.2f}x | "
              f"{statistics.median(per_batch[name]):18.1f} |")
