"""The server (nanoaudio/serve.py) as its users reach it: the official `openai` client, and plain HTTP where the
client cannot send what is tested (a missing field, a body without a length).

    python -m pytest -q tests/test_serve.py

One server for the module, started as `python -m nanoaudio.serve` in a subprocess on a free loopback port, with
the bundled tiny model and small limits (1 MB uploads, 8 s of audio) so the refusals are cheap to provoke. Its
TMPDIR is a folder of its own, which the requests leave as the start left it: no upload touches the disk. Speech
is synthesized (espeak-ng digit strings, which the bundled model transcribes exactly).
"""

import concurrent.futures
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'nanoaudio[serve]')")
pytest.importorskip("espeakng_loader")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from nanoaudio import synth  # noqa: E402
from nanoaudio.audio import SAMPLE_RATE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-asr"  # the bundled model's folder name: its id
CLIPS = {"a": "four two seven", "b": "one nine three five", "c": "eight zero six"}


def wav_bytes(wave: torch.Tensor, sr: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.numpy(), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clips():
    return {k: wav_bytes(synth.speak(text, "en-us", 160, 50)) for k, text in CLIPS.items()}


@contextlib.contextmanager
def running_server(tmp: Path, *flags: str):
    """`python -m nanoaudio.serve` on a free loopback port with TMPDIR=tmp -> its base url, once /health answers.
    On leaving: it must still be running (no request killed it), and tmp as the start left it (no upload went to
    the disk)."""
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "nanoaudio.serve", "--port", str(port), *flags], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.communicate()[1]}")
        time.sleep(0.2)
    before = sorted(tmp.rglob("*"))  # what starting left (torch makes a cache folder)
    try:
        yield url
    finally:
        alive = proc.poll() is None
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert alive, f"the server died: {err}"
    assert sorted(tmp.rglob("*")) == before, "requests left temporary files behind"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """-> (base url, its TMPDIR), with small limits: 1 MB uploads, 8 s of audio."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    with running_server(tmp, "--max-upload-mb", "1", "--max-seconds", "8") as url:
        yield url, tmp


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="x", max_retries=0)


def transcribe(client, data: bytes, name: str = "clip.wav", **kw):
    return client.audio.transcriptions.create(model=MODEL, file=(name, data), **kw)


# -----------------------------------------------------------------------------
# every response format


def test_json(client, clips):
    assert transcribe(client, clips["a"]).text == CLIPS["a"]


def test_text_srt_vtt_and_their_content_types(client, clips):
    for fmt, media, check in [("text", "text/plain", lambda body: body == CLIPS["a"] + "\n"),
                              ("srt", "application/x-subrip", lambda body: body.startswith("1\n00:00:00,")),
                              ("vtt", "text/vtt", lambda body: body.startswith("WEBVTT\n\n00:00:00."))]:
        raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=("a.wav", clips["a"]),
                                                                   response_format=fmt)
        assert raw.headers["content-type"].startswith(media), fmt
        body = raw.parse()
        assert isinstance(body, str) and check(body), (fmt, body)
        assert CLIPS["a"] in body


def test_verbose_json_segments_and_word_timestamps(client):
    # "four", half a second of silence, "two seven": the words' times must put the pause where it is
    four, rest = synth.speak("four", "en-us", 160, 50), synth.speak("two seven", "en-us", 160, 50)
    wave = torch.cat([four, torch.zeros(SAMPLE_RATE // 2), rest])
    out = transcribe(client, wav_bytes(wave), response_format="verbose_json",
                     timestamp_granularities=["word", "segment"])
    assert out.text == "four two seven" and out.language == "english"
    assert out.duration == pytest.approx(len(wave) / SAMPLE_RATE, abs=1e-3)
    assert [w.word for w in out.words] == ["four", "two", "seven"]
    starts, ends = [w.start for w in out.words], [w.end for w in out.words]
    assert all(0 <= s < e <= out.duration for s, e in zip(starts, ends)) and starts == sorted(starts)
    gap_start, gap_end = len(four) / SAMPLE_RATE, (len(four) + SAMPLE_RATE // 2) / SAMPLE_RATE
    assert ends[0] < gap_start + 0.1 and starts[1] > gap_end - 0.1, out.words  # the pause lies between them
    (seg,) = out.segments  # 1.9 s: one window of the tiny model's 4 s
    assert seg.id == 0 and seg.seek == 0 and seg.start == 0 and seg.end == pytest.approx(out.duration, abs=1e-3)
    assert seg.text == "four two seven" and seg.temperature == 0.0
    assert seg.tokens and all(isinstance(t, int) for t in seg.tokens)
    assert 0 <= seg.no_speech_prob <= 1 and seg.compression_ratio > 0
    assert -1 < seg.avg_logprob < 0  # whisper's rule: below -1 the decode has failed; this one is sure of itself


def test_verbose_json_granularities(client, clips):
    plain = transcribe(client, clips["b"], response_format="verbose_json")  # OpenAI's default: segments only
    assert plain.text == CLIPS["b"] and len(plain.segments) == 1 and plain.words is None
    words = transcribe(client, clips["b"], response_format="verbose_json", timestamp_granularities=["word"])
    assert [w.word for w in words.words] == CLIPS["b"].split() and words.segments is None


def test_stream_sends_deltas_then_the_text(client, clips):
    events = list(transcribe(client, clips["b"], stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1].type == "transcript.text.done" and events[-1].text == CLIPS["b"]
    assert "".join(e.delta for e in events[:-1]) == CLIPS["b"]


def test_streams_batched_together_and_over_several_windows(client, clips):
    """Streams arriving together share one greedy batch, whose rows the server routes back to each request; a
    file longer than the model's 4 s window streams its windows' text stitched (the overlap's words once). The done
    event has the final text, the same as without streaming: the deltas are the decoder's raw tokens, before the
    guards that drop words the CTC head did not hear, so on a long file they can differ from it."""
    pause = torch.zeros(SAMPLE_RATE // 2)
    long = wav_bytes(torch.cat([x for k in "abc" for x in (synth.speak(CLIPS[k], "en-us", 160, 50), pause)]))
    expected = " ".join(CLIPS[k] for k in "abc")
    assert transcribe(client, long).text == expected  # 5.5 s: two windows
    data = [long, clips["a"], clips["b"], clips["c"]]
    with concurrent.futures.ThreadPoolExecutor(len(data)) as pool:
        streams = list(pool.map(lambda d: list(transcribe(client, d, stream=True)), data))
    for events, text in zip(streams, [expected, CLIPS["a"], CLIPS["b"], CLIPS["c"]]):
        assert events[-1].type == "transcript.text.done" and events[-1].text == text
        deltas = "".join(e.delta for e in events[:-1])
        assert deltas == text or (text is expected and deltas.startswith(CLIPS["a"])), deltas


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{server[0]}/health").json()["status"] == "ok"
    assert httpx.get(f"{server[0]}/").text.startswith("<!doctype html>")


# -----------------------------------------------------------------------------
# bad uploads: each with its status and OpenAI's error shape


def error_of(answer) -> dict:
    """An openai.APIStatusError or an httpx.Response -> its error object, once its shape is checked."""
    body = getattr(answer, "response", answer).json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("case, data, kw, status, param, code", [
    ("not audio", b"this is not a wav file", {}, 400, "file", "invalid_audio"),
    ("empty", b"", {}, 400, "file", "invalid_audio"),
    ("over the size limit", b"\0" * (3 * 2**20 // 2), {}, 413, "file", "file_too_large"),
    ("over the duration limit", "9 s", {}, 400, "file", "audio_too_long"),
    ("shorter than one frame", "10 ms", {}, 400, "file", "invalid_audio"),
    ("unknown model", "clip", {"model": "whisper-1"}, 404, "model", "model_not_found"),
    ("bad format", "clip", {"response_format": "xml"}, 400, "response_format", "invalid_value"),
    ("another language", "clip", {"language": "fr"}, 400, "language", "unsupported_language"),
    ("a prompt", "clip", {"prompt": "digits"}, 400, "prompt", "unsupported_value"),
    ("sampling", "clip", {"temperature": 0.7}, 400, "temperature", "unsupported_value"),
    ("granularity without verbose_json", "clip", {"timestamp_granularities": ["word"]}, 400,
     "timestamp_granularities", None),
    ("stream with subtitles", "clip", {"stream": True, "response_format": "srt"}, 400, "stream", None),
])
def test_bad_upload(client, clips, case, data, kw, status, param, code):
    data = {"9 s": wav_bytes(torch.zeros(9 * SAMPLE_RATE)), "10 ms": wav_bytes(torch.zeros(160)),
            "clip": clips["a"]}.get(data, data)
    kw = {"model": MODEL, **kw}
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(file=("x.wav", data), **kw)
    assert info.value.status_code == status, case
    error = error_of(info.value)
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert code is None or error["code"] == code, error


def test_missing_fields_are_400_not_422(server, clips):
    url = f"{server[0]}/v1/audio/transcriptions"
    for files, data, param in [({}, {"model": MODEL}, "file"), ({"file": ("a.wav", clips["a"])}, {}, "model"),
                               ({}, {"model": MODEL, "file": "not a file"}, "file")]:
        r = httpx.post(url, files=files or None, data=data)
        assert r.status_code == 400 and error_of(r)["param"] == param, r.text
    r = httpx.post(url, content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_content_type"
    for boundary in ("", "; boundary=zz"):  # none given, or a body that does not follow it
        r = httpx.post(url, content=b"garbage", headers={"content-type": "multipart/form-data" + boundary})
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_body", r.text
    r = httpx.get(f"{server[0]}/v1/nothing")
    assert r.status_code == 404 and error_of(r)


def test_size_limit_from_the_headers_alone(server):
    """A Content-Length over the limit is refused before any of the body is read: here none is ever sent."""
    port = int(server[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n"
                  b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        answer = b""
        while b"file_too_large" not in answer and (chunk := s.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"file_too_large" in answer, answer


def test_size_limit_without_content_length(server):
    """A chunked body has no length to refuse it by: the server stops reading once it passes the limit."""
    boundary = "nanoaudio"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()

    def body():  # 1 MB limit, 4 MB offered: the server answers before taking it all
        yield head
        for _ in range(64):
            yield b"\0" * 2**16
            time.sleep(0.002)

    try:
        r = httpx.post(f"{server[0]}/v1/audio/transcriptions", content=body(), timeout=30,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
        return  # the server answered and closed the connection while the client was still sending
    assert r.status_code == 413 and error_of(r)["code"] == "file_too_large"


# -----------------------------------------------------------------------------
# concurrency: batched, identical to one at a time, and the server fine afterwards


def test_concurrent_requests_match_sequential(client, server, clips):
    names = list(clips) * 4  # 12 requests
    sequential = {k: transcribe(client, clips[k]).text for k in clips}
    batches_before = httpx.get(f"{server[0]}/health").json()["batches"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        texts = list(pool.map(lambda k: transcribe(client, clips[k]).text, names))
    assert texts == [sequential[k] for k in names] == [CLIPS[k] for k in names]
    health = httpx.get(f"{server[0]}/health").json()
    assert health["status"] == "ok" and health["queued"] == 0
    assert health["batches"] - batches_before < len(names), "requests arriving together were not batched"
    assert transcribe(client, clips["c"]).text == CLIPS["c"]


def test_a_failing_decode_is_a_500_and_the_worker_goes_on(clips):
    """A bug inside decoding fails that batch's requests with a 500 in OpenAI's shape; the worker takes the next."""
    from fastapi.testclient import TestClient

    from nanoaudio.serve import make_app

    class Broken:  # a "model" whose every decode raises (transcribe_full reads its config first)
        tokenizer, decoder = None, type("Decoder", (), {"eos_token_ids": [0]})

    with TestClient(make_app(Broken(), "broken")) as http:
        for _ in range(2):
            r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clips["a"])}, data={"model": "broken"})
            assert r.status_code == 500 and error_of(r)["type"] == "server_error", r.text
            assert "decoding failed" in error_of(r)["message"]
        assert http.get("/health").json()["status"] == "ok"


def test_command_line_errors_are_one_line(server, tmp_path):
    """Before a model loads: a port in use (the test server's), a checkpoint folder that is not there."""
    port = server[0].rsplit(":", 1)[1]
    for flags, words in [(["--port", port], "cannot listen there"),
                         (["--checkpoint", str(tmp_path / "nothing")], "no such checkpoint folder")]:
        r = subprocess.run([sys.executable, "-m", "nanoaudio.serve", *flags], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


def test_missing_extra_is_one_line(tmp_path):
    """Without FastAPI: one line naming the extra to install, exit status 1, no traceback."""
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from nanoaudio.cli import run_cli; from nanoaudio.serve import main; run_cli(lambda: main([]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "pip install 'nanoaudio[serve]'" in r.stderr and "fastapi" in r.stderr
