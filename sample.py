"""
Transcribe audio files with a nanoaudio checkpoint.

    python sample.py audio.wav                       # the bundled tiny model, offline (8 beams, CTC-rescored)
    python sample.py clips/ --batch-size 8 --json    # a folder, batched, one JSON object per file
    python sample.py talk.flac --checkpoint out/qwen3-8b/last --device cuda --dtype bf16
    cat audio.wav | python sample.py -               # from standard input
    python sample.py audio.wav --trace               # every stage, its shape and the formula behind it
    python sample.py audio.wav --beams 1             # greedy: ~3x faster, less accurate (--stream's decoding)
    python sample.py --eval out/tiny-data/eval-sentences/manifest.jsonl   # WER on labeled data
    python sample.py talk.wav --format srt --output-dir subs/   # subtitles (also vtt, tsv) from word times
    python sample.py talk.wav --word-timestamps --format json   # each word's start, end and probability

A thin shell over the library's one decoding path (nanoaudio/decoding.py): files longer than the model's window
are cut in pauses, decoded and stitched there, exactly as `ASRModel.transcribe` does; word times come from the
encoder's CTC head (nanoaudio/align.py), cues from them (nanoaudio/subtitles.py). This file only reads
arguments and files, and prints or writes.
"""

import argparse
import io
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.cli import check_device, fraction, positive_int, run_cli
from nanoaudio.decoding import (BEAMS, CTC_RESCORE, MIN_WINDOW_SECONDS, MIN_WORD_PROBABILITY, NO_SPEECH_THRESHOLD,
                                 DecodingOptions, transcribe_full)
from nanoaudio.load import DTYPE_CHOICES, atomic_file
from nanoaudio.tiny import BUNDLED  # the bundled tiny model (nanoaudio/assets/tiny-asr)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}
FORMATS = ["txt", "json", "srt", "vtt", "tsv"]
SUBTITLES = {"srt", "vtt", "tsv"}  # built from word times: these formats align the words whatever the flags


def threshold(text: str):
    """--no-speech-threshold, --min-word-probability: a probability in [0, 1], or 'off'."""
    return None if text.lower() in ("off", "none") else fraction(text)


threshold.__name__ = "threshold"


