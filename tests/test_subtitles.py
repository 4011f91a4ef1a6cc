"""Subtitles (nanoaudio/subtitles.py) checked by strict SRT and WebVTT parsers, on made-up word times and on the
CLI's output for synthesized speech.

    python -m pytest -q tests/test_subtitles.py
"""

import re

import pytest

from nanoaudio.decoding import Word
from nanoaudio.subtitles import MAX_LINES, cues, timestamp, vtt_escape, write_srt, write_tsv, write_vtt

SRT_TIME = r"(\d\d):([0-5]\d):([0-5]\d),(\d\d\d)"
VTT_TIME = r"(\d\d):([0-5]\d):([0-5]\d)\.(\d\d\d)"


def seconds(h, m, s, ms):
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def check_cues(timed, duration, width):
    """[(start, end, lines)] -> the checks both formats share: end after start, starts never decrease, cues do
    not overlap, everything within the audio, at most MAX_LINES lines of at most `width` characters (a single
    longer word may be a line alone), no empty line."""
    prev_start = prev_end = 0.0
    for start, end, lines in timed:
        assert end > start >= prev_start and start >= prev_end - 1e-9
        assert 0 <= start and end <= duration + 1e-9
        assert 1 <= len(lines) <= MAX_LINES and all(lines)
        assert all(len(line) <= width or " " not in line for line in lines)
        prev_start, prev_end = start, end


def parse_srt(text, duration, width=42):
    """Strict SRT: blocks of number (1, 2, ...), 'HH:MM:SS,mmm --> HH:MM:SS,mmm', text lines, a blank line."""
    assert text.endswith("\n\n") or text == ""
    blocks, timed = text[:-2].split("\n\n") if text else [], []
    for i, block in enumerate(blocks, 1):
        number, times, *lines = block.split("\n")
        assert number == str(i)
        m = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times)
        assert m, times
        timed.append((seconds(*m.groups()[:4]), seconds(*m.groups()[4:]), lines))
    check_cues(timed, duration, width)
    return timed


def parse_vtt(text, duration, width=42):
    """Strict WebVTT: the WEBVTT header and a blank line, then blocks of 'HH:MM:SS.mmm --> HH:MM:SS.mmm' and text
    lines in which & < > appear only escaped."""
    assert text.startswith("WEBVTT\n\n")
    body, timed = text[len("WEBVTT\n\n"):], []
    for block in (body[:-2].split("\n\n") if body else []):
        times, *lines = block.split("\n")
        m = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", times)
        assert m, times
        for line in lines:
            assert "<" not in line and ">" not in line and "-->" not in line
            assert re.fullmatch(r"([^&]|&amp;|&lt;|&gt;)*", line), line
        unescaped = [line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for line in lines]
        timed.append((seconds(*m.groups()[:4]), seconds(*m.groups()[4:]), unescaped))
    check_cues(timed, duration, width)
    return timed


def words_of(text, start=0.5, step=0.3, pause_after=()):
    out, t = [], start
    for i, w in enumerate(text.split()):
        out.append(Word(w, round(t, 3), round(t + step - 0.05, 3), 0.9))
        t += step + (2.0 if i in pause_after else 0.0)
    return out


def test_timestamp_format():
    assert timestamp(0) == "00:00:00,000" and timestamp(3725.5) == "01:02:05,500"
    assert timestamp(59.9996, ".") == "00:01:00.000" and timestamp(-0.001) == "00:00:00,000"


def test_lines_are_filled_to_the_width_and_cues_to_two_lines():
    words = words_of(" ".join(["seven"] * 30))
    c = cues(words, max_line_width=20)
    assert all(len(line) <= 20 for cue in c for line in cue.lines)
    assert all(len(cue.lines) <= 2 for cue in c) and len(c) == 5  # 3 words a line, 6 a cue, 30 words
    assert " ".join(" ".join(cue.lines) for cue in c) == " ".join(w.word for w in words)  # every word, in order
    parse_srt(write_srt(c), duration=words[-1].end + 1, width=20)


def test_a_pause_starts_a_new_cue():
    c = cues(words_of("one two three four five", pause_after=(1,)))
    assert [" ".join(cue.lines) for cue in c] == ["one two", "three four five"]
    assert c[1].start - c[0].end > 1.5


