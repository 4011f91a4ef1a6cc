"""One decoding path: audio in, transcripts out. The library (`ASRModel.transcribe`), `sample.py` and train.py's
evaluation all call `transcribe` here, so one model gives one answer, whoever asks.

    from nanoaudio.decoding import DecodingOptions, transcribe
    texts = transcribe(model, ["talk.wav", waveform], DecodingOptions(beams=1))   # greedy

The path, for each file:
1. cut: audio longer than the model's window (30 s for real models, 4 s for the bundled tiny one) is cut into
   overlapping windows, each cut moved into the quietest moment near it (`window_bounds`);
2. decode: the windows of all files, batched, each decoded on its own (`decode_windows`): greedy with a KV cache,
   or a beam search whose beams the encoder's CTC head ranks again (`ASRModel.generate_ids`);
3. stitch: consecutive windows' transcripts joined where they agree (`stitch`), so no word is dropped or repeated.

`DecodingOptions` holds every choice, like whisper's: the one place their defaults live. References: openai/whisper
(decoding.py's DecodingOptions, transcribe.py's long-form loop); Watanabe et al. 2017 (joint CTC/attention).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE

BEAMS = 8  # the default decoding: on the bundled model's held-out sentences 9.1 % WER against greedy's 14.8 %
CTC_RESCORE = 0.5  # how much the CTC head counts in ranking the beams: flat from 0.3 to 0.7 on the dev set
OVERLAP_SECONDS = 2.0  # audio shared by consecutive windows: a few words, so that some are whole on both sides
OVERLAP_FRACTION = 0.3  # ... but at most this fraction of a short window (the tiny model's is 4 s)
MIN_WINDOW_SECONDS = 0.5  # shorter windows hold no word, and their overlap no seam to stitch


@dataclass(frozen=True)
class DecodingOptions:
    beams: int = BEAMS  # 1: greedy (batched, streamable); more: a beam search per window
    ctc_rescore: float = CTC_RESCORE  # beams ranked by (1-w) log p_decoder + w log p_CTC (0: the decoder alone)
    max_new_tokens: int = 128  # longest transcript of one window, in tokens
    window: float | None = None  # seconds per window (None: the model's config.window_seconds)
    batch_size: int = 8  # windows decoded together (padding masks keep results identical to one at a time)

    def __post_init__(self):
        checks = [("beams", self.beams >= 1, ">= 1"), ("ctc_rescore", 0 <= self.ctc_rescore <= 1, "in [0, 1]"),
                  ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("window", self.window is None or self.window >= MIN_WINDOW_SECONDS, f">= {MIN_WINDOW_SECONDS} s")]
        for name, ok, rule in checks:
            if not ok:
                raise NanoaudioError(f"DecodingOptions: {name} must be {rule}, got {getattr(self, name)}")

    def describe(self) -> str:
        """In words, for logs and --trace: 'greedy' or '8 beams, CTC rescoring 0.5'."""
        return "greedy" if self.beams == 1 else f"{self.beams} beams, CTC rescoring {self.ctc_rescore:g}"


@dataclass
class Segment:
    """One window's decode: where it lies in the file, and what the model wrote for it."""
    start: float  # seconds from the start of the file
    end: float
    ids: list[int]  # the transcript's token ids, without the end-of-turn token
    text: str


# -----------------------------------------------------------------------------
# 1. cut: windows ending in pauses


def quietest(wave, lo, hi, sr=SAMPLE_RATE):
    """The sample in [lo, hi) at the centre of the quietest 20 ms of audio there: the best place to cut."""
    hop = sr // 100  # 10 ms steps
    lo, hi = max(0, lo), min(len(wave), hi)
    if hi - lo < 2 * hop:
        return lo
    energy = wave[lo:hi].float().pow(2).unfold(0, 2 * hop, hop).mean(-1)  # (n,) mean power of each 20 ms
    return lo + int(energy.argmin()) * hop + hop


