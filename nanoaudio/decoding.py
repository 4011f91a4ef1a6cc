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

Beside the text, from the encoder's CTC head (the same encoder pass, `ASRModel.generate_ids(ctc_out=)`):
- a no-speech score per window (the mean blank probability, like whisper's no_speech_prob): above
  `options.no_speech_threshold` the window's transcript is empty; and each word's own score from the alignment:
  below `options.min_word_probability` the word is dropped, as one the decoder invented (noise, music, silence);
- with `options.word_timestamps`, each word's start and end by CTC forced alignment (nanoaudio/align.py), kept
  through the stitching. An encoder without a CTC head (Whisper) gives each word its window's times, spread
  by length, and `Segment.aligned` False says so.
`transcribe_full` returns all of it (`Result`: text, segments, words, duration); `transcribe` only the texts.

`DecodingOptions` holds every choice, like whisper's: the one place their defaults live. References: openai/whisper
(decoding.py's DecodingOptions, transcribe.py's long-form loop); Watanabe et al. 2017 (joint CTC/attention).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE

BEAMS = 8  # the default decoding: on the bundled model's held-out sentences 6.1 % WER against greedy's 9.5 % (README)
CTC_RESCORE = 0.5  # how much the CTC head counts in ranking the beams: flat from 0.3 to 0.7 on the dev set
OVERLAP_SECONDS = 2.0  # audio shared by consecutive windows: a few words, so that some are whole on both sides
OVERLAP_FRACTION = 0.3  # ... but at most this fraction of a short window (the tiny model's is 4 s)
MIN_WINDOW_SECONDS = 0.5  # shorter windows hold no word, and their overlap no seam to stitch
# Two guards against words where nobody speaks, both read from the encoder's CTC head (a decoder never trained on
# non-speech invents fluent words in noise). Chosen on dev clips with
# `python tests/bench/measure_words.py no-speech --seeds 1000 48` (seeds 1000-1239, never the tests'), 8 beams;
# each row: non-speech clips left empty, words invented on them, WER of speech with 2-4 s of noise or music
# around it, WER of held-out digit strings and sentences (48 each). The model bundled before issue 27's data:
#     guards off                     7/48   352 words   187 %   1.09 %   8.41 %
#     window > 0.88 only            13/48   329         171 %   1.09 %   8.41 %
#     words < 0.3 only              26/48   126          66 %   1.09 %   8.41 %
#     both (the defaults)           26/48   126          64 %   1.09 %   8.41 %
#     words < 0.5, window > 0.88    32/48    48          42 %   1.09 %  10.43 %   (costs clean sentences)
# The bundled model, trained with non-speech clips, leaves them all empty by itself; the guards still remove
# words it writes in the noise around speech:
#     guards off                    48/48     0          23.4 %  0.36 %   8.12 %
#     window > 0.88 only            48/48     0          20.4 %  0.36 %   8.12 %
#     both (the defaults)           48/48     0          17.8 %  0.36 %   8.12 %
#     words < 0.5, window > 0.88    48/48     0          19.4 %  0.72 %   9.57 %
# A window's transcript is dropped when its mean blank probability is above NO_SPEECH_THRESHOLD. It sits above
# clean speech's maximum (median 0.42, max 0.65), where it costs nothing; the old model's head fired on noise
# too (non-speech windows: median 0.70, min 0.40), the bundled one's does not (median 1.00, min 0.99).
NO_SPEECH_THRESHOLD = 0.88
# A word is dropped when the aligned path gives its characters a mean probability below MIN_WORD_PROBABILITY
# (align.word_times): the decoder wrote it, the frame-level head did not hear it. 0.3 is the highest value that
# left the dev speech WERs unchanged (0.4: sentences +0.3 points, 0.5: +2.0).
MIN_WORD_PROBABILITY = 0.3


@dataclass(frozen=True)
class DecodingOptions:
    beams: int = BEAMS  # 1: greedy (batched, streamable); more: a beam search per window
    ctc_rescore: float = CTC_RESCORE  # beams ranked by (1-w) log p_decoder + w log p_CTC (0: the decoder alone)
    max_new_tokens: int = 128  # longest transcript of one window, in tokens
    window: float | None = None  # seconds per window (None: the model's config.window_seconds)
    batch_size: int = 8  # windows decoded together (padding masks keep results identical to one at a time)
    word_timestamps: bool = False  # align each word to the audio (Segment.words, Result.words)
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD  # drop a window's words above it (None: off)
    min_word_probability: float | None = MIN_WORD_PROBABILITY  # drop aligned words below it (None: off)

    def __post_init__(self):
        checks = [("beams", self.beams >= 1, ">= 1"), ("ctc_rescore", 0 <= self.ctc_rescore <= 1, "in [0, 1]"),
                  ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("window", self.window is None or self.window >= MIN_WINDOW_SECONDS, f">= {MIN_WINDOW_SECONDS} s"),
                  ("no_speech_threshold", self.no_speech_threshold is None or 0 <= self.no_speech_threshold <= 1,
                   "in [0, 1] or None"), ("min_word_probability", self.min_word_probability is None
                                          or 0 <= self.min_word_probability <= 1, "in [0, 1] or None")]
        for name, ok, rule in checks:
            if not ok:
                raise NanoaudioError(f"DecodingOptions: {name} must be {rule}, got {getattr(self, name)}")

    def describe(self) -> str:
        """In words, for logs and --trace: 'greedy' or '8 beams, CTC rescoring 0.5'."""
        return "greedy" if self.beams == 1 else f"{self.beams} beams, CTC rescoring {self.ctc_rescore:g}"


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the file
    end: float
    probability: float  # mean probability of the aligned path over the word's frames (0.0: not aligned)


@dataclass
class Segment:
    """One window's decode: where it lies in the file, and what the model wrote for it."""
    start: float  # seconds from the start of the file
    end: float
    ids: list[int]  # the transcript's token ids, without the end-of-turn token
    text: str
    words: list[Word] | None = None  # None unless options.word_timestamps
    no_speech_prob: float | None = None  # mean CTC blank probability; None when the encoder has no CTC head
    aligned: bool | None = None  # word_timestamps: True from the CTC alignment, False from the window's times


@dataclass
class Result:
    """One file's transcription."""
    text: str
    segments: list[Segment]
    words: list[Word] | None  # the stitched words with times; None unless options.word_timestamps
    duration: float  # seconds of audio


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


def decode_windows(model, waves, options: DecodingOptions, on_token=None, ctc_out=None) -> list[list[int]]:
    """1-D 16 kHz waveforms, each at most one window long -> their transcripts' token ids (no end-of-turn).

    on_token(step, tokens (B,)) streams greedy decoding (see Decoder.generate). ctc_out: a list that receives
    each window's CTC log-probabilities (F, 32), or None per window without a CTC head."""
    from nanoaudio.audio import batch_audio

    device = next(model.decoder.parameters()).device
    normalize = model.encoder.normalize_audio  # HuBERT: normalized samples; Whisper: raw
    out = []
    for i in range(0, len(waves), options.batch_size):
        wave, mask = batch_audio(waves[i:i + options.batch_size], normalize=normalize)
        out += model.generate_ids(wave.to(device), mask.to(device), options.max_new_tokens, on_token=on_token,
                                  num_beams=options.beams, ctc_weight=options.ctc_rescore, ctc_out=ctc_out)
    return out


# -----------------------------------------------------------------------------
# 3. stitch: one transcript from overlapping windows


def stitch(texts: list[str] | list[list[Word]], shares=None) -> str | list[Word]:
    """Join window transcripts, keeping the words of each overlap once: strings -> a string; lists of Words
    (or of anything with a .word) -> one list, each kept word with its own times.

    The overlap is the end of one window and the start of the next, so the two transcripts should share a run of
    words there. Of all common runs of the previous window's words and the next window's, take the longest, and
    of equally long ones the one closest to the seam (a lone common word far from it is a coincidence, not the
    overlap); cut in its middle. Nothing in common: concatenate.
    shares: per seam, (the share of the previous window, the share of the next) that the overlap covers
    (decode's window bounds give them). A run is then the overlap only where it can be: among the previous
    window's last words and the next one's first, as many as that share of their words, plus one. Without it, a
    word both windows happen to hold far from the seam (the ends of "... three five" and "... nine five") would
    be taken for the overlap and everything between dropped.
    """
    if not texts or isinstance(texts[0], str):
        return " ".join(stitch([[_Token(w) for w in t.split()] for t in texts], shares) if texts else [])
    words = list(texts[0])
    prev = len(words)
    for k, nxt in enumerate(texts[1:]):
        tail = words[len(words) - prev:]  # the previous window's words: the overlap is inside them
        share_prev, share_next = shares[k] if shares is not None else (1.0, 1.0)
        last = math.ceil(share_prev * len(tail)) + 1  # the overlap's words are among the previous window's last
        first = min(len(nxt), math.ceil(share_next * len(nxt)) + 1)  # ... and the next window's first
        best = None  # (run length, -distance to the seam, i, j)
        for i in range(max(0, len(tail) - last), len(tail)):
            for j in range(first):
                n = 0
                while i + n < len(tail) and j + n < first and tail[i + n].word == nxt[j + n].word:
                    n += 1
                if n:
                    key = (n, -((len(tail) - i - n) + j), i, j)
                    best = key if best is None or key[:2] > best[:2] else best
        if best is None:
            words, prev = words + list(nxt), len(nxt)
        else:
            n, _, i, j = best
            cut = (n + 1) // 2
            words = words[:len(words) - len(tail) + i + cut] + list(nxt[j + cut:])
            prev = len(nxt) - j - cut
    return words


class _Token(str):
    """A plain string word with a .word, so stitch() joins strings and Words by one loop."""
    word = property(str.__str__)


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
    log_probs = []  # per window, the CTC head's (F, 32), from the encoder pass the decoding made
    ids = iter(decode_windows(model, pieces, options, on_token, ctc_out=log_probs))
    log_probs = iter(log_probs)
    return [[window_segment(model, s / SAMPLE_RATE, e / SAMPLE_RATE, next(ids), next(log_probs), options)
             for s, e in b] for b in bounds]


def window_segment(model, start, end, ids, log_probs, options) -> Segment:
    """One decoded window -> its Segment: the no-speech score and the two guards, then (if asked) word times."""
    from nanoaudio.align import no_speech_prob, word_times
    from nanoaudio.text import normalize_text

    seg = Segment(start, end, ids, model.tokenizer.decode(ids).strip())
    if log_probs is not None:
        seg.no_speech_prob = round(no_speech_prob(log_probs), 4)
        if options.no_speech_threshold is not None and seg.no_speech_prob > options.no_speech_threshold:
            seg.ids, seg.text = [], ""  # nobody speaks here: whatever the decoder wrote is invented
    if not options.word_timestamps and options.min_word_probability is None:
        return seg
    hop = model.encoder.config.hop_length  # samples per encoder frame (320: 50 frames/s)
    times = word_times(log_probs, seg.text, start, hop) if log_probs is not None else None
    if times is not None and options.min_word_probability is not None:
        heard = [t for t in times if t[3] >= options.min_word_probability or not normalize_text(t[0])]
        if len(heard) < len(times):  # words the CTC head did not hear: invented by the decoder
            times, seg.text = heard, " ".join(t[0] for t in heard)
            seg.ids = model.tokenizer.encode(seg.text) if heard else []
    if options.word_timestamps:
        seg.aligned = times is not None
        seg.words = [Word(*t) for t in times] if times is not None else spread(seg.text.split(), start, end)
    return seg


def spread(words: list[str], start: float, end: float) -> list[Word]:
    """No alignment (no CTC head, or no path): words share the window's time in proportion to their length."""
    total, t, out = sum(len(w) + 1 for w in words), start, []
    for w in words:
        d = (end - start) * (len(w) + 1) / total
        out.append(Word(w, round(t, 3), round(t + d, 3), 0.0))
        t += d
    return out


def transcribe_full(model, audio, options: DecodingOptions = DecodingOptions(), on_token=None) -> list[Result]:
    """Paths or 1-D 16 kHz waveforms -> per file, a Result: the stitched text, the windows' Segments, the
    stitched words with their times (options.word_timestamps) and the audio's length in seconds."""
    waves = [as_waveform(a) for a in audio]
    results = []
    for wave, segments in zip(waves, decode(model, waves, options, on_token)):
        shares = [((a.end - b.start) / (a.end - a.start), (a.end - b.start) / (b.end - b.start))
                  for a, b in zip(segments, segments[1:])]  # what each overlap covers of its two windows
        words = stitch([s.words for s in segments], shares) if options.word_timestamps else None
        results.append(Result(stitch([s.text for s in segments], shares), segments, words, len(wave) / SAMPLE_RATE))
    return results


def transcribe(model, audio, options: DecodingOptions = DecodingOptions(), on_token=None) -> list[str]:
    """Paths or 1-D 16 kHz waveforms -> their transcripts: windows cut in pauses, decoded, stitched."""
    return [r.text for r in transcribe_full(model, audio, options, on_token)]


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