def test_cues_never_overlap_and_stay_in_the_audio_whatever_the_times():
    # times out of order, a zero-length word, a word past the end: as a stitch of two windows may give
    words = [Word("a", 1.0, 1.0, 0.5), Word("b", 0.9, 1.2, 0.5), Word("c", 3.0, 2.9, 0.5),
             Word("d", 4.9, 5.3, 0.5), Word("x" * 60, 5.3, 5.4, 0.5)]
    c = cues(words, max_line_width=10, duration=5.0)
    parse_srt(write_srt(c), duration=5.0, width=10)
    parse_vtt(write_vtt(c), duration=5.0, width=10)
    assert cues([], duration=1.0) == [] and write_srt([]) == "" and write_vtt([]) == "WEBVTT\n\n"


def test_vtt_escapes_what_would_be_markup():
    assert vtt_escape("a<b> & c") == "a&lt;b&gt; &amp; c"
    c = cues([Word("<i>rock", 0.0, 0.5, 1.0), Word("&", 0.5, 0.6, 1.0), Word("roll>", 0.6, 1.0, 1.0)])
    vtt = write_vtt(c)
    assert "&lt;i&gt;rock &amp; roll&gt;" in vtt
    assert parse_vtt(vtt, 1.0)[0][2] == ["<i>rock & roll>"]
    assert "<i>rock & roll>" in write_srt(c)  # SRT has no escapes


def test_tsv_rows_are_milliseconds():
    tsv = write_tsv(cues(words_of("one two"), duration=2.0))
    assert tsv == "start\tend\ttext\n500\t1050\tone two\n"


# -----------------------------------------------------------------------------
# the CLI on synthesized speech: subtitles from the bundled model's word times


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    pytest.importorskip("espeakng_loader")
    import soundfile as sf
    import torch

    from nanoaudio import synth
    from nanoaudio.audio import SAMPLE_RATE

    pause = torch.zeros(int(1.2 * SAMPLE_RATE))  # longer than PAUSE_SECONDS: a new cue at each
    wave = torch.cat([torch.cat([pause, synth.speak(t, "en-us", 170, 50)]) for t in
                      ["four two seven one", "nine one three five", "six zero eight"]] + [pause])
    path = tmp_path_factory.mktemp("subs") / "long.wav"
    sf.write(path, wave.numpy(), SAMPLE_RATE)
    return path, len(wave) / SAMPLE_RATE


def test_the_cli_writes_srt_vtt_tsv_that_parse(long_clip, tmp_path):
    from test_sample import run

    path, duration = long_clip
    code, out, err = run(path, "--format", "srt", "--max-line-width", "12", "--beams", "1")
    assert code == 0, err
    srt = parse_srt(out, duration, width=12)
    assert len(srt) >= 2 and srt[0][0] >= 1.0  # pauses start cues; the 1.2 s of silence first is not captioned
    code, out, err = run(path, path, "--format", "vtt", "--beams", "1", "--output-dir", tmp_path / "subs")
    assert code == 0, err
    assert out.strip().splitlines() == [str(tmp_path / "subs" / "long.vtt")] * 2
    vtt = parse_vtt((tmp_path / "subs" / "long.vtt").read_text(), duration)
    words = " ".join(" ".join(lines) for _, _, lines in srt).split()
    assert words == " ".join(" ".join(lines) for _, _, lines in vtt).split()  # same words, other line width
    code, out, err = run(path, path, "--format", "tsv")
    assert code == 1 and "--output-dir" in err and not out


@pytest.mark.parametrize("flags,says", [(["--max-line-width", "0"], "--max-line-width"),
                                        (["--format", "doc"], "--format"),
                                        (["--json", "--format", "srt"], "--json"),
                                        (["--no-speech-threshold", "2"], "--no-speech-threshold")])
def test_bad_subtitle_flags_are_usage_errors(long_clip, flags, says):
    from test_sample import run

    code, out, err = run(long_clip[0], *flags)
    assert code == 2 and not out and "Traceback" not in err and says in err.strip().splitlines()[-1]
