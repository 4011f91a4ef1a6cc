"""Measure word timestamps and the no-speech guard on synthesized audio (issue 27's targets).

    python tests/bench/measure_words.py timestamps --seeds 500 30     # dev: the lag that align.CTC_LAG_SECONDS corrects
    python tests/bench/measure_words.py timestamps --seeds 700 60     # held out: median |start error|, share within 100 ms
    python tests/bench/measure_words.py no-speech --seeds 1000 48     # dev: the blank-probability threshold
    python tests/bench/measure_words.py no-speech --seeds 3000 24 --mix test   # held out: the issue's targets
    python tests/bench/measure_words.py speech --seeds 5000 200       # held out: what the guards cost on clean speech

Ground truth for timestamps: espeak-ng's own WORD events (synth.speak_words). Each sentence gets 0.3-1.5 s of
leading silence; only the words the model got right are measured (matched by an edit-distance alignment of the
transcript to the text). The long-file measurement strings sentences together with pauses, through the windows
and the stitching.
"""

import argparse
import difflib
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from nanoaudio import synth  # noqa: E402
from nanoaudio.audio import SAMPLE_RATE  # noqa: E402
from nanoaudio.decoding import DecodingOptions, transcribe_full  # noqa: E402
from nanoaudio.text import normalize_text, wer  # noqa: E402


def timed_sentence(seed: int, lead=(0.3, 1.5)):
    """A random sentence of the tiny vocabulary, a random voice, 0.3-1.5 s of silence before it and 0.3 s after
    -> (waveform, text, [(word index, true start seconds)])."""
    rng = random.Random(seed)
    text = synth.random_text(rng, "sentences", synth.vocabulary())
    voice, rate, pitch = rng.choice(synth.voices()), rng.randint(*synth.RATE_WPM), rng.randint(*synth.PITCH)
    wave, events = synth.speak_words(text, voice, rate, pitch)
    pad = rng.uniform(*lead)
    wave = torch.cat([torch.zeros(int(pad * SAMPLE_RATE)), wave, torch.zeros(int(0.3 * SAMPLE_RATE))])
    return wave, text, true_starts(text, events, pad)


def true_starts(text, events, offset):
    """espeak-ng's (word, seconds) events in order -> [(index of the word in text.split(), offset + seconds)]."""
    words, out, i = text.split(), [], 0
    for w, t in events:
        while i < len(words) and words[i] != w:
            i += 1
        if i < len(words):
            out.append((i, offset + t))
            i += 1
    return out


def start_errors(words, text, truth):
    """Hypothesis Words, reference text and its true starts -> [predicted - true start] for the words the model
    got right (equal runs of an edit-distance alignment)."""
    ref, hyp = text.split(), [normalize_text(w.word) for w in words]
    truth, errors = dict(truth), []
    for a, b, n in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_matching_blocks():
        errors += [words[b + k].start - truth[a + k] for k in range(n) if a + k in truth]
    return errors


def report(errors, label):
    a = [abs(e) for e in errors]
    print(f"{label}: {len(errors)} words, signed error median {1000 * statistics.median(errors):+.0f} ms, "
          f"mean {1000 * statistics.mean(errors):+.0f} ms; |error| median {1000 * statistics.median(a):.0f} ms, "
          f"within 50 ms {100 * sum(x <= 0.05 for x in a) / len(a):.1f} %, "
          f"within 100 ms {100 * sum(x <= 0.1 for x in a) / len(a):.1f} %")


