"""The course's two workshop exercises (class 3), with true numbers: every count comes from a real module.

    python -m nanoaudio.compare projectors [--seconds 3]
    python -m nanoaudio.compare encoders [--stack 5]
    python -m nanoaudio.compare decoders [--lora-r 8 --lora-targets q_proj,k_proj,v_proj,o_proj]
                                         [--batch-size 8 --seconds 20 --dtype bf16]

- projectors (Exercise 1): the course's four SwiGLU configurations, then the linear projector it actually
  teaches, at real encoder/decoder widths. Each row instantiates the real AudioProjector on the meta device
  (shapes only, no memory) and counts sum(p.numel()); audio tokens come from the real HuBERT frame count.
  The course's printed numbers are shown beside ours, with the reason wherever they differ.
- decoders (Exercise 2): Qwen3-0.6B/1.7B/4B/8B, SmolLM3-3B, Llama-3.2-1B/3B from their real config.json files
  (shipped in nanoaudio/configs/, so this works offline), each built on the meta device: parameters, shape,
  the projector each one needs from hubert-xlarge, LoRA parameters for the chosen rank and targets, and the
  memory of a training step from nanoaudio.budget (the same code train.py prints before training).
- encoders: hubert-large/xlarge and whisper-large-v3/-turbo/small/base/tiny from their real config.json: parameters
  (the real HubertEncoder / WhisperEncoder on the meta device), frames and tokens per second, and the linear
  projector each needs for Qwen3-8B (4096-d) and SmolLM3-3B (2048-d).
"""

import argparse
import json
import sys
from pathlib import Path

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.budget import GiB, decoder_params, encoder_frames, estimate, projector_params
from nanoaudio.config import DecoderConfig, ProjectorConfig
from nanoaudio.lora import DEFAULT_TARGETS, TARGETS

CONFIGS = Path(__file__).resolve().parent / "configs"
DECODER_NAMES = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "smollm3-3b", "llama-3.2-1b", "llama-3.2-3b"]

# The course's Exercise 1 (its configs and its "Expected output": params, frames, ms/frame, compression).
# Its inputs: SwiGLU, encoder 1280, "llm_dim 2048", and 50 frames per second of audio, floor-divided by k.
COURSE_PROJECTORS = [
    ("Actual (Tiny Audio)", 5, 8192, 121_643_264, 30, 100.0, 5.0),
    ("Smaller Projector", 5, 4096, 60_829_696, 30, 100.0, 5.0),
    ("More Downsampling", 8, 8192, 121_651_456, 18, 166.7, 8.3),
    ("Less Downsampling", 2, 8192, 121_634_880, 75, 40.0, 2.0),
]
# The course's Exercise 2 decoder list: (its name, its params, hidden, vocab) -> the real model it means.
COURSE_DECODERS = {
    "qwen3-8b": ("Qwen3-8B", 8e9, 2048, 151936),
    "smollm3-3b": ("SmolLM3-3B", 3e9, 1536, 49152),
    "llama-3.2-3b": ("Llama-3.2-3B", 3e9, 3072, 128256),
    "qwen3-1.7b": ("Qwen3-1.5B (does not exist)", 1.5e9, 1536, 151936),
}


def shipped_config(name: str) -> dict:
    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise NanoaudioError(f"no shipped config {name!r} in {CONFIGS}; known: {', '.join(known)}")
    return json.loads(path.read_text())


def decoder_config(name: str) -> DecoderConfig:
    return DecoderConfig.from_hf_config(shipped_config(name), source=CONFIGS / f"{name}.json")


def encoder_config(name: str):
    """A shipped encoder config, HuBERT or Whisper by its model_type."""
    from nanoaudio.config import EncoderConfig, WhisperEncoderConfig

    d = shipped_config(name)
    cls = WhisperEncoderConfig if d.get("model_type") == "whisper" else EncoderConfig
    return cls.from_hf_config(d, source=CONFIGS / f"{name}.json")


# -----------------------------------------------------------------------------
# Exercise 1: projectors


