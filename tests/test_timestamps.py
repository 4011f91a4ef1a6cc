"""Word timestamps and the no-speech guard through the library's decoding path, on the bundled tiny model.

    python -m pytest -q tests/test_timestamps.py

Ground truth: espeak-ng's own word events (synth.speak_words). The full measurement, on held-out sentences and a
long file, is `python tests/bench/measure_words.py timestamps --seeds 700 60`; this is a small version of it.
"""

import dataclasses
import random

import pytest
import torch

pytest.importorskip("espeakng_loader")

from nanoaudio import synth  # noqa: E402
from nanoaudio.audio import SAMPLE_RATE  # noqa: E402
from nanoaudio.decoding import (MIN_WORD_PROBABILITY, NO_SPEECH_THRESHOLD, DecodingOptions, Result, Word,  # noqa: E402
                                stitch, transcribe, transcribe_full)
from nanoaudio.text import normalize_text  # noqa: E402

SENTENCES = [  # (text, voice, rate, pitch, leading silence in seconds)
    ("the old man saw three birds", "en-us", 160, 50, 0.4),
    ("seven two nine four", "en+m3", 180, 45, 1.1),
    ("she gave me one small book", "en-gb-x-rp", 150, 60, 0.7),
]
MAX_MEDIAN_ERROR = 0.05  # s; measured on 60 held-out sentences: 11 ms (target 30 ms), 100 % within 100 ms


@pytest.fixture(scope="module")
def bundled():
    from nanoaudio.model import ASRModel
    from nanoaudio.tiny import BUNDLED

    return ASRModel.load(BUNDLED)


@pytest.fixture(scope="module")
def sentences():
    out = []
    for text, voice, rate, pitch, lead in SENTENCES:
        wave, events = synth.speak_words(text, voice, rate, pitch)
        wave = torch.cat([torch.zeros(int(lead * SAMPLE_RATE)), wave, torch.zeros(int(0.3 * SAMPLE_RATE))])
        out.append((wave, text, [(w, lead + t) for w, t in events]))
    return out


def test_speak_words_gives_espeaks_word_starts_beside_the_audio():
    wave, events = synth.speak_words("three one of the four")
    assert abs(len(wave) - len(synth.speak("three one of the four"))) < 0.05 * SAMPLE_RATE  # speak()'s audio
    words = [w for w, _ in events]
    assert words[:2] == ["three", "one"] and "four" in words and words.count("the") <= 1  # "of the": one event
    starts = [t for _, t in events]
    assert starts == sorted(starts) and starts[0] == 0.0 and starts[-1] < len(wave) / SAMPLE_RATE