def timestamps(model, first, n, options):
    clips = [timed_sentence(s) for s in range(first, first + n)]
    t0 = time.time()
    results = transcribe_full(model, [c[0] for c in clips], options)
    errors = [e for (_, text, truth), r in zip(clips, results) for e in start_errors(r.words, text, truth)]
    print(f"WER {100 * wer([c[1] for c in clips], [normalize_text(r.text) for r in results]):.2f} % on {n} "
          f"sentences ({time.time() - t0:.0f} s)")
    report(errors, f"sentences, seeds {first}-{first + n - 1}")
    # a long file: the same sentences one after another with 0.4-1.0 s pauses, through the windows and stitching
    rng, pieces, truth, text, t = random.Random(first), [], [], [], 0.0
    for wave, sentence, starts in clips:
        pieces.append(wave)
        truth += [(len(text) + i, t + s) for i, s in starts]
        text += sentence.split()
        t += len(wave) / SAMPLE_RATE
        gap = rng.uniform(0.1, 0.7)
        pieces.append(torch.zeros(int(gap * SAMPLE_RATE)))
        t += int(gap * SAMPLE_RATE) / SAMPLE_RATE
    long = torch.cat(pieces)
    r = transcribe_full(model, [long], options)[0]
    print(f"long file: {len(long) / SAMPLE_RATE:.0f} s, {len(r.segments)} windows, "
          f"WER {100 * wer([' '.join(text)], [normalize_text(r.text)]):.2f} %")
    report(start_errors(r.words, " ".join(text), truth), "long file")


# -----------------------------------------------------------------------------
# no speech: the blank-probability guard


MIXES = {  # how clips are drawn: the dev set (the threshold is chosen on it) and the held-out one (other seeds,
    # levels and mixes: two kinds summed, louder and quieter, longer speech surroundings)
    "dev": dict(mix=1, levels=synth.LEVEL_DB, seconds=(2.0, 6.0), around=(2.0, 4.0), speech_levels=(-40.0, -25.0)),
    "test": dict(mix=2, levels=(-50.0, -12.0), seconds=(3.0, 7.0), around=(2.0, 4.0), speech_levels=(-45.0, -22.0)),
}
THRESHOLDS = [0.6, 0.65, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96, None]


WORD_THRESHOLDS = [None, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]


def guarded(result, threshold, word_threshold=None):
    """A Result decoded with the guards off (and word times) -> its text as the guards would have left it: windows
    above `threshold` empty, words below `word_threshold` dropped."""
    from nanoaudio.decoding import stitch

    def kept(s):
        if threshold is not None and s.no_speech_prob > threshold:
            return ""
        return " ".join(w.word for w in s.words if word_threshold is None or w.probability >= word_threshold)

    return stitch([kept(s) for s in result.segments])


def no_speech(model, first, n, mix, beams):
    m = MIXES[mix]
    options = DecodingOptions(beams=beams, no_speech_threshold=None, min_word_probability=None,
                              word_timestamps=True)
    t0 = time.time()
    clips = [synth.random_non_speech(s, m["seconds"], levels=m["levels"], mix=m["mix"])[0]
             for s in range(first, first + n)]
    rng, words = random.Random(first), synth.vocabulary()
    speech, texts = [], []
    for s in range(n):  # speech with noise or music around it (and under it)
        text = synth.random_text(rng, "mixed", words, 0.5)
        wave, _ = synth.random_utterance(rng, text, synth.voices(), noise=0.0)
        speech.append(synth.surrounded(wave, first + n + s, around=m["around"], levels=m["speech_levels"])[0])
        texts.append(text)
    digits = synth.make_dataset(f"/tmp/nanoaudio-measure/digits-{first}", n, "digits", seed=first + 2 * n)
    sentences = synth.make_dataset(f"/tmp/nanoaudio-measure/sentences-{first}", n, "sentences", seed=first + 3 * n)
    held = {}
    for name, manifest in (("digits", digits), ("sentences", sentences)):
        import json

        rows = [json.loads(line) for line in open(manifest)]
        held[name] = ([manifest.parent / r["audio"] for r in rows], [r["text"] for r in rows])
    print(f"made {n} non-speech clips, {n} surrounded utterances ({time.time() - t0:.0f} s)")
    t0 = time.time()
    r_non = transcribe_full(model, clips, options)
    r_sp = transcribe_full(model, speech, options)
    r_held = {k: transcribe_full(model, a, options) for k, (a, _) in held.items()}
    print(f"decoded ({options.describe()}, {time.time() - t0:.0f} s)")
    ns = sorted(s.no_speech_prob for r in r_non for s in r.segments)
    sp = sorted(s.no_speech_prob for k in r_held for r in r_held[k] for s in r.segments)
    q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]  # noqa: E731
    print(f"no_speech_prob of non-speech windows: min {ns[0]:.3f} 10% {q(ns, .1):.3f} median {q(ns, .5):.3f}; "
          f"of clean speech (held-out digits and sentences): median {q(sp, .5):.3f} 90% {q(sp, .9):.3f} "
          f"max {sp[-1]:.3f}")
    print("window  word   non-speech empty  invented words  surrounded WER  digits WER  sentences WER")
    for wth in WORD_THRESHOLDS:
        for th in THRESHOLDS:
            empty = sum(not guarded(r, th, wth).split() for r in r_non)
            invented = sum(len(guarded(r, th, wth).split()) for r in r_non)
            sur = wer(texts, [normalize_text(guarded(r, th, wth)) for r in r_sp])
            dw, sw = (wer(held[k][1], [normalize_text(guarded(r, th, wth)) for r in r_held[k]])
                      for k in ("digits", "sentences"))
            print(f"{str(th):>6}  {str(wth):>4}  {empty:3d}/{n} {100 * empty / n:5.1f} %  {invented:14d}  "
                  f"{100 * sur:13.2f} %  {100 * dw:9.2f} %  {100 * sw:12.2f} %", flush=True)


