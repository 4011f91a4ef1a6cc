"""Serve a model over HTTP: OpenAI's transcription API, and a page that records from the microphone.

    pip install 'nanoaudio[serve]'                       # FastAPI + uvicorn (Python >= 3.11)
    python -m nanoaudio.serve                            # the bundled tiny model on http://127.0.0.1:8000
    python -m nanoaudio.serve --checkpoint out/qwen3-8b/last --device cuda --port 8080
    curl http://127.0.0.1:8000/v1/audio/transcriptions -F file=@clip.wav -F model=tiny-asr

The routes have the shapes of OpenAI's audio API, so its clients and the tools built on them work unchanged:
    POST /v1/audio/transcriptions   multipart form: file, model, response_format (json, text, srt, vtt,
                                    verbose_json), timestamp_granularities[] (word, segment), stream,
                                    language, prompt, temperature
    GET  /v1/models                 the one loaded model (its id: the checkpoint folder's name, or --name)
    GET  /health                    {"status": "ok", ...} once the model is loaded
    GET  /                          the page, nanoaudio/static/index.html (no CDN: it works offline)

A request's way through:
1. read: the body goes chunk by chunk into the multipart parser, in memory; past --max-upload-mb it is refused
   with 413 (a Content-Length above it before one byte of the body is read). Nothing in a request names a path.
2. check: the fields (a missing or bad one: 400; an unknown model: 404), then the audio, decoded from the bytes
   by load_audio (not audio, empty, or longer than --max-seconds: 400).
3. decode: a Job goes to the Worker, the one thread that owns the model. It waits BATCH_WAIT_S for more jobs,
   groups them by decoding options, and decodes each group as one batch through the library's one decoding path
   (decoding.transcribe_full): padding masks keep each transcript identical to its decode alone.
4. answer: the result in the format asked for; with stream=true, server-sent events fed by the greedy decode's
   on_token callback as the tokens come.
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, whatever fails: a bad request, an
unknown route, a bug (500). No error stops the worker or the server, and no upload touches the disk.
References: OpenAI's API reference (audio/createTranscription, its error object); whisper's transcribe.py (what a
verbose_json segment holds, compression_ratio); the WHATWG spec of server-sent events.
"""

import argparse
import asyncio
import dataclasses
import json
import queue
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.cli import check_device, float_in, int_in, positive_float, positive_int, run_cli
from nanoaudio.decoding import BEAMS, DecodingOptions, overlap_seconds, stitch, window_bounds
from nanoaudio.load import DTYPE_CHOICES
from nanoaudio.tiny import BUNDLED

BATCH_WAIT_S = 0.005  # how long the worker waits after the first job for others to join its batch
MAX_BATCH_JOBS = 32  # at most this many requests in one batch ...
BATCH_WINDOWS = 16  # ... whose windows are decoded this many at a time (DecodingOptions.batch_size)
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
ENGLISH = ("en", "english")  # the names OpenAI's clients send (ISO-639-1), and the one verbose_json answers with
PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def require_extra():
    """The serve extra's packages, or one line saying how to install them."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        need = "" if sys.version_info >= (3, 11) else f" (it needs Python >= 3.11; this is {sys.version.split()[0]})"
        raise NanoaudioError(f"the server needs the serve extra, {e.name} is missing: "
                             f"pip install 'nanoaudio[serve]'{need}") from None


# -----------------------------------------------------------------------------
# errors, in OpenAI's shape


class APIError(Exception):
    """An answer other than 200: its status and the four fields of OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message, param=None, code="invalid_value"):
    return APIError(400, message, param, code)


# -----------------------------------------------------------------------------
# 1. read: the multipart body, in memory, with a size limit


