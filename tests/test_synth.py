"""Synthetic speech: espeak-ng through ctypes, deterministic by seed, written in the JSONL layout nanoaudio reads."""

import json
import random
import subprocess
import sys

import pytest
import soundfile as sf
import torch

pytest.importorskip("espeakng_loader")

from nanoaudio import NanoaudioError, synth  # noqa: E402
from nanoaudio.audio import SAMPLE_RATE, load_audio  # noqa: E402


def test_speak_gives_16khz_speech_whose_length_follows_the_text():
    short, long = synth.speak("one"), synth.speak("one two three four five six seven")
    assert short.dtype == torch.float32 and short.ndim == 1
    assert 0.2 * SAMPLE_RATE < len(short) < len(long) < 6 * SAMPLE_RATE
    assert 0.01 < long.abs().max() <= 1.0


def test_rate_and_voice_change_the_audio():
    base = synth.speak("three one four", "en-us", 175, 50)
    assert len(synth.speak("three one four", "en-us", 120, 50)) > len(base) * 1.2  # slower speech is longer
    other = synth.speak("three one four", "en-us+f3", 175, 50)
    assert len(other) != len(base) or not torch.equal(other, base)
    assert len(synth.voices()) > 100 and "en-us+f3" in synth.voices()


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(NanoaudioError, match="no voice 'xx-nope'"):
        synth.speak("hi", "xx-nope")


def test_datasets_are_deterministic_by_seed_and_respect_exclude(tmp_path):
    a = synth.make_dataset(tmp_path / "a", 6, kind="mixed", seed=3)
    b = synth.make_dataset(tmp_path / "b", 6, kind="mixed", seed=3)
    rows_a = [json.loads(line) for line in open(a)]
    rows_b = [json.loads(line) for line in open(b)]
    # same texts, voices, rates, pitches, noise; durations equal up to espeak-ng's jitter (see synth's docstring)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows_a] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert abs(ra["seconds"] - rb["seconds"]) < 0.05
        wa = load_audio(a.parent / ra["audio"])
        assert abs(len(wa) / SAMPLE_RATE - ra["seconds"]) < 1e-3
        assert ra["voice"] in synth.voices() and synth.RATE_WPM[0] <= ra["rate"] <= synth.RATE_WPM[1]
    c = synth.make_dataset(tmp_path / "c", 6, kind="mixed", seed=4)
    assert [json.loads(line)["text"] for line in open(c)] != [r["text"] for r in rows_a]
    digits = synth.make_dataset(tmp_path / "d", 30, kind="digits", seed=3, exclude=a)
    texts = [json.loads(line)["text"] for line in open(digits)]
    assert not set(texts) & {r["text"] for r in rows_a}
    assert all(set(t.split()) <= set(synth.DIGITS) for t in texts)
    assert not (tmp_path / "d.tmp").exists()  # written to a temporary folder, then renamed


def test_mixed_datasets_hold_the_asked_share_of_sentences(tmp_path):
    def kinds(share, n):
        manifest = synth.make_dataset(tmp_path / f"m{share}", n, seed=5, noise=0.0, sentences=share)
        rows = map(json.loads, open(manifest))
        return ["digits" if set(r["text"].split()) <= set(synth.DIGITS) else "sentences" for r in rows]

    assert set(kinds(0.0, 6)) == {"digits"} and set(kinds(1.0, 6)) == {"sentences"}
    # the texts alone (no speech), enough of them to see the share
    rng, words = random.Random(0), synth.vocabulary()
    drawn = [synth.random_text(rng, "mixed", words, sentences=0.75) for _ in range(2000)]
    share = sum(not set(t.split()) <= set(synth.DIGITS) for t in drawn) / len(drawn)
    assert abs(share - 0.75) < 0.03  # 3 standard deviations of a binomial share over 2000 draws is 0.029
    with pytest.raises(NanoaudioError, match="sentences"):
        synth.make_dataset(tmp_path / "bad", 2, sentences=1.5)


def test_sentences_use_the_preset_vocabulary(tmp_path):
    m = synth.make_dataset(tmp_path / "s", 5, kind="sentences", seed=1, noise=1.0)
    vocab = set(synth.vocabulary())
    for row in map(json.loads, open(m)):
        assert set(row["text"].split()) <= vocab
        assert sf.info(str(m.parent / row["audio"])).samplerate == SAMPLE_RATE