def speech(model, first, n, beams):
    """The guards' cost on clean held-out speech: n digit strings and n sentences, WER with the guards off and at
    the defaults (decoded once, the guards applied after, as guarded() does)."""
    import json

    from nanoaudio.decoding import MIN_WORD_PROBABILITY, NO_SPEECH_THRESHOLD

    options = DecodingOptions(beams=beams, no_speech_threshold=None, min_word_probability=None, word_timestamps=True)
    for kind, seed in (("digits", first), ("sentences", first + 1)):
        manifest = synth.make_dataset(f"/tmp/nanoaudio-measure/{kind}-{seed}-{n}", n, kind, seed=seed)
        rows = [json.loads(line) for line in open(manifest)]
        t0 = time.time()
        results = transcribe_full(model, [manifest.parent / r["audio"] for r in rows], options)
        refs = [r["text"] for r in rows]
        off = wer(refs, [normalize_text(r.text) for r in results])
        on = wer(refs, [normalize_text(guarded(r, NO_SPEECH_THRESHOLD, MIN_WORD_PROBABILITY)) for r in results])
        print(f"{n} {kind} (seed {seed}, {options.describe()}, {time.time() - t0:.0f} s): WER {100 * off:.2f} % "
              f"guards off, {100 * on:.2f} % with the defaults", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["timestamps", "no-speech", "speech"])
    p.add_argument("--seeds", type=int, nargs=2, default=[500, 30], metavar=("FIRST", "N"))
    p.add_argument("--beams", type=int, default=8)
    p.add_argument("--no-lag", action="store_true", help="timestamps: without align.CTC_LAG_SECONDS (to measure it)")
    p.add_argument("--mix", default="dev", choices=["dev", "test"], help="no-speech: which generator mix")
    p.add_argument("--checkpoint", default=None, help="a model folder (default: the bundled model)")
    args = p.parse_args()
    from nanoaudio.model import ASRModel
    from nanoaudio.tiny import BUNDLED

    model = ASRModel.load(args.checkpoint or BUNDLED)
    if args.no_lag:
        import nanoaudio.align

        nanoaudio.align.CTC_LAG_SECONDS = 0.0
    torch.set_num_threads(2)
    options = DecodingOptions(beams=args.beams, word_timestamps=True)
    if args.what == "timestamps":
        timestamps(model, *args.seeds, options)
    elif args.what == "speech":
        speech(model, *args.seeds, args.beams)
    else:
        no_speech(model, *args.seeds, args.mix, args.beams)


if __name__ == "__main__":
    main()