async def read_form(request, limit: int) -> tuple[dict, dict]:
    """The request's form -> ({field: [str, ...]}, {field: [bytes of a file, ...]}). File names are not kept.

    413 as soon as the body passes `limit` bytes: a Content-Length above it before anything is read, a body without
    one (chunked) once that much has come. Files stay in memory: the parser's threshold for spilling to a temporary
    file is set above the limit, so it is never reached."""
    from python_multipart import FormParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    too_large = APIError(413, f"the upload is larger than this server's limit of {limit / 2**20:g} MB "
                              "(--max-upload-mb)", "file", "file_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind not in (b"multipart/form-data", b"application/x-www-form-urlencoded"):
        raise bad("send a multipart/form-data body with the fields 'file' and 'model'", None, "invalid_content_type")
    fields, files = {}, {}

    def on_field(f):
        name = (f.field_name or b"").decode("utf-8", "replace")
        fields.setdefault(name, []).append((f.value or b"").decode("utf-8", "replace"))

    def on_file(f):
        f.file_object.seek(0)
        files.setdefault((f.field_name or b"").decode("utf-8", "replace"), []).append(f.file_object.read())

    received = 0
    try:
        parser = FormParser(kind.decode(), on_field, on_file, boundary=params.get(b"boundary"),
                            config={"MAX_MEMORY_FILE_SIZE": limit + 1, "MAX_BODY_SIZE": limit + 1})
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise bad(f"the multipart body cannot be parsed ({e})", None, "invalid_body") from None
    return fields, files


# -----------------------------------------------------------------------------
# 2. check: what the request asks for, or the one thing wrong with it


@dataclass
class Ask:
    """A checked request."""
    wave: object  # (S,) float32 at 16 kHz
    format: str
    granularities: tuple  # of GRANULARITIES, verbose_json only
    stream: bool
    options: DecodingOptions


def one(fields, name, default=None):
    values = fields.get(name, [])
    if len(values) > 1:
        raise bad(f"'{name}' was sent {len(values)} times; send it once", name)
    return values[0] if values else default


def check_fields(fields, files, model_id: str, beams: int) -> dict:
    """Everything but the audio, in the order a user would fix it: missing fields, then bad values."""
    if not files.get("file"):
        sent_as_text = "file" in fields
        raise bad("the field 'file' must be an uploaded file" if sent_as_text else "the field 'file' is missing: "
                  "send the audio as a file in a multipart form", "file", "missing_field")
    if len(files["file"]) > 1:
        raise bad(f"'file' was sent {len(files['file'])} times; send one file per request", "file")
    model = one(fields, "model")
    if model is None:
        raise bad(f"the field 'model' is missing: send model={model_id}", "model", "missing_field")
    fmt = one(fields, "response_format", "json")
    if fmt not in FORMATS:
        raise bad(f"response_format {fmt!r}: choose one of {', '.join(FORMATS)}", "response_format")
    grains = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
    for g in grains:
        if g not in GRANULARITIES:
            raise bad(f"timestamp_granularities {g!r}: choose word, segment or both", "timestamp_granularities")
    if grains and fmt != "verbose_json":
        raise bad("timestamp_granularities need response_format=verbose_json", "timestamp_granularities")
    stream = one(fields, "stream", "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise bad(f"stream {stream!r}: send true or false", "stream")
    stream = stream in ("true", "1")
    if stream and fmt not in ("json", "text"):
        raise bad(f"stream=true sends text deltas: it cannot be combined with response_format={fmt}", "stream")
    language = one(fields, "language", "en")
    if language.strip().lower() not in ENGLISH + ("",):
        raise bad(f"language {language!r}: this model transcribes English only; send 'en' or leave it out",
                  "language", "unsupported_language")
    if one(fields, "prompt", "").strip():
        raise bad("prompt: this model cannot be conditioned on a prompt (it was trained with one fixed "
                  "instruction); leave it out", "prompt", "unsupported_value")
    temperature = one(fields, "temperature", "0")
    try:
        t = float(temperature)
    except ValueError:
        raise bad(f"temperature {temperature!r} is not a number", "temperature") from None
    if t != 0:
        raise bad(f"temperature {temperature}: this server decodes deterministically (greedy or beam search), "
                  "so only 0 is supported", "temperature", "unsupported_value")
    if model != model_id:
        raise APIError(404, f"The model {model!r} does not exist: this server serves {model_id!r}", "model",
                       "model_not_found")
    # stream=true follows the greedy decode token by token (a beam search knows its words only at the end)
    options = DecodingOptions(beams=1 if stream else beams, batch_size=BATCH_WINDOWS)
    if "word" in grains or fmt in ("srt", "vtt"):  # subtitles: cues cut from the words' times
        options = dataclasses.replace(options, word_timestamps=True)
    granularities = tuple(g for g in GRANULARITIES if g in grains) or ("segment",)
    return {"format": fmt, "granularities": granularities, "stream": stream, "options": options}


def read_audio(data: bytes, max_seconds: float):
    """The upload's bytes -> (S,) float32 at 16 kHz, or a 400 saying why not."""
    from nanoaudio.audio import load_audio

    if not data:
        raise bad("the uploaded file is empty", "file", "invalid_audio")
    try:
        wave = load_audio(data, name="file")
    except NanoaudioError as e:
        raise bad(str(e), "file", "invalid_audio") from None
    seconds = len(wave) / SAMPLE_RATE
    if seconds > max_seconds:
        raise bad(f"the audio is {seconds:.1f} s long; this server takes at most {max_seconds:g} s (--max-seconds)",
                  "file", "audio_too_long")
    return wave


# -----------------------------------------------------------------------------
# 3. decode: one worker thread owns the model, and decodes what arrives together as one batch


class Job:
    """One request inside the worker: its audio and options in, its Result (or error) and stream events out.

    The worker thread hands everything back through the request's event loop (call_soon_threadsafe): asyncio
    objects may only be touched from their own loop."""

    def __init__(self, ask: Ask, tokenizer, eos):
        self.wave, self.options, self.stream = ask.wave, ask.options, ask.stream
        self.logprobs = ask.format == "verbose_json" and "segment" in ask.granularities  # avg_logprob wanted
        self.loop = asyncio.get_running_loop()
        self.result = self.loop.create_future()
        self.events = asyncio.Queue() if ask.stream else None  # stream=true: deltas, then None
        self.tokenizer, self.eos = tokenizer, eos

    def finish(self, result=None, error=None):
        def settle():
            if self.result.done():  # the client has gone: its future was cancelled
                pass
            elif error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(result)
            if self.events is not None:
                self.events.put_nowait(None)
        self.loop.call_soon_threadsafe(settle)

    # streaming: the tokens of each of the file's windows arrive in parallel rows. The first window's text goes out
    # as its tokens come; after it, the text of the windows that have ended, in order, stitched as the final text is
    # (decoding.stitch keeps the words of each overlap once). The deltas are the decoder's raw tokens: the guards
    # that run after decoding (a window without speech, a word the CTC head did not hear) can drop some of them
    # from the done event's text, which is the final one.

    def start_stream(self, n_windows: int):
        self.ids, self.ended = [[] for _ in range(n_windows)], [False] * n_windows
        self.done_windows, self.shown = 0, ""  # how many windows' text is in shown; the text sent so far

    def on_token(self, k: int, token: int):
        if self.ended[k]:
            return
        if token in self.eos:
            self.ended[k] = True
        else:
            self.ids[k].append(token)
        self.flush()

    def end_window(self, k: int):
        self.ended[k] = True  # a window cut off at max_new_tokens ends without an end-of-turn token
        self.flush()

    def flush(self):
        m = self.ended.index(False) if False in self.ended else len(self.ended)  # windows ended, in order
        if m == 0:
            # the first window's text so far, decoded again: one token can be part of a character (byte-level
            # BPE), which decode writes as U+FFFD until its last byte has come
            text = self.tokenizer.decode(self.ids[0]).strip().rstrip("\ufffd")
        elif m > self.done_windows:
            text = stitch([self.tokenizer.decode(ids).strip() for ids in self.ids[:m]])
            self.done_windows = m
        else:
            return  # a later window's tokens: sent once it and those before it have ended
        # Text sent is never taken back. Where stitching drops the end of a window already sent (a word garbled
        # at its edge), the deltas stop here and the done event has the whole text.
        if text.startswith(self.shown) and len(text) > len(self.shown):
            delta = text[len(self.shown):]
            self.loop.call_soon_threadsafe(self.events.put_nowait, {"type": "transcript.text.delta", "delta": delta})
            self.shown = text


class Router:
    """The on_token callback of a batch holding streaming jobs: sends each row's token to the job it belongs to.

    decoding.decode cuts every file into windows (window_bounds), lists the windows of all files in order and
    decodes them options.batch_size at a time, each batch's tokens starting again at step 0; so batch c's row b
    is the window c * batch_size + b of that list."""

    def __init__(self, model, jobs, options: DecodingOptions):
        window_s = options.window or model.config.window_seconds
        self.rows, self.batch, self.chunk = [], options.batch_size, -1
        for job in jobs:
            n = len(window_bounds(job.wave, window_s, overlap_seconds(window_s)))
            if job.stream:
                job.start_stream(n)
            self.rows += [(job, k) for k in range(n)]

    def __call__(self, step, tokens):  # tokens: (B,) the ids just generated
        if step == 0:
            self.end_chunk()  # a new batch of windows: the previous one has been decoded
            self.chunk += 1
        for b, token in enumerate(tokens.tolist()):
            job, k = self.rows[self.chunk * self.batch + b]
            if job.stream:
                job.on_token(k, token)

    def end_chunk(self):
        if self.chunk >= 0:
            for job, k in self.rows[self.chunk * self.batch:(self.chunk + 1) * self.batch]:
                if job.stream:
                    job.end_window(k)


class Worker:
    """The one thread that owns the model: takes jobs from a queue, decodes them in batches, forever."""

    def __init__(self, model):
        self.model, self.jobs = model, queue.Queue()
        self.batches = 0  # decodes run so far: /health reports it, the tests read it
        threading.Thread(target=self.run, name="nanoaudio-worker", daemon=True).start()

    def run(self):
        while True:
            batch = [self.jobs.get()]
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < MAX_BATCH_JOBS:
                try:
                    batch.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups = {}  # one decode per set of options: greedy and beams, with and without word timestamps
            for job in batch:
                groups.setdefault(job.options, []).append(job)
            for options, jobs in groups.items():
                self.decode(options, jobs)

    def decode(self, options, jobs):
        from nanoaudio.decoding import transcribe_full

        try:
            router = Router(self.model, jobs, options) if any(j.stream for j in jobs) else None
            results = transcribe_full(self.model, [j.wave for j in jobs], options, on_token=router)
            if router is not None:
                router.end_chunk()
            self.score([(j, r) for j, r in zip(jobs, results) if j.logprobs])
        except Exception as e:  # a bug, or out of memory: this batch's requests get a 500, the next batch runs
            print(f"nanoaudio.serve: decoding failed: {type(e).__name__}: {e}", file=sys.stderr)
            for job in jobs:
                job.finish(error=APIError(500, f"decoding failed: {type(e).__name__}: {e}", None, "server_error"))
            return
        self.batches += 1
        for job, result in zip(jobs, results):
            job.finish(result)

    @torch.inference_mode()
    def score(self, pairs):
        """Set each segment's avg_logprob, whisper's: the mean log-probability of its tokens and the end-of-turn
        token. Decoding does not return them, so the decoder reads each window's transcript again, teacher-forced
        on the window's audio (ASRModel.forward's per-sample loss): one more batched pass, for verbose_json only.
        (The text is encoded again from the string: for this tokenizer that gives back the decoded ids.)"""
        from nanoaudio.audio import batch_audio

        segments = [(job.wave, s) for job, result in pairs for s in result.segments]
        device = next(self.model.decoder.parameters()).device
        normalize = self.model.encoder.normalize_audio  # HuBERT: normalized; Whisper: raw
        for i in range(0, len(segments), BATCH_WINDOWS):
            part = segments[i:i + BATCH_WINDOWS]
            wave, mask = batch_audio([w[round(s.start * SAMPLE_RATE):round(s.end * SAMPLE_RATE)] for w, s in part],
                                     normalize=normalize)
            nll = self.model(wave.to(device), mask.to(device), [s.text for _, s in part])["per_sample"]  # (B,)
            for (_, s), x in zip(part, nll.tolist()):
                s.avg_logprob = round(-x, 4)


# -----------------------------------------------------------------------------
# 4. answer: the formats


def compression_ratio(text: str) -> float:
    """whisper's repetition check: UTF-8 bytes over their zlib-compressed size (a looping transcript: > 2.4)."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def verbose_json(result, granularities) -> dict:
    out = {"task": "transcribe", "language": "english", "duration": round(result.duration, 3), "text": result.text}
    if "segment" in granularities:
        out["segments"] = [{
            "id": i, "seek": round(s.start * 100),  # whisper's seek: the window's start in 10 ms mel frames
            "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text, "tokens": s.ids,
            "temperature": 0.0,  # deterministic decoding: greedy or beam search
            "avg_logprob": s.avg_logprob,  # set by Worker.score
            "compression_ratio": compression_ratio(s.text),
            "no_speech_prob": float(s.no_speech_prob or 0.0),
        } for i, s in enumerate(result.segments)]
    if "word" in granularities:
        out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                        for w in result.words or []]
    return out


def subtitles(result, fmt: str) -> str:
    """SRT or WebVTT: cues cut from the words' times (nanoaudio/subtitles.py: lines of at most 42 characters, a new
    cue after a pause)."""
    from nanoaudio.subtitles import WRITERS, cues

    return WRITERS[fmt](cues(result.words or [], duration=result.duration))


# -----------------------------------------------------------------------------
# the app


def make_app(model, model_id: str, max_upload_mb: float = 25.0, max_seconds: float = 900.0, beams: int = BEAMS):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="nanoaudio", docs_url=None, redoc_url=None)
    worker = Worker(model)
    limit = int(max_upload_mb * 2**20)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)  # unknown routes (404), wrong methods (405): the same shape
    async def http_error(request, e: HTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail), None, None).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)  # FastAPI's 422 for a bad field: 400, as OpenAI answers
    async def validation_error(request, e: RequestValidationError):
        return JSONResponse(bad(f"invalid request: {e.errors()}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        return JSONResponse(APIError(500, f"{type(e).__name__}: {e}", None, "server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "queued": worker.jobs.qsize(), "batches": worker.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "nanoaudio"}]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str):
        if name != model_id:
            raise APIError(404, f"The model {name!r} does not exist", "model", "model_not_found")
        return {"id": model_id, "object": "model", "created": created, "owned_by": "nanoaudio"}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        fields, files = await read_form(request, limit)
        asked = check_fields(fields, files, model_id, beams)
        wave = await asyncio.to_thread(read_audio, files["file"][0], max_seconds)  # resampling takes a while
        job = Job(Ask(wave=wave, **asked), model.tokenizer, set(model.decoder.eos_token_ids))
        worker.jobs.put(job)
        if job.stream:
            return StreamingResponse(events(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        result = await job.result
        fmt = asked["format"]
        if fmt == "json":
            return {"text": result.text}
        if fmt == "verbose_json":
            return verbose_json(result, asked["granularities"])
        if fmt == "text":
            return PlainTextResponse(result.text + "\n")
        return PlainTextResponse(subtitles(result, fmt), media_type={"srt": "application/x-subrip",
                                                                      "vtt": "text/vtt"}[fmt])

    async def events(job):
        """Server-sent events: a delta per piece of new text, then the whole (stitched) text."""
        while (event := await job.events.get()) is not None:
            yield f"data: {json.dumps(event)}\n\n"
        try:
            result = await job.result
        except APIError as e:  # the headers are gone: the error travels as an event (OpenAI's clients raise it)
            yield f"event: error\ndata: {json.dumps(e.body())}\n\n"
            return
        yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': result.text})}\n\n"

    return app


# -----------------------------------------------------------------------------
# the command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanoaudio.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by train.py (default: bundled tiny)")
    p.add_argument("--name", default=None, help="the model id clients send (default: the checkpoint folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; there is "
                   "no authentication)")
    p.add_argument("--port", type=int_in(0, 65535), default=8000, help="port to listen on")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights' dtype (default: the checkpoint's)")
    p.add_argument("--beams", type=positive_int, default=BEAMS,
                   help=f"beam search width for answers that are not streamed (default {BEAMS}, as sample.py; "
                        "1: greedy, faster and batched; stream=true is always greedy)")
    p.add_argument("--max-upload-mb", type=positive_float, default=25.0, help="largest upload, in MB (413 above)")
    p.add_argument("--max-seconds", type=float_in(0.1), default=900.0, help="longest audio, in seconds (400 above)")
    return p.parse_args(argv)


def check_address(host: str, port: int):
    """One line, now, if the server could not listen there (a port in use, an address this machine lacks)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as e:
        raise NanoaudioError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def main(argv=None):
    args = parse_args(argv)
    require_extra()
    import uvicorn

    from nanoaudio.load import parse_dtype
    from nanoaudio.model import ASRModel

    check_device(args.device)
    check_address(args.host, args.port)  # before the model loads, not after
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED
    model = ASRModel.load(ckpt, dtype=parse_dtype(args.dtype), device=args.device)
    model_id = args.name or ckpt.resolve().name
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"nanoaudio.serve: listening on {args.host}: anyone who reaches this port can use the model "
              "(there is no authentication)", file=sys.stderr)
    app = make_app(model, model_id, args.max_upload_mb, args.max_seconds, args.beams)
    print(f"nanoaudio.serve: model {model_id!r} on http://{args.host}:{args.port}/ (the page) and "
          f"http://{args.host}:{args.port}/v1 (OpenAI's API)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_cli(main)
