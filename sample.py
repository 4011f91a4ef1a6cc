"""
Transcribe audio files with a nanoaudio checkpoint.

    python sample.py audio.wav                       # the bundled tiny model, offline (8 beams, CTC-rescored)
    python sample.py clips/ --batch-size 8 --json    # a folder, batched, one JSON object per file
    python sample.py talk.flac --checkpoint out/qwen3-8b/last --device cuda --dtype bf16
    cat audio.wav | python sample.py -               # from standard input
    python sample.py audio.wav --trace               # every stage, its shape and the formula behind it
    python sample.py audio.wav --beams 1             # greedy: ~3x faster, less accurate (--stream's decoding)
    python sample.py --eval out/tiny-data/eval-sentences/manifest.jsonl   # WER on labeled data

A thin shell over the library's one decoding path (nanoaudio/decoding.py): files longer than the model's window
are cut in pauses, decoded and stitched there, exactly as `ASRModel.transcribe` does. This file only reads
arguments and files, and prints.
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
from nanoaudio.decoding import BEAMS, CTC_RESCORE, MIN_WINDOW_SECONDS, DecodingOptions, decode, stitch
from nanoaudio.load import DTYPE_CHOICES
from nanoaudio.tiny import BUNDLED  # the bundled tiny model (nanoaudio/assets/tiny-asr)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}


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
    p.add_argument("--json", action="store_true", help="one JSON object per file: path, text, seconds, RTF")
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
    if args.stream and args.json:
        p.error("--stream prints plain text as it decodes: it cannot be combined with --json")
    if args.window is not None and not args.window >= MIN_WINDOW_SECONDS:
        p.error(f"argument --window: {args.window} is out of range: must be >= {MIN_WINDOW_SECONDS} (seconds)")
    if args.ctc_weight is not None:
        print("warning: --ctc-weight is now --ctc-rescore (the old name goes in the next release)", file=sys.stderr)
        args.ctc_rescore = args.ctc_rescore if args.ctc_rescore is not None else args.ctc_weight
    args.beams = args.beams or (1 if args.stream else BEAMS)
    args.ctc_rescore = CTC_RESCORE if args.ctc_rescore is None else args.ctc_rescore
    return args


def options_from(args, batch_size=None) -> DecodingOptions:
    return DecodingOptions(beams=args.beams, ctc_rescore=args.ctc_rescore, max_new_tokens=args.max_new_tokens,
                           window=args.window, batch_size=batch_size or args.batch_size)


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
    wav, mask = batch_audio([wave], normalize=getattr(model.encoder, "normalize_audio", True))
    t0 = time.time()
    wav, mask = wav.to(args.device, next(model.encoder.parameters()).dtype), mask.to(args.device)
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
    if args.eval:
        return evaluate(model, args)
    items = list(find_audio(args.inputs))
    if args.trace:
        return 0 if trace(model, items[0], read(items[0]), args)[1] else 1

    # one batch of files at a time: read, transcribe, print, so memory holds one batch, not the whole folder
    batch_size = 1 if args.stream else args.batch_size  # streaming shows one file's tokens at a time
    failed = 0
    for i in range(0, len(items), batch_size):
        group = []
        for item in items[i:i + batch_size]:
            try:
                group.append((item, read(item)))
            except NanoaudioError as e:
                print(f"error: {e}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"path": item, "error": str(e)}), flush=True)
                failed += 1
        if not group:
            continue
        on_token = Streamer(model) if args.stream else None
        t0 = time.time()
        segments = decode(model, [w for _, w in group], options_from(args, batch_size), on_token)
        dt = (time.time() - t0) / len(group)
        for (item, wave), segs in zip(group, segments):
            text = stitch([s.text for s in segs])
            seconds = len(wave) / SAMPLE_RATE
            if args.stream:
                on_token.finish(text)
            elif args.json:
                print(json.dumps({"path": item, "text": text, "audio_seconds": round(seconds, 3),
                                  "compute_seconds": round(dt, 4), "rtf": round(dt / seconds, 5)}), flush=True)
            elif len(items) > 1:
                print(f"{item}\t{text}", flush=True)
            else:
                print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
