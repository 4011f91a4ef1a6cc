"""sample.py end to end, through the command line, on the bundled tiny model and synthesized speech.

The bundled model (nanoaudio/assets/tiny-asr) was trained on espeak-ng digit strings and sentences from the
tiny vocabulary, so the utterances here are of that kind; the voice is one of the held-out draws.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sample
from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.encoder import num_frames
from nanoaudio.projector import num_tokens

pytest.importorskip("espeakng_loader")
from nanoaudio import synth  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UTTERANCES = {  # name -> (text, voice, rate, pitch)
    "a": ("three one four one five", "en-us", 160, 50),
    "b": ("seven two nine", "en+m3", 170, 45),
    "c": ("eight eight zero six four two", "en-gb-x-rp", 150, 55),
}


def run(*args, stdin=None):
    r = subprocess.run([sys.executable, "sample.py", *map(str, args)], cwd=ROOT, capture_output=True,
                       input=stdin, timeout=300)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name, (text, voice, rate, pitch) in UTTERANCES.items():
        sf.write(folder / f"{name}.wav", synth.speak(text, voice, rate, pitch).numpy(), SAMPLE_RATE)
    return folder


def test_the_bundled_model_transcribes_a_digit_string(clips):
    code, out, err = run(clips / "a.wav")
    assert code == 0, err
    assert out.strip() == "three one four one five"
    assert "bundled tiny model" in err  # the one-line notice of what it can and cannot do
    assert len(err.strip().splitlines()) == 1


def test_folder_batched_equals_one_at_a_time(clips):
    code, one, err = run(clips, "--batch-size", "1")
    assert code == 0, err
    code, batched, err = run(clips, "--batch-size", "3")
    assert code == 0, err
    assert one == batched
    lines = dict(line.split("\t") for line in one.strip().splitlines())
    assert sorted(Path(p).name for p in lines) == ["a.wav", "b.wav", "c.wav"]
    assert lines[str(clips / "a.wav")] == "three one four one five"


def test_json_fields(clips):
    code, out, err = run(clips / "b.wav", clips / "c.wav", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["b.wav", "c.wav"]
    for r in rows:
        seconds = sf.info(r["path"]).frames / SAMPLE_RATE
        assert r["audio_seconds"] == pytest.approx(seconds, abs=1e-3)
        assert r["compute_seconds"] > 0
        assert r["rtf"] == pytest.approx(r["compute_seconds"] / r["audio_seconds"], rel=1e-3, abs=1e-4)
        assert isinstance(r["text"], str) and r["text"]


def test_stream_prints_the_final_text(clips):
    code, plain, _ = run(clips / "c.wav")
    code, streamed, err = run(clips / "c.wav", "--stream")
    assert code == 0, err
    assert streamed.strip() == plain.strip()


def test_stdin(clips):
    code, out, err = run("-", stdin=(clips / "a.wav").read_bytes())
    assert code == 0, err
    assert out.strip() == "three one four one five"


@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.37, 4.0])
def test_trace_counts_equal_the_formulas(tmp_path, seconds):
    n = int(seconds * SAMPLE_RATE)
    sf.write(tmp_path / "x.wav", np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32), SAMPLE_RATE)
    code, out, err = run(tmp_path / "x.wav", "--trace", "--max-new-tokens", "4")
    assert code == 0, err + out
    F = num_frames(n)
    assert f"S = {n} " in out
    assert f"(1, {F}," in out and f"F = conv arithmetic(S) = {F}" in out
    assert f"ceil({F} / 5) = {num_tokens(F, 5)}" in out
    assert "MISMATCH" not in out and "all counts match their formulas: True" in out


def test_stitch_keeps_overlapping_words_once():
    assert sample.stitch(["one two three four", "three four five six"]) == "one two three four five six"
    # a word cut at a chunk edge is garbled on one side: the stitch cuts inside the agreeing run
    assert sample.stitch(["one two three four fi", "ee three four five six", "five six seven"]) == \
        "one two three four five six seven"
    assert sample.stitch(["a b", "c d"]) == "a b c d"  # nothing in common: concatenate
    assert sample.stitch(["", "x y"]) == "x y"
    assert sample.stitch(["seven"]) == "seven"


def test_chunks_cover_the_audio_with_overlap():
    wave = torch.arange(int(20.5 * SAMPLE_RATE))
    pieces = sample.chunks(wave, 8.0, 2.0)
    starts = [int(p[0]) for p in pieces]
    assert starts == [0, 6 * SAMPLE_RATE, 12 * SAMPLE_RATE, 18 * SAMPLE_RATE]
    assert int(pieces[-1][-1]) == len(wave) - 1  # the end is covered
    assert all(len(p) <= 8 * SAMPLE_RATE for p in pieces)
    assert len(sample.chunks(wave[:SAMPLE_RATE], 8.0, 2.0)) == 1


def test_long_file_is_chunked_and_stitched_without_duplicates(tmp_path):
    # several windows of speech: digit strings separated by short pauses
    texts = ["four two seven", "nine one three", "six zero eight", "five five two", "one seven nine",
             "three eight four", "two six zero", "eight one five", "zero four six", "seven three one",
             "nine nine two", "six one eight"]
    pause = torch.zeros(int(0.3 * SAMPLE_RATE))
    wave = torch.cat([torch.cat([synth.speak(t, "en-us", 170, 50), pause]) for t in texts])
    sf.write(tmp_path / "long.wav", wave.numpy(), SAMPLE_RATE)
    assert len(wave) / SAMPLE_RATE > 3 * 4.0  # at least three 4-second windows
    code, out, err = run(tmp_path / "long.wav", "--window", "4")
    assert code == 0, err
    from nanoaudio.text import wer

    reference = " ".join(texts)
    hyp = out.strip()
    assert abs(len(hyp.split()) - len(reference.split())) <= 2, hyp  # nothing repeated or lost at the seams
    assert wer([reference], [hyp]) <= 0.25, hyp


def test_bad_inputs_are_reported_one_line_each_and_the_rest_still_runs(clips, tmp_path):
    (tmp_path / "text.wav").write_text("not audio at all")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "nan.wav", np.full(8000, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT")
    bad = [tmp_path / "missing.wav", tmp_path / "text.wav", tmp_path / "empty.wav", tmp_path / "nan.wav"]
    code, out, err = run(clips / "a.wav", *bad)
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    for path, line in zip(bad, errors):
        assert str(path) in line or path.name in line
    assert out.strip() == f"{clips / 'a.wav'}\tthree one four one five"


def test_bad_checkpoint_is_a_one_line_error(tmp_path):
    code, out, err = run(tmp_path / "x.wav", "--checkpoint", tmp_path / "nope")
    assert code == 1 and err.strip().startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
