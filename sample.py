"""
Transcribe audio files with a nanoaudio checkpoint.

    python sample.py audio.wav                       # the bundled tiny model, offline (8 beams, CTC-rescored)
    python sample.py clips/ --batch-size 8 --json    # a folder, batched, one JSON object per file
    python sample.py talk.flac --checkpoint out/qwen3-8b/last --device cuda --dtype bf16
    cat audio.wav | python sample.py -               # from standard input
    python sample.py audio.wav --trace               # every stage, its shape and the formula behind it
    python sample.py audio.wav --beams 1             # greedy: ~3x faster, less accurate (--stream's decoding)
    python sample.py --eval out/tiny-data/eval-sentences/manifest.jsonl   # WER on labeled data

Files longer than the model's window (30 s for real models) are cut into overlapping chunks, each cut in the
quietest moment near it, and the transcripts stitched where they agree, so no word is dropped or repeated at a seam.
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
from nanoaudio.tiny import BUNDLED  # the bundled tiny model (nanoaudio/assets/tiny-asr)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}
OVERLAP_SECONDS = 2.0  # audio shared by consecutive chunks: a few words, so that some are whole on both sides
OVERLAP_FRACTION = 0.3  # ... but at most this fraction of a short window (the tiny model's is 4 s)
BEAMS = 8  # the default decoding: on the bundled model's held-out sentences 9.1 % WER against greedy's 14.8 %
CTC_WEIGHT = 0.5  # how much the CTC head counts in ranking the beams: flat from 0.3 to 0.7 on the dev set (README)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="audio files, folders (walked for audio files) or - for stdin")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by train.py (default: bundled tiny)")
    p.add_argument("--batch-size", type=int, default=1, help="files per batch (padding masks keep results identical)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest transcript per chunk, in tokens")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32)")
    p.add_argument("--window", type=float, default=None, help="seconds per chunk (default: the model's window)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are decoded")
    p.add_argument("--json", action="store_true", help="one JSON object per file: path, text, seconds, RTF")
    p.add_argument("--trace", action="store_true", help="print every stage of the pipeline for one file")
    p.add_argument("--beams", type=int, default=None,
                   help=f"beam search with this many beams (default {BEAMS}; 1: greedy, --stream's default)")
    p.add_argument("--ctc-weight", type=float, default=CTC_WEIGHT,
                   help="with beams: rank them by (1-w) log p_decoder + w log p_CTC, when the encoder has a CTC head "
                        "(0: the decoder alone)")
    p.add_argument("--eval", metavar="DATA", help="labeled data (LibriSpeech folder, JSONL manifest, parquet, as "
                   "train.py reads): transcribe it and print the WER instead")
    p.add_argument("--eval-samples", type=int, default=0, help="with --eval: the first N utterances (0: all)")
    args = p.parse_args(argv)
    if not args.inputs and not args.eval:
        p.error("give audio files (or a folder, or -) to transcribe, or --eval DATA")
    if args.stream and args.beams not in (None, 1):
        p.error("--stream shows greedy decoding token by token: it cannot be combined with --beams")
    if args.beams is None:
        args.beams = 1 if args.stream else BEAMS
    if args.beams < 1 or not 0 <= args.ctc_weight <= 1:
        p.error(f"--beams must be >= 1 and --ctc-weight in [0, 1]: got {args.beams}, {args.ctc_weight}")
    return args


def decoding(args) -> str:
    """The decoding args ask for, in words: 'greedy' or '8 beams, CTC weight 0.5'."""
    return "greedy" if args.beams == 1 else f"{args.beams} beams, CTC weight {args.ctc_weight:g}"


def find_audio(inputs):
    """Expand folders into their audio files (sorted); keep files and '-' as given."""
    for item in inputs:
        path = Path(item)
        if item != "-" and path.is_dir():
            yield from sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield item


def read(item):
    from nanoaudio.audio import load_audio

    if item == "-":
        return load_audio(io.BytesIO(sys.stdin.buffer.read()))
    return load_audio(item)


# -----------------------------------------------------------------------------
# long audio: overlapping windows, stitched where consecutive transcripts agree


def quietest(wave, lo, hi, sr=16000):
    """The sample in [lo, hi) at the centre of the quietest 20 ms of audio there: the best place to cut."""
    hop = sr // 100  # 10 ms steps
    lo, hi = max(0, lo), min(len(wave), hi)
    if hi - lo < 2 * hop:
        return lo
    energy = wave[lo:hi].float().pow(2).unfold(0, 2 * hop, hop).mean(-1)  # (n,) mean power of each 20 ms
    return lo + int(energy.argmin()) * hop + hop


def chunk_bounds(wave, window_s, overlap_s, sr=16000):
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


def chunks(wave, window_s, overlap_s, sr=16000):
    """The windows of chunk_bounds, as views of wave."""
    return [wave[s:e] for s, e in chunk_bounds(wave, window_s, overlap_s, sr)]


def stitch(texts):
    """Join chunk transcripts, keeping the words of each overlap once.

    The overlap is the end of one chunk and the start of the next, so the two transcripts should share a run of
    words there. Of all common runs of the previous chunk's words and the next chunk's, take the longest, and of
    equally long ones the one closest to the seam (a lone common word far from it is a coincidence, not the
    overlap); cut in its middle. Nothing in common: concatenate.
    """
    words = texts[0].split() if texts else []
    prev = len(words)
    for text in texts[1:]:
        nxt = text.split()
        tail = words[len(words) - prev:]  # the previous chunk's words: the overlap is inside them
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


class Streamer:
    """on_token callback for --stream: prints the new text of row 0 as tokens arrive.

    Decoding token by token would split characters that span several byte-level tokens, so it decodes the
    whole sequence so far and prints only what is new. A long file is several chunks: each chunk streams on
    its own line prefixed with its start time, and the stitched transcript follows."""

    def __init__(self, model):
        self.model, self.ids, self.shown, self.chunks = model, [], "", 0

    def __call__(self, step, tokens):  # tokens: (B,) the ids just generated
        if step == 0:
            self.new_chunk()
        tok = int(tokens[0])
        if tok in self.model.decoder.eos_token_ids:
            return
        self.ids.append(tok)
        text = self.model.tokenizer.decode(self.ids).lstrip()
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text

    def new_chunk(self):
        if self.chunks:
            print(flush=True)
        self.ids, self.shown, self.chunks = [], "", self.chunks + 1

    def finish(self, text):
        print(flush=True)
        if self.chunks > 1:
            print(f"[stitched] {text}", flush=True)


def transcribe_batch(model, waves, args, window_s, on_token=None, batch_size=None):
    """Waveforms -> transcripts. Short files are batched together; long ones are chunked and stitched."""
    from nanoaudio.audio import batch_audio

    batch_size = batch_size or args.batch_size

    pieces, owners = [], []
    for i, w in enumerate(waves):
        for c in chunks(w, window_s, min(OVERLAP_SECONDS, OVERLAP_FRACTION * window_s)):
            pieces.append(c)
            owners.append(i)
    texts = [[] for _ in waves]
    device = torch.device(args.device)
    for i in range(0, len(pieces), batch_size):
        wave, mask = batch_audio(pieces[i:i + batch_size])
        ids = model.generate_ids(wave.to(device), mask.to(device), args.max_new_tokens, on_token=on_token,
                                 num_beams=args.beams, ctc_weight=args.ctc_weight)
        for j, row in enumerate(ids):
            texts[owners[i + j]].append(model.tokenizer.decode(row).strip())
    return [stitch(t) for t in texts]


def trace(model, item, wave, args):
    """Print each stage with its shape and the formula that predicts it, and check the two agree."""
    from nanoaudio.audio import FRAMES_PER_SECOND, SAMPLE_RATE, batch_audio
    from nanoaudio.model import build_prompt
    from nanoaudio.projector import num_tokens

    k = model.projector.config.stack
    S = len(wave)
    checks = []

    def show(stage, value, formula, ok=None, dt=None):
        mark = "" if ok is None else ("  [ok]" if ok else "  [MISMATCH]")
        t = f"  ({dt * 1000:.1f} ms)" if dt is not None else ""
        print(f"{stage:<18} {value:<34} {formula}{mark}{t}")
        if ok is not None:
            checks.append(ok)

    print(f"trace of {item}\n")
    show("samples", f"S = {S} ({S / SAMPLE_RATE:.2f} s)", f"{SAMPLE_RATE} samples/s, mono float32")
    wav, mask = batch_audio([wave])
    t0 = time.time()
    wav, mask = wav.to(args.device, next(model.encoder.parameters()).dtype), mask.to(args.device)
    with torch.inference_mode():
        frames = model.encoder(wav, mask)
    t_enc = time.time() - t0
    F_, F_formula = frames.shape[1], model.encoder.num_frames(S)  # the model's own conv stack (kernels, strides)
    show("encoder frames", f"(1, {F_}, {frames.shape[2]}) {str(frames.dtype).replace('torch.', '')}",
         f"F = conv arithmetic(S) = {F_formula}  (~{FRAMES_PER_SECOND}/s: {S / SAMPLE_RATE * FRAMES_PER_SECOND:.1f})",
         F_ == F_formula, t_enc)
    n_tok = num_tokens(F_, k)
    show("stacked frames", f"(1, {n_tok}, {k * frames.shape[2]})", f"ceil(F / k) = ceil({F_} / {k}) = {n_tok}, "
         f"width k*Ce = {k}*{frames.shape[2]}")
    t0 = time.time()
    with torch.inference_mode():
        frame_mask = model.encoder.frame_mask(mask)
        tokens, token_mask = model.projector(frames.to(model.projector_dtype), frame_mask)
    show("audio tokens", f"(1, {tokens.shape[1]}, {tokens.shape[2]})",
         f"Linear(k*Ce -> Cd={model.decoder.config.hidden_size}), {FRAMES_PER_SECOND / k:.0f} tokens/s",
         tokens.shape[1] == n_tok, time.time() - t0)
    ids, start, _ = build_prompt(model.tokenizer, model.family, n_tok, None, model.config.instruction)
    show("prompt tokens", f"T = {len(ids)} = {len(ids) - n_tok} text + {n_tok} audio",
         f"audio slots at positions {start}..{start + n_tok - 1}", len(ids) - n_tok >= 0)
    t0 = time.time()
    out = model.generate_ids(wav.to(args.device), mask.to(args.device), args.max_new_tokens, num_beams=args.beams,
                             ctc_weight=args.ctc_weight)[0]
    dt = time.time() - t0
    show("generated tokens", f"N = {len(out)}", f"{decoding(args)}, KV cache, {len(out) / max(dt, 1e-9):.1f} tokens/s",
         None, dt)
    text = model.tokenizer.decode(out).strip()
    show("text", repr(text), f"{len(text.split())} words")
    print(f"\nall counts match their formulas: {all(checks)}")
    return text, all(checks)


def evaluate(model, args, window_s):
    """--eval: transcribe labeled data the way files are transcribed, print a few pairs and the WER."""
    from nanoaudio.data import open_dataset
    from nanoaudio.text import normalize_text, wer

    dataset = open_dataset(args.eval)
    examples = list(itertools.islice(dataset, args.eval_samples or None))
    t0 = time.time()
    hyps = transcribe_batch(model, [ex.audio for ex in examples], args, window_s, batch_size=max(args.batch_size, 8))
    refs, hyps = [normalize_text(ex.text) for ex in examples], [normalize_text(h) for h in hyps]
    for ref, hyp in list(zip(refs, hyps))[:3]:
        print(f"ref: {ref}\nhyp: {hyp}")
    seconds = sum(ex.seconds for ex in examples)
    print(f"WER {100 * wer(refs, hyps):.2f}% on {len(examples)} utterances of {dataset.name} ({decoding(args)}; "
          f"{seconds / (time.time() - t0):.0f} s of audio per second)")
    if dataset.skipped:
        print(f"skipped: {dataset.skipped_report()}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    from nanoaudio.load import parse_dtype
    from nanoaudio.model import ASRModel

    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED
    if args.checkpoint is None:
        print("nanoaudio: using the bundled tiny model (trained on synthetic espeak-ng speech: it transcribes digit "
              "strings, sentences from its 257-word vocabulary with some errors, general speech not at all). Pass "
              "--checkpoint DIR for a model trained with train.py.", file=sys.stderr)
    model = ASRModel.load(ckpt, dtype=parse_dtype(args.dtype), device=args.device)
    window_s = args.window or model.config.window_seconds
    if args.eval:
        return evaluate(model, args, window_s)
    items = list(find_audio(args.inputs))
    failed = 0

    if args.trace:
        try:
            _, ok = trace(model, items[0], read(items[0]), args)
        except NanoaudioError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0 if ok else 1

    # read everything that reads; report the rest and carry on
    waves = []
    for item in items:
        try:
            waves.append((item, read(item)))
        except NanoaudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    batch_size = 1 if args.stream else args.batch_size  # streaming shows one file's tokens at a time
    for i in range(0, len(waves), batch_size):
        group = waves[i:i + batch_size]
        on_token = Streamer(model) if args.stream else None
        t0 = time.time()
        texts = transcribe_batch(model, [w for _, w in group], args, window_s, on_token, batch_size)
        dt = (time.time() - t0) / len(group)
        if args.stream:
            on_token.finish(texts[0])
        for (item, wave), text in zip(group, texts):
            seconds = len(wave) / 16000
            if args.json:
                print(json.dumps({"path": item, "text": text, "audio_seconds": round(seconds, 3),
                                  "compute_seconds": round(dt, 4), "rtf": round(dt / seconds, 5)}))
            elif args.stream:
                continue
            elif len(items) > 1:
                print(f"{item}\t{text}")
            else:
                print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NanoaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