def output_dir(text: str) -> Path:
    """--output-dir: a folder to write into (made if missing); a file there is an error at parse time."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


output_dir.__name__ = "output_dir"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="audio files, folders (walked for audio files) or - for stdin")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by train.py (default: bundled tiny)")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="files (windows) decoded together; padding masks keep results identical")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="longest transcript per window, in tokens")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights' dtype (default: the checkpoint's)")
    p.add_argument("--window", type=float, default=None,
                   help=f"seconds per window, >= {MIN_WINDOW_SECONDS} (default: the model's)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are decoded (greedy)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="txt (default): the text; json: one object per file (path, text, seconds, RTF, segments, "
                        "words); srt, vtt: subtitles; tsv: start and end in ms, text")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--word-timestamps", action="store_true",
                   help="align each word to the audio with the encoder's CTC head (json: a words list)")
    p.add_argument("--output-dir", type=output_dir, default=None, metavar="DIR",
                   help="write NAME.txt (.json, .srt, .vtt, .tsv) per input file here instead of standard output")
    p.add_argument("--max-line-width", type=positive_int, default=42,
                   help="srt, vtt, tsv: characters per subtitle line (at most 2 lines per cue)")
    p.add_argument("--no-speech-threshold", type=threshold, default=NO_SPEECH_THRESHOLD, metavar="P",
                   help="a window whose mean CTC blank probability is above P gives no words (off: never; "
                        f"default {NO_SPEECH_THRESHOLD})")
    p.add_argument("--min-word-probability", type=threshold, default=MIN_WORD_PROBABILITY, metavar="P",
                   help="drop a word whose characters the CTC head gives less than P where it aligns them (off: "
                        f"never; default {MIN_WORD_PROBABILITY})")
    p.add_argument("--trace", action="store_true", help="print every stage of the pipeline for one file")
    p.add_argument("--beams", type=positive_int, default=None,
                   help=f"beam search with this many beams (default {BEAMS}; 1: greedy, --stream's default)")
    p.add_argument("--ctc-rescore", type=fraction, default=None, metavar="W",
                   help=f"with beams: rank them by (1-W) log p_decoder + W log p_CTC, when the encoder has a CTC head "
                        f"(default {CTC_RESCORE}; 0: the decoder alone)")
    p.add_argument("--ctc-weight", type=fraction, default=None, help=argparse.SUPPRESS)  # the old name, one release
    p.add_argument("--eval", metavar="DATA", help="labeled data (LibriSpeech folder, JSONL manifest, parquet, as "
                   "train.py reads): transcribe it and print the WER instead")
    p.add_argument("--eval-samples", type=positive_int, default=None, help="with --eval: the first N utterances")
    args = p.parse_args(argv)
    if not args.inputs and not args.eval:
        p.error("give audio files (or a folder, or -) to transcribe, or --eval DATA")
    if args.stream and args.beams not in (None, 1):
        p.error("--stream shows greedy decoding token by token: it cannot be combined with --beams")
    if args.json and args.format not in (None, "json"):
        p.error(f"--json is --format json: it cannot be combined with --format {args.format}")
    args.format = "json" if args.json else (args.format or "txt")
    if args.stream and args.format != "txt":
        p.error(f"--stream prints plain text as it decodes: it cannot be combined with "
                f"{'--json' if args.json else '--format ' + args.format}")
    if args.window is not None and not args.window >= MIN_WINDOW_SECONDS:
        p.error(f"argument --window: {args.window} is out of range: must be >= {MIN_WINDOW_SECONDS} (seconds)")
    if args.ctc_weight is not None:
        print("warning: --ctc-weight is now --ctc-rescore (the old name goes in the next release)", file=sys.stderr)
        args.ctc_rescore = args.ctc_rescore if args.ctc_rescore is not None else args.ctc_weight
    args.beams = args.beams or (1 if args.stream else BEAMS)
    args.ctc_rescore_asked = args.ctc_rescore is not None
    args.ctc_rescore = CTC_RESCORE if args.ctc_rescore is None else args.ctc_rescore
    return args


def options_from(args, batch_size=None) -> DecodingOptions:
    return DecodingOptions(beams=args.beams, ctc_rescore=args.ctc_rescore, max_new_tokens=args.max_new_tokens,
                           window=args.window, batch_size=batch_size or args.batch_size,
                           word_timestamps=args.word_timestamps or args.format in SUBTITLES,
                           no_speech_threshold=args.no_speech_threshold,
                           min_word_probability=args.min_word_probability)


def find_audio(inputs):
    """Expand folders into their audio files (sorted); keep files and '-' as given. An empty folder is an error."""
    for item in inputs:
        path = Path(item)
        if item != "-" and path.is_dir():
            files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise NanoaudioError(f"{item}: no audio files in this folder ({', '.join(sorted(AUDIO_SUFFIXES))})")
            yield from files
        else:
            yield item


def read(item):
    from nanoaudio.audio import load_audio

    if item == "-":
        return load_audio(io.BytesIO(sys.stdin.buffer.read()), name="<stdin>")
    return load_audio(item)


# -----------------------------------------------------------------------------


class Streamer:
    """on_token callback for --stream: prints the new text of row 0 as tokens arrive.

    Decoding token by token would split characters that span several byte-level tokens, so it decodes the
    whole sequence so far and prints only what is new. A long file is several windows: each window streams on
    its own line, and the stitched transcript follows."""

    def __init__(self, model):
        self.model, self.ids, self.shown, self.windows = model, [], "", 0

    def __call__(self, step, tokens):  # tokens: (B,) the ids just generated
        if step == 0:
            self.new_window()
        tok = int(tokens[0])
        if tok in self.model.decoder.eos_token_ids:
            return
        self.ids.append(tok)
        text = self.model.tokenizer.decode(self.ids).lstrip()
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text

    def new_window(self):
        if self.windows:
            print(flush=True)
        self.ids, self.shown, self.windows = [], "", self.windows + 1

    def finish(self, text):
        print(flush=True)
        if self.windows > 1:
            print(f"[stitched] {text}", flush=True)


def trace(model, item, wave, args):
    """Print each stage with its shape and the formula that predicts it, and check the two agree."""
    from nanoaudio.audio import batch_audio
    from nanoaudio.model import build_prompt
    from nanoaudio.projector import num_tokens

    k = model.projector.config.stack
    S = len(wave)
    fps = SAMPLE_RATE / model.encoder.config.hop_length  # encoder frames per second
    checks = []

    def show(stage, value, formula, ok=None, dt=None):
        mark = "" if ok is None else ("  [ok]" if ok else "  [MISMATCH]")
        t = f"  ({dt * 1000:.1f} ms)" if dt is not None else ""
        print(f"{stage:<18} {value:<34} {formula}{mark}{t}")
        if ok is not None:
            checks.append(ok)

    print(f"trace of {item}\n")
    show("samples", f"S = {S} ({S / SAMPLE_RATE:.2f} s)", f"{SAMPLE_RATE} samples/s, mono float32")
    wav, mask = batch_audio([wave], normalize=model.encoder.normalize_audio)
    if hasattr(model.encoder.config, "num_mel_bins"):  # Whisper: the log-mel spectrogram comes first
        from nanoaudio.whisper import HOP_LENGTH, N_FRAMES, log_mel_spectrogram

        n_mels, pad = model.encoder.config.num_mel_bins, model.encoder.config.pad_to_30s
        mel_frames = N_FRAMES if pad else -(-S // HOP_LENGTH)
        mel = log_mel_spectrogram(wave[None], n_mels, frames=mel_frames) if pad or mel_frames else None
        show("log-mel", f"(1, {n_mels}, {mel_frames})", f"{'padded to 30 s: 3000' if pad else 'ceil(S / 160)'} "
             f"frames; |STFT(400, hop 160)|^2 @ {n_mels} Slaney mel filters, log10, floor max-8, (x+4)/4",
             mel is not None and tuple(mel.shape) == (1, n_mels, mel_frames))
    t0 = time.time()
    dtype = next(model.encoder.parameters()).dtype if model.encoder.normalize_audio else torch.float32
    wav, mask = wav.to(args.device, dtype), mask.to(args.device)
    with torch.inference_mode():
        frames = model.encoder(wav, mask)
    t_enc = time.time() - t0
    F_, F_formula = frames.shape[1], model.encoder.config.num_frames(S)  # the model's own conv stack
    show("encoder frames", f"(1, {F_}, {frames.shape[2]}) {str(frames.dtype).replace('torch.', '')}",
         f"F = conv arithmetic(S) = {F_formula}  (~{fps:g}/s: {S / SAMPLE_RATE * fps:.1f})", F_ == F_formula, t_enc)
    n_tok = num_tokens(F_, k)
    show("stacked frames", f"(1, {n_tok}, {k * frames.shape[2]})", f"ceil(F / k) = ceil({F_} / {k}) = {n_tok}, "
         f"width k*Ce = {k}*{frames.shape[2]}")
    t0 = time.time()
    with torch.inference_mode():
        frame_mask = model.encoder.frame_mask(mask)
        tokens, token_mask = model.projector(frames.to(model.projector_dtype), frame_mask)
    show("audio tokens", f"(1, {tokens.shape[1]}, {tokens.shape[2]})",
         f"Linear(k*Ce -> Cd={model.decoder.config.hidden_size}), {fps / k:g} tokens/s",
         tokens.shape[1] == n_tok, time.time() - t0)
    ids, start, _ = build_prompt(model.tokenizer, model.family, n_tok, None, model.config.instruction)
    show("prompt tokens", f"T = {len(ids)} = {len(ids) - n_tok} text + {n_tok} audio",
         f"audio slots at positions {start}..{start + n_tok - 1}", len(ids) - n_tok >= 0)
    options = options_from(args)
    t0 = time.time()
    out = model.generate_ids(wav.to(args.device), mask.to(args.device), options.max_new_tokens,
                             num_beams=options.beams, ctc_weight=options.ctc_rescore)[0]
    dt = time.time() - t0
    show("generated tokens", f"N = {len(out)}", f"{options.describe()}, KV cache, "
         f"{len(out) / max(dt, 1e-9):.1f} tokens/s", None, dt)
    text = model.tokenizer.decode(out).strip()
    show("text", repr(text), f"{len(text.split())} words")
    print(f"\nall counts match their formulas: {all(checks)}")
    return text, all(checks)


def evaluate(model, args):
    """--eval: transcribe labeled data through the library's decoding path, print a few pairs and the WER."""
    from nanoaudio.data import open_dataset
    from nanoaudio.decoding import evaluate as evaluate_wer

    dataset = open_dataset(args.eval)
    examples = list(itertools.islice(dataset, args.eval_samples))
    if not examples:
        raise NanoaudioError(f"--eval {args.eval}: no readable utterances"
                             + (f" (skipped: {dataset.skipped_report()})" if dataset.skipped else ""))
    options = options_from(args, batch_size=max(args.batch_size, 8))
    t0 = time.time()
    error, pairs = evaluate_wer(model, examples, options)
    for ref, hyp in pairs[:3]:
        print(f"ref: {ref}\nhyp: {hyp}")
    seconds = sum(ex.seconds for ex in examples)
    print(f"WER {100 * error:.2f}% on {len(examples)} utterances of {dataset.name} ({options.describe()}; "
          f"{seconds / (time.time() - t0):.0f} s of audio per second)")
    if dataset.skipped:
        print(f"skipped: {dataset.skipped_report()}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    from nanoaudio.load import parse_dtype
    from nanoaudio.model import ASRModel

    check_device(args.device)
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED
    if args.checkpoint is None:
        print("nanoaudio: using the bundled tiny model (trained on synthetic espeak-ng speech: it transcribes digit "
              "strings, sentences from its 257-word vocabulary with some errors, general speech not at all). Pass "
              "--checkpoint DIR for a model trained with train.py.", file=sys.stderr)
    model = ASRModel.load(ckpt, dtype=parse_dtype(args.dtype), device=args.device)
    if args.ctc_rescore_asked and args.beams > 1 and model.encoder.lm_head is None:
        print(f"note: --ctc-rescore is off: this checkpoint's encoder has no CTC head "
              f"({type(model.encoder).__name__}); the beams are ranked by the decoder alone", file=sys.stderr)
    if args.eval:
        return evaluate(model, args)
    items = list(find_audio(args.inputs))
    if args.trace:
        return 0 if trace(model, items[0], read(items[0]), args)[1] else 1
    if args.format in SUBTITLES and len(items) > 1 and args.output_dir is None:
        raise NanoaudioError(f"--format {args.format} of {len(items)} files: give --output-dir DIR to write one "
                             f"file each")
    batch_size = 1 if args.stream else args.batch_size  # streaming shows one file's tokens at a time
    options = options_from(args, batch_size)
    if options.word_timestamps and model.encoder.lm_head is None:
        print("nanoaudio: this checkpoint's encoder has no CTC head: word times are its windows' times, shared "
              "out by word length (segment-level)", file=sys.stderr)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)

    # one batch of files at a time: read, transcribe, print, so memory holds one batch, not the whole folder
    failed = 0
    for i in range(0, len(items), batch_size):
        group = []
        for item in items[i:i + batch_size]:
            try:
                group.append((item, read(item)))
            except NanoaudioError as e:
                print(f"error: {e}", file=sys.stderr)
                if args.format == "json":
                    print(json.dumps({"path": item, "error": str(e)}), flush=True)
                failed += 1
        if not group:
            continue
        on_token = Streamer(model) if args.stream else None
        t0 = time.time()
        results = transcribe_full(model, [w for _, w in group], options, on_token)
        dt = (time.time() - t0) / len(group)
        for (item, wave), result in zip(group, results):
            if args.stream:
                on_token.finish(result.text)
            elif args.output_dir is not None:
                name = "stdin" if item == "-" else Path(item).stem
                path = args.output_dir / f"{name}.{args.format}"
                with atomic_file(path) as tmp:  # killed mid-write: the old file or none, never half a one
                    tmp.write_text(render(result, item, dt, args))
                print(path, flush=True)
            elif args.format == "txt" and len(items) > 1:
                print(f"{item}\t{result.text}", flush=True)
            else:
                print(render(result, item, dt, args), end="", flush=True)
    return 1 if failed else 0


def render(result, item, dt, args) -> str:
    """One file's Result in args.format, as a file holds it: the text or a JSON object on one line (with its
    newline), or subtitles (their writers end every cue with a blank line)."""
    from nanoaudio.subtitles import WRITERS, cues

    if args.format == "txt":
        return result.text + "\n"
    if args.format == "json":
        record = {"path": item, "text": result.text, "audio_seconds": round(result.duration, 3),
                  "compute_seconds": round(dt, 4), "rtf": round(dt / result.duration, 5),
                  "segments": [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                                "no_speech_prob": s.no_speech_prob} for s in result.segments]}
        if args.word_timestamps:
            record["words"] = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                               for w in result.words]
        return json.dumps(record) + "\n"
    return WRITERS[args.format](cues(result.words, args.max_line_width, duration=result.duration))


if __name__ == "__main__":
    run_cli(main)