def test_pauses_split_an_utterance_into_phrases_with_silence_between(tmp_path):
    m = synth.make_dataset(tmp_path / "p", 8, kind="sentences", seed=2, noise=0.0, pauses=1.0)
    for row in map(json.loads, open(m)):
        lead, *between, trail = row["pauses_s"]
        assert 1 <= len(between) <= 2 and len(between) < len(row["text"].split())
        assert all(synth.PAUSE_SECONDS[0] <= g <= synth.PAUSE_SECONDS[1] for g in between)
        wave = load_audio(m.parent / row["audio"])
        # the silences are really there: digital zeros at both ends and a run of them at least as long as a pause
        assert not wave[:int(lead * SAMPLE_RATE)].any()
        assert not wave[len(wave) - int(trail * SAMPLE_RATE):].any()
        sounding = wave[int(lead * SAMPLE_RATE):len(wave) - int(trail * SAMPLE_RATE)].nonzero().flatten()
        longest = sounding.diff().max().item() - 1  # the longest run of zeros between two sounding samples
        assert longest >= int(min(between) * SAMPLE_RATE)
    plain = synth.make_dataset(tmp_path / "q", 8, kind="sentences", seed=2, noise=0.0)
    assert not any("pauses_s" in json.loads(line) for line in open(plain))  # pauses=0: one phrase each
    r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "--dataset", str(tmp_path / "cli"), "-n", "2",
                        "--kind", "digits", "--pauses", "1.0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert all("pauses_s" in json.loads(line) for line in open(tmp_path / "cli" / "manifest.jsonl"))
    r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "--dataset", str(tmp_path / "bad"), "--pauses", "25"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "pauses" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_writes_a_wav(tmp_path):
    out = tmp_path / "x.wav"
    r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "seven eight", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).samplerate == SAMPLE_RATE and sf.info(str(out)).frames > 8000
    r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "x", "--voice", "zz"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_cli_dataset_leaves_out_the_excluded_manifests_texts(tmp_path):
    def dataset(name, *flags):
        r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "--dataset", str(tmp_path / name), "-n", "5",
                            "--kind", "digits", "--seed", "3", *flags], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return [json.loads(line)["text"] for line in open(tmp_path / name / "manifest.jsonl")]

    train = dataset("train")
    held_out = dataset("held-out", "--exclude", str(tmp_path / "train" / "manifest.jsonl"))
    assert dataset("again") == train and not set(held_out) & set(train)  # same seed: only --exclude differs
    r = subprocess.run([sys.executable, "-m", "nanoaudio.synth", "--dataset", str(tmp_path / "bad"),
                        "--exclude", str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert r.returncode == 1 and "missing.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_non_speech_and_surrounded_speech_in_a_dataset(tmp_path):
    m = synth.make_dataset(tmp_path / "n", 30, kind="sentences", seed=4, noise=0.0, non_speech=0.3, surround=0.5)
    rows = [json.loads(line) for line in open(m)]
    quiet = [r for r in rows if r.get("no_speech")]
    around = [r for r in rows if "surround" in r]
    assert 3 <= len(quiet) <= 16 and 3 <= len(around) <= len(rows) - len(quiet)  # 9 and ~10 expected
    lo, hi = synth.TRAIN_NON_SPEECH_SECONDS
    for r in quiet:  # nobody speaks: the empty transcript, a clip of the drawn kind, as long as the manifest says
        assert r["text"] == "" and r["kinds"][0] in synth.NON_SPEECH_KINDS and lo <= r["seconds"] <= hi
        assert load_audio(m.parent / r["audio"]).abs().max() > 0
    for r in around:  # the bed is there before and after the speech: the clip is longer than the speech by both
        wave, s = load_audio(m.parent / r["audio"]), r["surround"]
        assert r["text"] and all(synth.TRAIN_AROUND_SECONDS[0] <= s[k] <= synth.TRAIN_AROUND_SECONDS[1]
                                 for k in ("before_s", "after_s"))
        assert wave[:int(s["before_s"] * SAMPLE_RATE)].abs().max() > 0
        assert len(wave) / SAMPLE_RATE > s["before_s"] + s["after_s"] + 0.3
    # the loader keeps the marked clips (their empty text is the target) and a share 0 draws nothing new
    from nanoaudio.data import open_dataset

    assert sorted(ex.text for ex in open_dataset(str(m))) == sorted(r["text"] for r in rows)
    plain = synth.make_dataset(tmp_path / "p", 30, kind="sentences", seed=4, noise=0.0)
    same = synth.make_dataset(tmp_path / "z", 30, kind="sentences", seed=4, noise=0.0, non_speech=0.0, surround=0.0)
    assert [json.loads(line)["text"] for line in open(plain)] == [json.loads(line)["text"] for line in open(same)]
    assert json.loads((plain.parent / "recipe.json").read_text()).keys() == {"n", "kind", "seed", "noise", "pauses",
                                                                            "sentences"}
    with pytest.raises(NanoaudioError, match="non_speech is a share"):
        synth.make_dataset(tmp_path / "bad", 2, non_speech=2.0)