def window_bounds(wave, window_s, overlap_s, sr=SAMPLE_RATE):
    """[(start, end)] sample offsets of windows of at most window_s seconds, consecutive ones sharing about
    overlap_s seconds.

    A fixed grid would cut through words, and a model garbles the word it hears half of (the tiny model, trained
    on whole utterances, garbles the whole window). So each cut is moved to the quietest moment near it: a window
    ends at the quietest point of its last overlap_s / 2 seconds, and the next starts at the quietest point
    between overlap_s and overlap_s / 2 seconds before that end. Both ends of the shared audio then tend to sit in
    pauses, so the words in it are whole on both sides and stitch() finds them in both transcripts.
    """
    win, ov = int(window_s * sr), int(overlap_s * sr)
    bounds, start = [], 0
    while start + win < len(wave):
        end = quietest(wave, start + win - ov // 2, start + win, sr)
        bounds.append((start, end))
        start = max(start + 1, quietest(wave, end - ov, end - ov // 2, sr))
    return bounds + [(start, len(wave))]


def overlap_seconds(window_s: float) -> float:
    return min(OVERLAP_SECONDS, OVERLAP_FRACTION * window_s)


# -----------------------------------------------------------------------------
# 2. decode: windows in batches


def decode_windows(model, waves, options: DecodingOptions, on_token=None) -> list[list[int]]:
    """1-D 16 kHz waveforms, each at most one window long -> their transcripts' token ids (no end-of-turn).

    on_token(step, tokens (B,)) streams greedy decoding (see Decoder.generate)."""
    from nanoaudio.audio import batch_audio

    device = next(model.decoder.parameters()).device
    normalize = getattr(model.encoder, "normalize_audio", True)  # HuBERT: normalized samples; Whisper: raw
    out = []
    for i in range(0, len(waves), options.batch_size):
        wave, mask = batch_audio(waves[i:i + options.batch_size], normalize=normalize)
        out += model.generate_ids(wave.to(device), mask.to(device), options.max_new_tokens, on_token=on_token,
                                  num_beams=options.beams, ctc_weight=options.ctc_rescore)
    return out


# -----------------------------------------------------------------------------
# 3. stitch: one transcript from overlapping windows


def stitch(texts: list[str]) -> str:
    """Join window transcripts, keeping the words of each overlap once.

    The overlap is the end of one window and the start of the next, so the two transcripts should share a run of
    words there. Of all common runs of the previous window's words and the next window's, take the longest, and
    of equally long ones the one closest to the seam (a lone common word far from it is a coincidence, not the
    overlap); cut in its middle. Nothing in common: concatenate.
    """
    words = texts[0].split() if texts else []
    prev = len(words)
    for text in texts[1:]:
        nxt = text.split()
        tail = words[len(words) - prev:]  # the previous window's words: the overlap is inside them
        best = None  # (run length, -distance to the seam, i, j)
        for i in range(len(tail)):
            for j in range(len(nxt)):
                n = 0
                while i + n < len(tail) and j + n < len(nxt) and tail[i + n] == nxt[j + n]:
                    n += 1
                if n:
                    key = (n, -((len(tail) - i - n) + j), i, j)
                    best = key if best is None or key[:2] > best[:2] else best
        if best is None:
            words, prev = words + nxt, len(nxt)
        else:
            n, _, i, j = best
            cut = (n + 1) // 2
            words = words[:len(words) - len(tail) + i + cut] + nxt[j + cut:]
            prev = len(nxt) - j - cut
    return " ".join(words)


# -----------------------------------------------------------------------------
# the whole path


def as_waveform(item, name=None) -> torch.Tensor:
    """A path or a 1-D waveform (16 kHz, float) -> (S,) float32."""
    from nanoaudio.audio import load_audio

    if isinstance(item, (str, Path)):
        return load_audio(item)
    wave = torch.as_tensor(item, dtype=torch.float32)
    if wave.ndim != 1:
        raise NanoaudioError(f"{name or 'waveform'}: expected a 1-D 16 kHz waveform, got shape {tuple(wave.shape)}")
    return wave


def check_window(model, window_s: float, max_new_tokens: int):
    """A window's prompt (audio tokens + text) plus its transcript must fit in the decoder's positions."""
    from nanoaudio.model import build_prompt
    from nanoaudio.projector import num_tokens

    n_audio = num_tokens(model.encoder.config.num_frames(int(window_s * SAMPLE_RATE)), model.projector.config.stack)
    n_text = len(build_prompt(model.tokenizer, model.family, 0, None, model.config.instruction)[0])
    limit = model.decoder.config.max_position_embeddings
    if n_audio + n_text + max_new_tokens > limit:
        longest = (limit - n_text - max_new_tokens) / (n_audio / window_s)
        raise NanoaudioError(f"window of {window_s:g} s: {n_audio} audio + {n_text} prompt + {max_new_tokens} new "
                             f"tokens exceed the decoder's {limit} positions (the longest window: {longest:.1f} s)")


def decode(model, waves, options: DecodingOptions = DecodingOptions(), on_token=None) -> list[list[Segment]]:
    """1-D 16 kHz waveforms -> per waveform, its windows' Segments (one when it fits in the model's window)."""
    window_s = options.window or model.config.window_seconds
    check_window(model, window_s, options.max_new_tokens)
    bounds = [window_bounds(w, window_s, overlap_seconds(window_s)) for w in waves]
    pieces = [w[s:e] for w, b in zip(waves, bounds) for s, e in b]
    ids = iter(decode_windows(model, pieces, options, on_token))
    return [[Segment(s / SAMPLE_RATE, e / SAMPLE_RATE, (row := next(ids)), model.tokenizer.decode(row).strip())
             for s, e in b] for b in bounds]


def transcribe(model, audio, options: DecodingOptions = DecodingOptions(), on_token=None) -> list[str]:
    """Paths or 1-D 16 kHz waveforms -> their transcripts: windows cut in pauses, decoded, stitched."""
    waves = [as_waveform(a) for a in audio]
    return [stitch([s.text for s in segments]) for segments in decode(model, waves, options, on_token)]


def evaluate(model, examples, options: DecodingOptions = DecodingOptions()):
    """Labeled examples (data.Example: .audio, .text) -> (WER, [(reference, hypothesis), ...]), both normalized.
    sample.py --eval and train.py's evaluation both measure through here."""
    from nanoaudio.text import normalize_text, wer

    was_training = model.training
    model.eval()
    hyps = transcribe(model, [ex.audio for ex in examples], options)
    model.train(was_training)
    refs, hyps = [normalize_text(ex.text) for ex in examples], [normalize_text(h) for h in hyps]
    return wer(refs, hyps), list(zip(refs, hyps))
