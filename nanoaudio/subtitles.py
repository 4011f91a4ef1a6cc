"""Subtitles from word times: cues (SRT, WebVTT) and a TSV of them, as whisper's CLI writes them.

    from nanoaudio.subtitles import cues, write_srt
    text = write_srt(cues(result.words, duration=result.duration))    # result: decoding.transcribe_full's

A cue is at most `max_lines` lines of at most `max_line_width` characters (a longer word gets a line of its own),
and a pause longer than PAUSE_SECONDS between two words starts a new cue, so a caption never stays on screen
through a silence. Cues never overlap and never start before the previous one; times are clipped to the audio.
Formats: SRT (numbered from 1, HH:MM:SS,mmm), WebVTT (a WEBVTT header, HH:MM:SS.mmm, & < > escaped, as the W3C
spec requires in cue text), TSV (start, end in integer milliseconds, text; whisper's --output_format tsv).
References: https://www.w3.org/TR/webvtt1/ (cue text escapes); openai/whisper utils.py (WriteSRT/WriteVTT/WriteTSV).
"""

from dataclasses import dataclass

MAX_LINE_WIDTH = 42  # characters per line: the BBC's and Netflix's subtitle guidelines both say 37-42
MAX_LINES = 2  # lines per cue, the same guidelines
PAUSE_SECONDS = 0.8  # a longer silence between two words ends the cue
MIN_CUE_SECONDS = 0.05  # a cue lasts at least this long (a word whose start and end coincide still shows)


@dataclass
class Cue:
    start: float  # seconds
    end: float
    lines: list[str]


def cues(words, max_line_width: int = MAX_LINE_WIDTH, max_lines: int = MAX_LINES, pause: float = PAUSE_SECONDS,
         duration: float | None = None) -> list[Cue]:
    """Words with times (anything with .word, .start, .end: decoding.Word) -> Cues (see the module docstring)."""
    out, lines, first, last = [], [], None, None

    def close():
        if lines:
            out.append(Cue(first.start, last.end, list(lines)))

    for w in words:
        text = w.word.strip()
        if not text:
            continue
        pause_before = last is not None and w.start - last.end > pause
        fits = lines and len(lines[-1]) + 1 + len(text) <= max_line_width
        if pause_before or (not fits and len(lines) == max_lines):
            close()
            lines, first = [], None
        if lines and fits:
            lines[-1] += " " + text
        else:
            lines.append(text)
        first, last = first or w, w
    close()
    # starts never decrease, cues never overlap, every cue lasts and stays within the audio
    prev_end = 0.0
    for c in out:
        c.start = max(c.start, prev_end)
        c.end = max(c.end, c.start + MIN_CUE_SECONDS)
        if duration is not None:
            c.end = min(c.end, duration)
            c.start = min(c.start, max(0.0, c.end - MIN_CUE_SECONDS))
        prev_end = c.end
    return out


def timestamp(seconds: float, decimal: str = ",") -> str:
    """3725.5 -> '01:02:05,500' (SRT); decimal='.' for WebVTT."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def write_srt(cue_list: list[Cue]) -> str:
    return "".join(f"{i}\n{timestamp(c.start)} --> {timestamp(c.end)}\n" + "\n".join(c.lines) + "\n\n"
                   for i, c in enumerate(cue_list, 1))


def vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_vtt(cue_list: list[Cue]) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n"
                                  + "\n".join(vtt_escape(line) for line in c.lines) + "\n\n" for c in cue_list)


def write_tsv(cue_list: list[Cue]) -> str:
    """One cue per row: start and end in integer milliseconds, then its text on one line (tabs made spaces)."""
    rows = [f"{round(c.start * 1000)}\t{round(c.end * 1000)}\t" + " ".join(c.lines).replace("\t", " ")
            for c in cue_list]
    return "start\tend\ttext\n" + "".join(r + "\n" for r in rows)


WRITERS = {"srt": write_srt, "vtt": write_vtt, "tsv": write_tsv}