def test_word_starts_match_espeak_within_the_margin(bundled, sentences):
    options = DecodingOptions(beams=1, word_timestamps=True)
    results = transcribe_full(bundled, [w for w, _, _ in sentences], options)
    errors = []
    for (wave, text, truth), r in zip(sentences, results):
        assert isinstance(r, Result) and r.duration == len(wave) / SAMPLE_RATE
        assert [w.word for w in r.words] == r.text.split()
        assert all(0 <= w.start <= w.end <= r.duration and 0 < w.probability <= 1 for w in r.words)
        assert [w.start for w in r.words] == sorted(w.start for w in r.words)
        hyp = [normalize_text(w.word) for w in r.words]
        for word, t in truth:  # the words it got right (each occurs once in these sentences)
            if hyp.count(word) == 1:
                errors.append(r.words[hyp.index(word)].start - t)
        # nothing in the leading silence (greedy adds a word in sentence 2's 1.1 s: the word guard drops it)
        assert r.words[0].start >= SENTENCES[results.index(r)][4] - 0.1
    assert len(errors) >= 10
    errors = sorted(abs(e) for e in errors)
    assert errors[len(errors) // 2] <= MAX_MEDIAN_ERROR and errors[-1] <= 0.15, errors


def test_transcribe_is_the_text_of_transcribe_full(bundled, sentences):
    waves = [w for w, _, _ in sentences]
    plain = transcribe_full(bundled, waves, DecodingOptions(beams=1))
    timed = transcribe_full(bundled, waves, DecodingOptions(beams=1, word_timestamps=True))
    assert [r.text for r in plain] == [r.text for r in timed] == transcribe(bundled, waves, DecodingOptions(beams=1))
    assert all(r.words is None and r.segments[0].words is None for r in plain)
    assert all(0 <= s.no_speech_prob <= 1 for r in plain for s in r.segments)
    # the library's word_timestamps=True, as the server asks for it
    assert bundled.transcribe(waves[:1], beams=1, word_timestamps=True) == [timed[0].text]


def test_long_audio_keeps_the_times_of_the_words_it_keeps(bundled, sentences):
    wave = torch.cat([w for w, _, _ in sentences] * 2)  # ~14 s: several 4 s windows
    r = transcribe_full(bundled, [wave], DecodingOptions(beams=1, word_timestamps=True))[0]
    assert len(r.segments) >= 3
    assert [w.word for w in r.words] == r.text.split()
    starts = [w.start for w in r.words]
    assert all(b > a - 0.1 for a, b in zip(starts, starts[1:]))  # in order across the seams
    kept = {(w.word, w.start) for s in r.segments for w in s.words}
    assert all((w.word, w.start) in kept for w in r.words)  # each a word of some window, with that window's times
    assert r.words[-1].end <= r.duration


def test_stitch_carries_word_times():
    a = [Word("one", 0.1, 0.3, 0.9), Word("two", 0.4, 0.6, 0.9), Word("three", 3.5, 3.9, 0.9)]
    b = [Word("two", 0.41, 0.6, 0.8), Word("three", 3.52, 3.9, 0.8), Word("four", 4.2, 4.5, 0.8)]
    assert stitch([a, b]) == a[:2] + b[1:]  # the run "two three" cut in its middle: times from either side
    assert stitch(["one two three", "two three four"]) == "one two three four"


def test_without_a_ctc_head_words_get_their_windows_times(bundled, sentences):
    head = bundled.encoder.lm_head
    try:
        bundled.encoder.lm_head = None  # as a Whisper encoder
        r = transcribe_full(bundled, [sentences[1][0]], DecodingOptions(beams=1, word_timestamps=True))[0]
    finally:
        bundled.encoder.lm_head = head
    seg = r.segments[0]
    assert seg.aligned is False and seg.no_speech_prob is None
    assert r.words[0].start == seg.start and r.words[-1].end == pytest.approx(seg.end, abs=1e-3)
    assert all(w.probability == 0.0 for w in r.words)


def test_non_speech_clips_are_deterministic_and_at_their_level():
    for kind in synth.NON_SPEECH_KINDS:
        x = synth.non_speech(kind, 1.5, seed=123, level_db=-30.0)
        if kind != "scrambled":  # espeak-ng's own jitter moves the speech it scrambles (see synth's docstring)
            assert torch.equal(x, synth.non_speech(kind, 1.5, seed=123, level_db=-30.0)), kind
        assert len(x) == int(1.5 * SAMPLE_RATE) and x.abs().max() <= 1
        if kind != "clicks":  # clicks are clipped: their RMS is not exact
            assert 20 * torch.log10(x.pow(2).mean().sqrt()) == pytest.approx(-30.0, abs=0.1), kind
    a, how = synth.random_non_speech(6, mix=2)
    assert how == synth.random_non_speech(6, mix=2)[1] and len(how["kinds"]) == 2
    speech = synth.speak("three one four")
    wave, how = synth.surrounded(speech, seed=9)
    assert 2.0 <= how["before_s"] <= 4.0 and len(wave) > len(speech) + 4 * SAMPLE_RATE


def test_the_guards_drop_only_what_the_ctc_head_did_not_hear(bundled, sentences):
    rng = random.Random(4242)  # seeds the dev set never used (it used 1000-1239)
    clips = [synth.non_speech(k, 3.0, rng.getrandbits(31), -20.0) for k in ("white", "pink", "hum", "notes")]
    clips.append(sentences[1][0])  # 1.1 s of silence, then "seven two nine four"
    clips.append(synth.surrounded(sentences[0][0], seed=4243)[0])  # 2-4 s of noise or music on both sides
    off = DecodingOptions(beams=1, word_timestamps=True, no_speech_threshold=None, min_word_probability=None)
    results_off = transcribe_full(bundled, clips, off)
    # trained on non-speech with the empty transcript (issue 27): nothing on noise and music, even unguarded
    assert [r.text for r in results_off[:4]] == [""] * 4
    on = DecodingOptions(beams=1, word_timestamps=True)  # the defaults: both guards
    assert (on.no_speech_threshold, on.min_word_probability) == (NO_SPEECH_THRESHOLD, MIN_WORD_PROBABILITY)
    strict = dataclasses.replace(on, no_speech_threshold=0.5, min_word_probability=0.9)  # to see them act
    for options in (on, strict):
        results = transcribe_full(bundled, clips, options)
        for r_off, r in zip(results_off, results):  # the same decoding, then each window's words judged alone
            for s_off, s in zip(r_off.segments, r.segments):
                assert s_off.no_speech_prob == s.no_speech_prob
                if s_off.no_speech_prob > options.no_speech_threshold:
                    assert s.text == "" and s.words == []
                    continue
                heard = [w for w in s_off.words if w.probability >= options.min_word_probability]
                assert s.words == heard and s.text == " ".join(w.word for w in heard)
            assert len(r.text.split()) <= len(r_off.text.split())
        if options is on:
            assert normalize_text(results[4].text) == "seven two nine four"
    words_off, words_strict = (sum(len(r.text.split()) for r in rs) for rs in (results_off, results))
    assert words_strict < words_off, (words_strict, words_off)


def test_a_whisper_encoder_gets_window_times_and_the_cli_says_so(tmp_path):
    # an untrained tiny-whisper checkpoint: no CTC head, so no alignment and no no-speech score; one line says so
    import argparse
    import json

    import soundfile as sf
    from test_sample import run

    from nanoaudio.tiny import build_tiny

    torch.manual_seed(0)
    build_tiny(argparse.Namespace(encoder="tiny-whisper", projector="linear", stack=5, ctc_weight=0.0), "cpu"
               ).save(tmp_path / "whisper")
    sf.write(tmp_path / "a.wav", synth.speak("three one four").numpy(), SAMPLE_RATE)
    code, out, err = run(tmp_path / "a.wav", "--checkpoint", tmp_path / "whisper", "--max-new-tokens", "3",
                         "--beams", "1", "--word-timestamps", "--format", "json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "no CTC head" in line]
    assert len(notes) == 1 and "segment-level" in notes[0]
    record = json.loads(out)
    assert record["segments"][0]["no_speech_prob"] is None
    assert [w["word"] for w in record["words"]] == record["text"].split()
    assert all(w["probability"] == 0.0 and 0 <= w["start"] <= w["end"] <= record["audio_seconds"] + 1e-3
               for w in record["words"])


def test_the_cli_json_words_are_the_librarys(bundled, sentences, tmp_path):
    import json

    import soundfile as sf
    from test_sample import run

    wave = sentences[0][0]
    sf.write(tmp_path / "s.wav", wave.numpy(), SAMPLE_RATE)
    code, out, err = run(tmp_path / "s.wav", "--json", "--word-timestamps", "--beams", "1")
    assert code == 0, err
    record = json.loads(out)
    r = transcribe_full(bundled, [tmp_path / "s.wav"], DecodingOptions(beams=1, word_timestamps=True))[0]
    assert record["text"] == r.text and record["audio_seconds"] == round(r.duration, 3)
    assert record["words"] == [dataclasses.asdict(w) for w in r.words]
    assert [s["no_speech_prob"] for s in record["segments"]] == [s.no_speech_prob for s in r.segments]
    code, out, err = run(tmp_path / "s.wav", "--json", "--beams", "1")
    assert "words" not in json.loads(out)  # only when asked