def projector_row(name, kind, k, hidden, Ce, Cd, frames, seconds) -> dict:
    cfg = ProjectorConfig(kind=kind, stack=k, encoder_dim=Ce, decoder_dim=Cd, **({"hidden": hidden} if hidden else {}))
    tokens = -(-frames // k)  # the projector zero-pads the tail: ceil(F / k)
    return dict(name=name, kind=kind, k=k, hidden=hidden if kind == "swiglu" else None, Ce=Ce, Cd=Cd,
                params=projector_params(cfg), tokens=tokens, ms_per_token=seconds * 1000 / tokens,
                compression=frames / tokens)


def projector_tables(seconds: float = 3.0, encoder: str = "hubert-xlarge"):
    """-> (frames, course rows with the course's numbers, real-dimension rows)."""
    enc = encoder_config(encoder)
    frames = encoder_frames(enc, int(round(seconds * SAMPLE_RATE)))
    if frames < 1:
        raise NanoaudioError(f"--seconds {seconds}: shorter than one encoder frame (25 ms)")
    course = []
    for name, k, hidden, *theirs in COURSE_PROJECTORS:
        row = projector_row(name, "swiglu", k, hidden, 1280, 2048, frames, seconds)
        # what the course's script computes for this duration (50 frames/s, floor) and what it printed
        c_frames = int(seconds * 50)
        row["course_formula_params"] = 1280 * k + 2048 + 2 * 1280 * k * hidden + hidden * 2048
        row["course"] = dict(zip(("params", "tokens", "ms_per_token", "compression"), theirs))
        row["course_script"] = dict(tokens=c_frames // k, ms_per_token=seconds * 1000 / max(c_frames // k, 1),
                                    compression=c_frames / max(c_frames // k, 1))
        course.append(row)
    xl, qwen8b = 1280, decoder_config("qwen3-8b").hidden_size
    large = encoder_config("hubert-large").hidden_size if encoder != "hubert-large" else enc.hidden_size
    real = [
        projector_row("course's linear, 2048-d", "linear", 5, 0, xl, 2048, frames, seconds),
        projector_row("linear -> Qwen3-8B", "linear", 5, 0, xl, qwen8b, frames, seconds),
        projector_row("linear k=2 -> Qwen3-8B", "linear", 2, 0, xl, qwen8b, frames, seconds),
        projector_row("linear k=8 -> Qwen3-8B", "linear", 8, 0, xl, qwen8b, frames, seconds),
        projector_row("linear hubert-large -> 8B", "linear", 5, 0, large, qwen8b, frames, seconds),
        projector_row("swiglu 4096 -> Qwen3-8B", "swiglu", 5, 4096, xl, qwen8b, frames, seconds),
        projector_row("swiglu 8192 -> Qwen3-8B", "swiglu", 5, 8192, xl, qwen8b, frames, seconds),
    ]
    return frames, course, real


def print_projectors(seconds: float, encoder: str, out=None):
    frames, course, real = projector_tables(seconds, encoder)
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    samples = int(round(seconds * SAMPLE_RATE))
    p(f"Exercise 1, recomputed: {seconds:g} s = {samples} samples -> {frames} {encoder} frames "
      f"(conv arithmetic; the course assumes {int(seconds * 50)})")
    p("parameters: the real AudioProjector on the meta device; tokens = ceil(frames / k) (zero-padded tail)")
    p("")
    p(f"{'configuration':<21} {'kind':<6} {'k':>2} {'hidden':>6} {'Ce->Cd':>10} {'parameters':>13} "
      f"{'course says':>13} {'tokens':>6} {'course':>6} {'ms/token':>8} {'course':>6} {'compr.':>6} {'course':>6}")
    printed = seconds == 3.0  # the course printed its table for 3 s; other durations: what its script computes
    if not printed:
        p(f"(course columns: the parameters it printed; tokens, ms/token and compression its script gives for "
          f"{seconds:g} s)")
    for r in course:
        c = r["course"] if printed else dict(r["course_script"], params=r["course"]["params"])
        p(f"{r['name']:<21} {r['kind']:<6} {r['k']:>2} {r['hidden']:>6} {r['Ce']:>4}->{r['Cd']:<5} "
          f"{r['params']:>13,} {c['params']:>13,} {r['tokens']:>6} {c['tokens']:>6} {r['ms_per_token']:>8.1f} "
          f"{c['ms_per_token']:>6.1f} {r['compression']:>5.2f}x {c['compression']:>5.1f}x")
    p("")
    p("where the course's numbers differ, and why:")
    for r in course:
        c = r["course"] if printed else dict(r["course_script"], params=r["course"]["params"])
        cs = r["course_script"]
        if c["params"] != r["params"]:
            p(f"- {r['name']}: the course prints {c['params']:,} parameters, but its own formula "
              f"(norms + gate + up + down) gives {r['course_formula_params']:,}, which the real module confirms")
        if c["tokens"] != r["tokens"]:
            p(f"- {r['name']}: {r['tokens']} tokens, not {c['tokens']}: {frames} real frames (not "
              f"{int(seconds * 50)}), and a zero-padded last token (ceil, not floor)")
        if cs["tokens"] != c["tokens"]:
            p(f"- {r['name']}: the course's script would itself print {cs['tokens']} here")
    p(f"- every row: the 'llm_dim 2048' the course uses for Qwen3-8B is wrong; its hidden size is {real[1]['Cd']}")
    p(f"- compression is frames per token: {frames}/{course[0]['tokens']} = {course[0]['compression']:.2f}x, "
      f"not 5.0x: the last token is partly padding")
    p("- the lecture's projector is the LINEAR one ('~13M'); the exercise's 'Actual (Tiny Audio)' row is SwiGLU")
    p("")
    p("The linear projector the course teaches, at real widths (hubert-xlarge 1280, hubert-large 1024, "
      "Qwen3-8B 4096):")
    p(f"{'configuration':<27} {'kind':<6} {'k':>2} {'hidden':>6} {'Ce->Cd':>10} {'parameters':>13} {'tokens':>6} "
      f"{'ms/token':>8} {'compr.':>6} {'tokens/s':>8}")
    for r in real:
        hid = r["hidden"] if r["hidden"] else "-"
        p(f"{r['name']:<27} {r['kind']:<6} {r['k']:>2} {hid:>6} {r['Ce']:>4}->{r['Cd']:<5} {r['params']:>13,} "
          f"{r['tokens']:>6} {r['ms_per_token']:>8.1f} {r['compression']:>5.2f}x {r['tokens'] / seconds:>8.2f}")


# -----------------------------------------------------------------------------
# Exercise 2: decoders


def decoder_rows(names=DECODER_NAMES, lora_r=8, lora_targets=DEFAULT_TARGETS,
                 batch_size=8, seconds=20.0, dtype="bf16", encoder="hubert-xlarge", stack=5) -> list[dict]:
    enc = encoder_config(encoder)
    rows = []
    for name in names:
        cfg = decoder_config(name)
        params, lora = decoder_params(cfg, lora_r, tuple(lora_targets))
        pcfg = ProjectorConfig(kind="linear", stack=stack, encoder_dim=enc.hidden_size, decoder_dim=cfg.hidden_size)
        kw = dict(lora_r=lora_r, lora_targets=lora_targets, batch_size=batch_size, audio_seconds=seconds, dtype=dtype)
        rows.append(dict(
            name=name, config=cfg, params=params, lora=lora,
            projector_linear=projector_params(pcfg),
            projector_swiglu=projector_params(ProjectorConfig(kind="swiglu", stack=stack,
                                                              encoder_dim=enc.hidden_size,
                                                              decoder_dim=cfg.hidden_size, hidden=8192)),
            budget=estimate(cfg, enc, pcfg, grad_checkpointing=False, **kw),
            budget_ckpt=estimate(cfg, enc, pcfg, grad_checkpointing=True, **kw),
        ))
    return rows


def course_memory(name, real: DecoderConfig) -> tuple[float, float]:
    """The course's Exercise 2 memory estimate for one of its decoders, and ours for the same setting
    (rank 64 on q/k/v/o, its 122M SwiGLU projector, batch 8 x 20 s, bf16): bytes."""
    _, _, hidden, _ = COURSE_DECODERS[name]
    lora = 4 * 2 * hidden * 64 * 32  # its formula: 4 projections, rank 64, "32 layers"
    course = (122e6 + 2e6 + lora) * 4 * 3  # trainable x (weights + gradients + Adam), 4 bytes each
    enc = encoder_config("hubert-xlarge")
    pcfg = ProjectorConfig(kind="swiglu", stack=5, encoder_dim=enc.hidden_size, decoder_dim=real.hidden_size)
    ours = estimate(real, enc, pcfg, lora_r=64, batch_size=8, audio_seconds=20.0, dtype="bf16")
    return course, ours.total_bytes


def print_decoders(args, out=None):
    targets = tuple(args.lora_targets.split(","))
    rows = decoder_rows(args.decoders.split(","), args.lora_r, targets, args.batch_size, args.seconds, args.dtype,
                        args.encoder, args.stack)
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    enc_dim = encoder_config(args.encoder).hidden_size
    p("Exercise 2, recomputed: decoders built from their real config.json on the meta device")
    p(f"projectors from {args.encoder} ({enc_dim}-d, k={args.stack}); linear = the course's, swiglu = hidden 8192")
    p("")
    p(f"{'model':<13} {'parameters':>14} {'hidden':>6} {'layers':>6} {'heads/kv':>8} {'head_dim':>8} {'vocab':>7} "
      f"{'tied':>4} {'proj linear':>12} {'proj swiglu':>12} {'LoRA':>11}")
    for r in rows:
        c = r["config"]
        p(f"{r['name']:<13} {r['params']:>14,} {c.hidden_size:>6} {c.num_hidden_layers:>6} "
          f"{f'{c.num_attention_heads}/{c.num_key_value_heads}':>8} {c.head_dim:>8} {c.vocab_size:>7} "
          f"{'yes' if c.tie_word_embeddings else 'no':>4} {r['projector_linear']:>12,} {r['projector_swiglu']:>12,} "
          f"{r['lora']:>11,}")
    if args.lora_r:
        p(f"LoRA: r={args.lora_r} on {','.join(targets)}, counted on the real modules (r x (in + out) per linear)")
    p("")
    p(f"training memory (GiB): batch {args.batch_size} x {args.seconds:g} s audio, {args.dtype} frozen weights and "
      f"activations, fp32 trainable weights + gradients + AdamW; linear projector{' + LoRA' if args.lora_r else ''} "
      f"trained")
    p(f"{'model':<13} {'tokens':>6} {'trainable':>11} {'weights':>8} {'grad+adam':>9} {'activ.':>8} {'total':>8} "
      f"{'activ.ckpt':>10} {'total ckpt':>10} {'KV cache':>8}")
    for r in rows:
        b, k = r["budget"], r["budget_ckpt"]
        star = lambda x: "*" if x.activations_bytes == x.encoder_peak_bytes else " "  # noqa: E731
        p(f"{r['name']:<13} {b.seq_len:>6} {b.params_trainable:>11,} {b.weights_bytes / GiB:>8.2f} "
          f"{(b.grads_bytes + b.optimizer_bytes) / GiB:>9.2f} {b.activations_bytes / GiB:>7.2f}{star(b)} "
          f"{b.total_bytes / GiB:>8.2f} {k.activations_bytes / GiB:>9.2f}{star(k)} {k.total_bytes / GiB:>10.2f} "
          f"{b.kv_cache_bytes / GiB:>8.2f}")
    p("tokens: decoder positions per sample (prompt + audio tokens + transcript); ckpt: gradient checkpointing; "
      "KV cache: inference, whole batch")
    p("weights include the frozen encoder; + CUDA context (~0.5-1 GiB). The formulas: nanoaudio/budget.py")
    if any(x.activations_bytes == x.encoder_peak_bytes for r in rows for x in (r["budget"], r["budget_ckpt"])):
        p("* the frozen encoder's first conv layer (batch x 50 frames/s x 5 x 512 channels) sets this peak, not "
          "the decoder")
    p("")
    p("where the course's Exercise 2 differs, and why:")
    for i, (name, (cname, cparams, chidden, cvocab)) in enumerate(COURSE_DECODERS.items()):
        real = decoder_config(name)
        n, _ = decoder_params(real)
        diffs = []
        theirs = 1280 * 5 + chidden + 2 * 1280 * 5 * 8192 + 8192 * chidden  # its SwiGLU projector, its hidden
        ours = projector_params(ProjectorConfig(kind="swiglu", stack=5, encoder_dim=1280,
                                                decoder_dim=real.hidden_size, hidden=8192))
        if theirs != ours:
            diffs.append(f"SwiGLU projector {theirs / 1e6:.1f}M -> {ours / 1e6:.1f}M")
        if chidden != real.hidden_size:
            diffs.append(f"hidden {chidden} -> {real.hidden_size}")
        if cvocab != real.vocab_size:
            diffs.append(f"vocab {cvocab:,} -> {real.vocab_size:,}")
        if abs(cparams - n) / n > 0.05:
            diffs.append(f"params {cparams / 1e9:.1f}B -> {n / 1e9:.2f}B")
        if i < 3:  # the course estimates memory for its first three decoders only
            if real.num_hidden_layers != 32:
                diffs.append(f"layers 32 (its memory formula) -> {real.num_hidden_layers}")
            course, ours = course_memory(name, real)
            diffs.append(f"training memory {course / 1e9:.1f} GB -> {ours / GiB:.1f} GiB")
        p(f"- {cname}: " + "; ".join(diffs))
    p("- the course's memory formula counts only trainable parameters x 12 bytes; it leaves out the frozen decoder")
    p("  and encoder weights and all activations, which are most of the memory ('ours' above: its rank 64 on q/k/v/o,")
    p("  its 122M SwiGLU projector, batch 8 x 20 s, bf16, no checkpointing)")


# -----------------------------------------------------------------------------
# encoders: the course's "1280 dimensions from HuBERT (or Whisper)", for every real encoder

ENCODER_NAMES = ["hubert-large", "hubert-xlarge", "whisper-large-v3", "whisper-large-v3-turbo", "whisper-small",
                 "whisper-base", "whisper-tiny"]
PROJECTOR_DECODERS = ("qwen3-8b", "smollm3-3b")


def encoder_rows(names=ENCODER_NAMES, stack=5, decoders=PROJECTOR_DECODERS) -> list[dict]:
    """Per encoder: parameters (the real module on the meta device), shape, frames and audio tokens in 30 s (the
    real frame arithmetic), and the linear projector (k = stack) to each decoder's width (from its config.json)."""
    from nanoaudio.budget import encoder_params

    widths = {d: decoder_config(d).hidden_size for d in decoders}
    rows = []
    for name in names:
        cfg = encoder_config(name)
        whisper = hasattr(cfg, "num_mel_bins")
        frames = encoder_frames(cfg, 30 * SAMPLE_RATE)
        rows.append(dict(
            name=name, config=cfg, params=encoder_params(cfg), Ce=cfg.hidden_size,
            layers=cfg.encoder_layers if whisper else cfg.num_hidden_layers,
            heads=cfg.encoder_attention_heads if whisper else cfg.num_attention_heads,
            input=f"log-mel {cfg.num_mel_bins}, raw" if whisper else "waveform, normalized",
            frames_30s=frames, tokens_30s=-(-frames // stack),
            proj={d: projector_params(ProjectorConfig(kind="linear", stack=stack, encoder_dim=cfg.hidden_size,
                                                      decoder_dim=Cd)) for d, Cd in widths.items()},
        ))
    return rows


def print_encoders(stack: int = 5, out=None):
    rows = encoder_rows(stack=stack)
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    widths = {d: decoder_config(d).hidden_size for d in PROJECTOR_DECODERS}
    p("Encoders from their real config.json (nanoaudio/configs/), each built on the meta device; frames and tokens for")
    p(f"30 s of audio (the real frame arithmetic); the course's linear projector, k={stack}, to each decoder's width")
    p("")
    cols = "".join(f" {'proj -> ' + d:>18}" for d in PROJECTOR_DECODERS)
    p(f"{'encoder':<23} {'parameters':>13} {'width':>5} {'layers':>6} {'heads':>5} {'input':<20} {'frames':>6} "
      f"{'frames/s':>8} {'tokens/s':>8}{cols}")
    for r in rows:
        proj = "".join(f" {r['proj'][d]:>18,}" for d in PROJECTOR_DECODERS)
        p(f"{r['name']:<23} {r['params']:>13,} {r['Ce']:>5} {r['layers']:>6} {r['heads']:>5} {r['input']:<20} "
          f"{r['frames_30s']:>6} {r['frames_30s'] / 30:>8.2f} {r['tokens_30s'] / 30:>8.2f}{proj}")
    p("decoder widths from their config.json: " + ", ".join(f"{d} {w}" for d, w in widths.items()))
    p("- 1280 dimensions: hubert-xlarge, whisper-large-v3 and -turbo only (turbo = large-v3's encoder shape, its own")
    p("  weights, with a 4-layer decoder); hubert-large 1024, whisper-small 768, -base 512, -tiny 384")
    p("- HuBERT: a conv stack on the waveform, (S - 400) // 320 + 1 frames (1499 in 30 s); Whisper: a log-mel")
    p("  spectrogram (hop 10 ms), then a stride-2 conv: (ceil(S / 160) - 1) // 2 + 1 frames (1500 in 30 s)")
    p("- parameters: the encoder only (Whisper's text decoder is never loaded); the projector: its Linear + 2 RMSNorms")


# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nanoaudio.compare", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    pp = sub.add_parser("projectors", help="Exercise 1: projector configurations")
    pp.add_argument("--seconds", type=float, default=3.0, help="audio duration (the course: 3 s)")
    pp.add_argument("--encoder", default="hubert-xlarge",
                    help="a shipped encoder config: hubert-xlarge, hubert-large, whisper-large-v3(-turbo), "
                         "whisper-small/-base/-tiny (see `encoders`)")
    pe = sub.add_parser("encoders", help="the real encoders: parameters, frames, the projector each needs")
    pe.add_argument("--stack", type=int, default=5, help="projector stack factor k")
    pd = sub.add_parser("decoders", help="Exercise 2: decoder models and training memory")
    pd.add_argument("--decoders", default=",".join(DECODER_NAMES), help="comma-separated shipped decoder configs")
    pd.add_argument("--encoder", default="hubert-xlarge",
                    help="a shipped encoder config: hubert-xlarge, hubert-large, whisper-large-v3(-turbo), "
                         "whisper-small/-base/-tiny (see `encoders`)")
    pd.add_argument("--stack", type=int, default=5, help="projector stack factor k")
    pd.add_argument("--lora-r", type=int, default=8, help="LoRA rank (0: projector only)")
    pd.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj",
                    help=f"comma-separated decoder linears ({','.join(TARGETS)})")
    pd.add_argument("--batch-size", type=int, default=8, help="utterances per training step (train.py default)")
    pd.add_argument("--seconds", type=float, default=20.0, help="audio per utterance (train.py's longest)")
    pd.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="training precision")
    args = ap.parse_args(argv)
    try:
        if args.what == "projectors":
            print_projectors(args.seconds, args.encoder)
        elif args.what == "encoders":
            if args.stack < 1:
                raise NanoaudioError("--stack must be positive")
            print_encoders(args.stack)
        else:
            bad = [t for t in args.lora_targets.split(",") if t not in TARGETS]
            if bad:
                raise NanoaudioError(f"--lora-targets: {bad} are not decoder linears; choose from {','.join(TARGETS)}")
            if args.batch_size < 1 or args.seconds <= 0 or args.stack < 1 or args.lora_r < 0:
                raise NanoaudioError("--batch-size, --seconds and --stack must be positive, --lora-r >= 0")
            print_decoders(args)
    except NanoaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
