"""
Train a nanoaudio speech recognizer: HuBERT (frozen) -> AudioProjector -> LoRA-tuned decoder.

CPU, no downloads: the tiny preset synthesizes speech with espeak-ng and trains every part from scratch
    python train.py --preset tiny --minutes 10
The bundled model (about 90 minutes on 2 cores; the README's results section has the exports between them):
    python train.py --preset tiny --minutes 52 --synth-sentences 0.9 --rejoin-lr-scale 0.3 --encoder-first 0.3
    python train.py --preset tiny --init out/tiny-52 --out out/tiny-ft --minutes 25 --lr 5e-4 --encoder-first 0 \
        --easy-steps 0 --synth-sentences 0.9 --synth-non-speech 0.06 --synth-surround 0.06
Fine-tune a saved model (the bundled one, or your own) on your data: --init FOLDER

One GPU, the course's recipe on LibriSpeech (projector + LoRA trained; encoder and decoder frozen):
    python train.py --decoder smollm3-3b --data /data/LibriSpeech/train-clean-100 \\
        --eval-data /data/LibriSpeech/dev-clean --precision bf16 --grad-checkpointing
Several GPUs (DistributedDataParallel, one process per GPU, each on a disjoint shard of the data):
    torchrun --nproc_per_node=8 train.py --decoder qwen3-8b --data openslr/librispeech_asr ...
Resume exactly where a run stopped (its settings, model, optimizer, schedule, clock, RNG and data position):
    python train.py --resume out/tiny/last

Read it top to bottom: the flags, the schedule (a pure function of the step), the model and the data, then the
loop: "once in a while evaluate or save; then one step". Checkpoints: nanoaudio/checkpoint.py.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nanoaudio import NanoaudioError
from nanoaudio.checkpoint import load_trainer_state, prepare_out, read_trainer_state, save_checkpoint
from nanoaudio.cli import (check_device, float_in, fraction, int_in, non_negative_float, non_negative_int,
                           positive_float, positive_int, run_cli)

# -----------------------------------------------------------------------------
# flags: each declared once, its default and its help side by side. Presets override the defaults, a resumed
# run's own settings override the preset, and flags given explicitly override everything.


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", default=None, choices=list(PRESETS), help="named recipe; flags given explicitly override it")
    # the model
    a("--decoder", default="qwen3-8b", help="decoder LLM: qwen3-8b, smollm3-3b, qwen3-0.6b/1.7b/4b, llama-3.2-1b/3b, "
      "a folder or a hub id")
    a("--encoder", default="hubert-xlarge", help="audio encoder: hubert-xlarge, hubert-large, whisper-large-v3, "
      "whisper-large-v3-turbo, whisper-small/base/tiny, a folder or a hub id")
    a("--true-length", action="store_true", help="Whisper encoders: encode each utterance's true length (Ultravox's "
      "choice) instead of padding it to 30 s (Whisper's training); recorded in the checkpoint")
    a("--projector", default="linear", choices=["linear", "swiglu", "mlp"], help="the course's (linear) or its "
      "exercise (swiglu)")
    a("--stack", default=5, type=positive_int, help="encoder frames stacked into one audio token (k): 50/s -> 10/s")
    a("--lora-r", default=8, type=non_negative_int, help="LoRA rank (0: no LoRA); the course: 8")
    a("--lora-alpha", default=16.0, type=positive_float, help="LoRA alpha (scale alpha/r)")
    a("--lora-dropout", default=0.05, type=fraction, help="dropout on the LoRA branch")
    a("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="comma-separated decoder linears to adapt "
      "(q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    a("--ctc-weight", default=0.0, type=non_negative_float, help="weight of the CTC loss on the encoder frames "
      "(needs a CTC head; the tiny preset: 0.5)")
    # the data
    a("--data", default=None, help="training data: LibriSpeech folder, JSONL manifest, parquet file/folder or HF id")
    a("--eval-data", default=None, help="held-out data in the same formats, for WER (comma-separated: several)")
    a("--easy-data", default=None, help="curriculum: data for the decoder's first --easy-steps steps (the tiny "
      "preset: its digit strings)")
    a("--easy-steps", default=0, type=non_negative_int, help="steps on --easy-data before --data (0: no curriculum)")
    a("--synth-sentences", default=0.5, type=fraction, help="the tiny preset's synthetic training utterances: the "
      "share of sentences, the rest digit strings (the bundled model: 0.9)")
    a("--synth-non-speech", default=0.0, type=fraction, help="the tiny preset's synthetic clips where nobody "
      "speaks (noise, tones, music...; the empty transcript), as a share of all (the bundled model's fine-tune: "
      "0.06; a 10-minute run from scratch learns far less speech with them)")
    a("--synth-surround", default=0.0, type=fraction, help="the tiny preset's spoken utterances with noise or "
      "music around and under them, as a share (the bundled model's fine-tune: 0.06)")
    a("--max-audio-seconds", default=20.0, type=positive_float, help="skip training utterances longer than this")
    # the run and its schedule
    a("--out", default="out/run", help="output folder (checkpoints in OUT/last, log.jsonl, loss.png)")
    a("--steps", default=2000, type=positive_int, help="optimizer steps")
    a("--minutes", default=None, type=positive_float, help="wall-clock budget; training stops (and saves) when it "
      "is spent, and the learning rate follows elapsed time")
    a("--batch-size", default=8, type=positive_int, help="utterances per micro-batch (per process)")
    a("--grad-accum", default=1, type=positive_int, help="micro-batches accumulated per optimizer step")
    a("--lr", default=1e-4, type=positive_float, help="peak learning rate (AdamW), reached after --warmup steps, "
      "then cosine decay to 10%%")
    a("--warmup", default=100, type=non_negative_int, help="linear warmup steps")
    a("--weight-decay", default=0.01, type=non_negative_float, help="AdamW weight decay on matrices (not on norms)")
    a("--clip", default=1.0, type=positive_float, help="gradient-norm clipping")
    a("--encoder-first", default=0.0, type=float_in(0.0, 1.0, hi_open=True), help="share of the run that trains "
      "the encoder alone on its CTC loss; the rest trains projector + decoder on it, frozen, each stage with its "
      "own warmup and cosine (0: one stage; the bundled model: 0.3)")
    a("--encoder-rejoin", default=-1, type=int_in(-1), help="with --encoder-first: from this step of stage 2 on, "
      "the encoder trains again with the rest (-1: frozen to the end; the tiny preset: 700)")
    a("--rejoin-lr-scale", default=1.0, type=positive_float, help="the rejoined encoder's learning rate, as a share "
      "of stage 2's (the bundled model: 0.3)")
    a("--seed", default=1337, type=non_negative_int, help="random seed (data order, dropout, init)")
    # evaluation and checkpoints
    a("--eval-every", default=500, type=non_negative_int, help="evaluate WER every N steps (0: only at the end)")
    a("--eval-samples", default=200, type=positive_int, help="held-out utterances per evaluation (greedy)")
    a("--save-every", default=500, type=non_negative_int, help="write OUT/last every N steps (0: only at the end)")
    a("--resume", default=None, help="checkpoint folder to continue exactly (e.g. out/run/last); its settings apply")
    a("--init", default=None, help="fine-tune a saved model: its weights, architecture and tokenizer (a train.py "
      "checkpoint or an exported model, e.g. nanoaudio/assets/tiny-asr) replace the model flags; the optimizer, "
      "schedule and data start fresh (unlike --resume)")
    # the machine
    a("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    a("--precision", default="bf16", choices=["auto", "bf16", "fp32"], help="bf16 (autocast, frozen weights "
      "stored in bf16), fp32, or auto: bf16 on CUDA and on CPUs with AMX bf16 matmuls, else fp32")
    a("--grad-checkpointing", action="store_true", help="recompute decoder activations in backward (less memory)")
    a("--compile", action="store_true", help="torch.compile the decoder")
    return p


PRESETS = {
    # Everything from scratch on CPU in minutes: a small HuBERT-style encoder with a CTC head, the
    # AudioProjector and a small Qwen3-style decoder, on synthetic speech (see nanoaudio/tiny.py).
    # Small batches, many steps: on 2 cores a step of 8 utterances takes ~0.2 s with the encoder alone or frozen,
    # ~0.3 s once it rejoins, and this model learns more per second from more, noisier steps than from fewer,
    # larger ones.
    "tiny": dict(decoder="tiny", encoder="tiny", out="out/tiny", steps=100_000, batch_size=8, lr=3e-3,
                 warmup=100, precision="auto", eval_every=2500, eval_samples=100, save_every=500,
                 ctc_weight=0.5, encoder_first=0.4, easy_steps=700, encoder_rejoin=700,
                 max_audio_seconds=8.0, lora_r=0, weight_decay=0.0),
    # The same with a Whisper-style encoder (log-mel front end; nanoaudio/tiny.py WHISPER_ENCODER). It has no CTC
    # head, so it trains in one stage, everything together, the decoder's first 700 steps on digit strings.
    "tiny-whisper": dict(decoder="tiny", encoder="tiny-whisper", out="out/tiny-whisper", steps=100_000,
                         batch_size=8, lr=3e-3, warmup=100, precision="auto", eval_every=2500, eval_samples=100,
                         save_every=500, ctc_weight=0.0, encoder_first=0.0, easy_steps=700, max_audio_seconds=8.0,
                         lora_r=0, weight_decay=0.0),
    # The course's recipe on LibriSpeech train-clean-100 (one 80 GB GPU).
    "librispeech-qwen3-8b": dict(decoder="qwen3-8b", encoder="hubert-xlarge", out="out/qwen3-8b", steps=20_000,
                                 batch_size=8, grad_accum=4, lr=1e-4, warmup=500, grad_checkpointing=True),
    "librispeech-smollm3-3b": dict(decoder="smollm3-3b", encoder="hubert-xlarge", out="out/smollm3-3b",
                                   steps=20_000, batch_size=16, grad_accum=2, lr=1e-4, warmup=500),
}


def parse_args(argv=None):
    p = build_parser()
    defaults = {a.dest: a.default for a in p._actions if a.dest != "help"}
    p.set_defaults(**{k: None for k in defaults})  # now a value that is not None was given explicitly
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    merged = dict(defaults)
    if given.get("preset"):
        merged |= PRESETS[given["preset"]]
    if given.get("resume"):  # `--resume FOLDER` alone continues that run: same data, batch size, schedule...
        if not (Path(given["resume"]) / "trainer_state.json").is_file():
            raise NanoaudioError(f"{given['resume']}: no trainer_state.json, not a checkpoint train.py wrote "
                                 f"(e.g. out/run/last)")
        saved = read_trainer_state(given["resume"]).get("args", {})
        merged |= {k: v for k, v in saved.items() if k in defaults}
    return argparse.Namespace(**(merged | given))


def resolve_precision(precision: str, device: torch.device) -> str:
    """--precision -> "bf16" or "fp32". auto: bf16 where it was measured faster (CUDA; a CPU with AMX: on 2 Xeon
    cores the tiny preset's encoder trained 1728 steps in 3.2 minutes, 1210 in fp32), else fp32 (CPUs without
    AMX would emulate the bf16 matmuls)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise NanoaudioError(f"--precision {precision!r}: choose bf16, fp32 or auto")
    if precision != "auto":
        return precision
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()  # (private API: absent -> fp32)
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and amx) else "fp32"


# -----------------------------------------------------------------------------
# the schedule: a pure function of the step and the run's progress (steps done / --steps, or the share of
# --minutes spent, whichever is further along). Linear warmup, then cosine decay to 10% of the peak.


def lr_at(step, progress, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one step does."""
    stage2: int | None  # the step stage 2 began at (None: stage 1 still, or one stage only)
    lr: float  # the learning rate of the projector and decoder (and of the encoder in stage 1 / one stage)
    encoder_lr: float  # the encoder's
    encoder_trains: bool  # whether the encoder gets gradients this step
    lm: bool  # whether the decoder runs (not in stage 1, where the encoder trains alone on its CTC loss)
    easy: bool  # whether the batch comes from the curriculum's --easy-data


def plan(step: int, progress: float, stage2: int | None, args, train_encoder: bool) -> Plan:
    """The stage, learning rates, trainable encoder and data source at `step`.

    One stage (--encoder-first 0): everything trains together on one warmup + cosine; the encoder as the
    model's config says (train_encoder). Two stages: the first --encoder-first share of the run trains the
    encoder alone on its CTC loss; stage 2 (from the step `progress` crosses that share, remembered in stage2)
    starts its own warmup + cosine for the projector and decoder, on the frozen encoder, which rejoins
    --encoder-rejoin steps later at --rejoin-lr-scale times their rate. The decoder's first --easy-steps steps
    (from step 0, or from the start of stage 2) read --easy-data: the curriculum.
    """
    ef = args.encoder_first
    if not ef:
        lr = lr_at(step, progress, args.warmup, args.lr)
        return Plan(None, lr, lr, train_encoder, True, step < args.easy_steps)
    if stage2 is None and progress >= ef:
        stage2 = step
    if stage2 is None:
        lr = lr_at(step, progress / ef, args.warmup, args.lr)
        return Plan(None, lr, lr, train_encoder, False, False)
    lr = lr_at(step - stage2, (progress - ef) / (1 - ef), args.warmup, args.lr)
    rejoined = args.encoder_rejoin >= 0 and step - stage2 >= args.encoder_rejoin
    return Plan(stage2, lr, lr * args.rejoin_lr_scale, rejoined, True, step - stage2 < args.easy_steps)


def expected_steps(steps, step, first_step, elapsed, budget_s):
    """The step the run will end at: --steps, or sooner if --minutes runs out first at this run's pace so far
    (elapsed: seconds this process has trained)."""
    if not budget_s or step == first_step:
        return steps
    seconds_per_step = elapsed / (step - first_step)
    return min(steps, step + int((budget_s - elapsed) / seconds_per_step))


# -----------------------------------------------------------------------------
# the model and the data


def build_model(args, device):
    from nanoaudio.config import ProjectorConfig
    from nanoaudio.model import ASRConfig, ASRModel
    from nanoaudio.projector import AudioProjector

    if args.decoder == "tiny":
        from nanoaudio.tiny import build_tiny

        return build_tiny(args, device)

    from nanoaudio.decoder import load_decoder
    from nanoaudio.encoder import load_encoder
    from nanoaudio.lora import apply_lora
    from nanoaudio.tokenizer import load_tokenizer

    # frozen weights in the training dtype: bf16 halves their memory, and autocast computes in bf16 anyway
    frozen_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    encoder = load_encoder(args.encoder, dtype=frozen_dtype, device=device)
    if args.true_length:
        if not hasattr(encoder.config, "pad_to_30s"):
            raise NanoaudioError(f"--true-length is for Whisper encoders; {args.encoder} is not one")
        encoder.config = dataclasses.replace(encoder.config, pad_to_30s=False)
    decoder = load_decoder(args.decoder, dtype=frozen_dtype, device=device)
    tokenizer = load_tokenizer(args.decoder)
    # dimensions always come from the real configs (the course's 2048 for Qwen3-8B is wrong: 4096)
    pcfg = ProjectorConfig(kind=args.projector, stack=args.stack, encoder_dim=encoder.config.hidden_size,
                           decoder_dim=decoder.config.hidden_size)
    projector = AudioProjector(pcfg).to(device)  # trained from scratch, kept in fp32 (autocast does the rest)
    lora = None
    if args.lora_r > 0:
        lora = dict(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                    targets=tuple(args.lora_targets.split(",")))
        apply_lora(decoder, **lora)
        for mod in decoder.modules():  # LoRA weights train in fp32; the frozen base stays in frozen_dtype
            if hasattr(mod, "lora_A"):
                mod.lora_A.float(), mod.lora_B.float()
    config = ASRConfig(
        encoder={"name": encoder.source, "config": encoder.config.to_hf_config()},
        decoder={"name": decoder.source, "config": decoder.config.to_hf_config()},
        projector=dataclasses.asdict(pcfg), lora=lora, ctc_weight=args.ctc_weight,
    )
    return ASRModel(encoder, projector, decoder, tokenizer, config)  # which parameters train: set_trainable


def build_data(args, model, rank, world):
    from nanoaudio.data import Batches, open_dataset

    if args.decoder == "tiny" and args.data is None:  # (both tiny presets share the synthesized data)
        from nanoaudio.tiny import tiny_data

        # DDP: rank 0 synthesizes the data; the others wait, then find it on disk (tiny_data reuses it)
        if rank > 0:
            dist.barrier()
        args.data, easy, args.eval_data = tiny_data(Path(args.out).parent / "tiny-data", seed=args.seed,
                                                    sentences=args.synth_sentences,
                                                    non_speech=args.synth_non_speech, surround=args.synth_surround)
        args.easy_data = args.easy_data or easy
        if rank == 0 and world > 1:
            dist.barrier()
    if args.data is None:
        raise NanoaudioError("no training data: pass --data (LibriSpeech folder, JSONL manifest, parquet, dataset id)")

    def batches(spec):
        return Batches(open_dataset(spec), batch_size=args.batch_size, seed=args.seed, rank=rank, world_size=world,
                       max_seconds=args.max_audio_seconds)

    train = batches(args.data)
    easy = batches(args.easy_data) if args.easy_data and args.easy_steps else None
    evals = {}
    for spec in (args.eval_data.split(",") if args.eval_data else []):
        name = Path(spec).parent.name if Path(spec).stem == "manifest" else Path(spec).stem  # eval-digits/manifest.jsonl
        evals[name] = open_dataset(spec)
    return train, easy, evals


def label_tokens(model, batch):
    """How many tokens the decoder loss averages over in this batch: the prompt's labels (transcript + end)."""
    from nanoaudio.model import IGNORE, build_prompt
    from nanoaudio.text import normalize_text

    prompts = [build_prompt(model.tokenizer, model.family, 0, normalize_text(ex.text), model.config.instruction)
               for ex in batch]
    return sum(t != IGNORE for _, _, labels in prompts for t in labels)


def to_device(batch, device, pad_to_multiple_of=1, normalize=True):
    from nanoaudio.audio import batch_audio
    from nanoaudio.text import normalize_text

    wave, mask = batch_audio([ex.audio for ex in batch], pad_to_multiple_of, normalize=normalize)
    # the model learns to write normalized text ("DON'T" -> "don't"), the same form WER compares
    return wave.to(device), mask.to(device), [normalize_text(ex.text) for ex in batch]


def optimizer_for(model, args, device):
    """AdamW over every parameter that may train in this run, in four groups: weight decay on matrices only, and
    the encoder apart, for its own learning rate once it rejoins (Plan.encoder_lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    in_encoder = {id(p) for p in model.encoder.parameters()}
    groups = []
    for encoder in (False, True):
        for decay in (True, False):
            group = [p for p in params if (id(p) in in_encoder) == encoder and (p.ndim >= 2) == decay]
            if group:
                groups.append({"params": group, "weight_decay": args.weight_decay if decay else 0.0,
                               "encoder": encoder})
    return params, torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")


def evaluate(model, evals, args, step, out):
    """Greedy WER on each held-out set, through the library's decoding path (the one sample.py uses)."""
    from nanoaudio.decoding import DecodingOptions
    from nanoaudio.decoding import evaluate as evaluate_wer

    results = {}
    for name, dataset in evals.items():
        examples = [ex for _, ex in zip(range(args.eval_samples), dataset)]
        w, pairs = evaluate_wer(model, examples, DecodingOptions(beams=1, batch_size=args.batch_size))
        results[name] = round(w, 4)
        print(f"\nstep {step} {name}: WER {100 * w:.2f}% on {len(pairs)} utterances")
        for ref, hyp in pairs[:3]:
            print(f"  ref: {ref}\n  hyp: {hyp}")
    if results:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "eval_wer": results}) + "\n")
    return results


# -----------------------------------------------------------------------------
# the pieces of a run


def setup_device(args):
    """-> (device, rank, world). torchrun sets RANK/WORLD_SIZE: one process per device, gloo on CPU, nccl on GPU."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_device(str(device), flag="--device")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def check_budget(model, args, device, master):
    """Print the training-memory estimate; refuse a run that cannot fit on the GPU before it starts."""
    from nanoaudio.budget import estimate_for_model, format_budget

    budget = estimate_for_model(model, batch_size=args.batch_size, audio_seconds=args.max_audio_seconds,
                                precision=args.precision, grad_checkpointing=args.grad_checkpointing)
    if master:
        print(format_budget(budget))
    if device.type == "cuda" and budget.total_bytes > torch.cuda.get_device_properties(device).total_memory:
        raise NanoaudioError(f"estimated {budget.total_bytes / 2**30:.1f} GiB exceeds {device}'s memory: lower "
                             f"--batch-size, add --grad-checkpointing or pick a smaller --decoder")


def catch_signals():
    """Ctrl-C, or SIGTERM (kill, timeout, schedulers, container stops): the loop finishes its step, saves, exits."""
    stop = {"signal": None}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stop.update(signal=signum))
    return stop


def train_step(run, micro_batches, p: Plan):
    """One optimizer step over grad_accum micro-batches -> (loss, decoder loss, CTC loss, grad norm).

    The decoder loss is a mean over label tokens: each micro-batch, on each rank, is weighted by its share of the
    step's label tokens, so that accumulation and DDP (which averages the ranks' gradients) give the gradient of
    one batch holding them all. CTC is a mean over utterances: a plain average."""
    model, args = run.model, run.args
    n_labels = [label_tokens(model, batch) for batch in micro_batches]
    step_labels = torch.tensor(float(sum(n_labels)), device=run.device)
    if run.world > 1:
        dist.all_reduce(step_labels)
    total = lm_total = ctc_total = 0.0
    for micro, batch in enumerate(micro_batches):
        wave, mask, texts = to_device(batch, run.device, run.pad_samples, run.normalize)
        last = micro == len(micro_batches) - 1
        sync = run.train_model.no_sync() if run.world > 1 and not last else contextlib.nullcontext()
        with sync, run.autocast:
            losses = run.train_model(wave, mask, texts, lm=p.lm)
            loss = losses["lm_loss"] * (n_labels[micro] * run.world / step_labels)  # 1: one process, one batch
            if losses["ctc_loss"] is not None:
                loss = loss + model.config.ctc_weight * losses["ctc_loss"] / args.grad_accum
        loss.backward()
        total += loss.item()
        lm_total += losses["lm_loss"].item() / args.grad_accum
        ctc_total += losses["ctc_loss"].item() / args.grad_accum if losses["ctc_loss"] is not None else 0.0
    if run.world > 1:  # log the whole batch's loss, not this rank's share of it
        total_t = torch.tensor(total, device=run.device)
        dist.all_reduce(total_t)
        total = total_t.item() / run.world
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, args.clip).item()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total, lm_total, ctc_total, grad_norm


def finish(run, step, log, stopped_by, audio_seconds, t_start, save):
    """The end of a run (rank 0): the last checkpoint, the final evaluation, loss.png and summary.json."""
    out, args = Path(run.args.out), run.args
    if not (log and args.save_every and step % args.save_every == 0):
        save()
    if stopped_by is not None:  # interrupted: saved; the evaluation can wait for the resumed run
        print(f"stopped by {signal.Signals(stopped_by).name}: {step} steps, checkpoint {out / 'last'}; "
              f"continue with: python train.py --resume {out / 'last'}")
        results = {}
    else:
        results = log[-1]["eval_wer"] if log and "eval_wer" in log[-1] else evaluate(run.model, run.evals, args,
                                                                                      step, out)
    plot_loss(out)
    skipped = run.train_batches.skipped_report() if hasattr(run.train_batches, "skipped_report") else None
    summary = {"step": step, "minutes": (time.time() - t_start) / 60, "audio_hours": audio_seconds / 3600,
               "wer": results, "skipped": skipped}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done: {step} steps in {summary['minutes']:.1f} min; checkpoint {out / 'last'}; WER {results}")
    if skipped:
        print(f"skipped files: {skipped}")


# -----------------------------------------------------------------------------


def main(argv=None):
    # Denormal floats (below 1.2e-38) flushed to zero. As a model trains, some of its activations and
    # gradients get that small, and on x86 every op that touches one runs many times slower (a tiny-preset CTC
    # step: 166 ms fresh, 262 ms after 4 minutes, 168 ms with the flush; tests/bench/test_bench_train_step.py).
    # Set before the first op: each of torch's worker threads copies the flag from the thread that starts it.
    torch.set_flush_denormal(True)
    args = parse_args(argv)
    device, rank, world = setup_device(args)
    master, out = rank == 0, Path(args.out)
    args.precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)  # same init on every rank; data differs by shard
    random.seed(args.seed)
    np.random.seed(args.seed)

    # the model, the data, the optimizer; a resumed run takes all three back from its checkpoint
    if args.resume and args.init:
        raise NanoaudioError("--resume continues a run, --init starts a new one from a model's weights: pass one")
    if args.resume or args.init:
        from nanoaudio.model import ASRModel

        model = ASRModel.load(args.resume or args.init, device=device)
    else:
        model = build_model(args, device)
    model.decoder.gradient_checkpointing = args.grad_checkpointing
    model.to(device).train()
    if model.config.ctc_weight > 0 and model.encoder.lm_head is None:
        raise NanoaudioError(f"--ctc-weight {model.config.ctc_weight}: the encoder ({args.encoder}) has no CTC head "
                             f"(Whisper's never has): pass --ctc-weight 0")
    if args.encoder_first and not (model.config.from_scratch and model.config.ctc_weight > 0):
        raise NanoaudioError("--encoder-first trains the encoder alone on its CTC loss: it needs a from-scratch model "
                             "with --ctc-weight > 0 (the tiny preset)")
    train_batches, easy_batches, evals = build_data(args, model, rank, world)
    check_budget(model, args, device, master)
    params, optimizer = optimizer_for(model, args, device)
    trainer = load_trainer_state(args.resume, optimizer, train_batches, easy_batches) if args.resume else {}
    step, stage2 = trainer.get("step", 0), trainer.get("stage2_step")
    elapsed_before = trainer.get("elapsed", 0.0)  # the clock of a --minutes run continues across resumes
    train_model = model
    if world > 1:  # two stages: the decoder sits out the first, the encoder the second (DDP must expect that)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(args.encoder_first))
    if args.compile:
        model.decoder = torch.compile(model.decoder)
    run = argparse.Namespace(
        args=args, model=model, train_model=train_model, optimizer=optimizer, params=params, device=device,
        world=world, evals=evals, train_batches=train_batches, normalize=model.encoder.normalize_audio,
        autocast=(torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                  else contextlib.nullcontext()),
        # CPU bf16: oneDNN builds its AMX kernels for each new shape, and length-bucketed batches bring a new
        # length almost every step; padded to a multiple of 0.5 s, the few lengths are built once (tiny encoder
        # step: fp32 136 ms, bf16 155 ms unpadded, 103 ms padded)
        pad_samples=8000 if args.precision == "bf16" and device.type == "cpu" else 1)
    stop = catch_signals()

    from tqdm import tqdm

    if master:
        prepare_out(out, step)
    log, t_start, audio_seconds, first_step = [], time.time() - elapsed_before, 0.0, step
    budget_s = args.minutes * 60 if args.minutes else None
    bar = tqdm(total=args.steps, initial=step, disable=not master, dynamic_ncols=True)
    batches = iter(train_batches)
    easy = iter(easy_batches) if easy_batches is not None else None

    def save():
        extra = {"stage2_step": stage2, "elapsed": time.time() - t_start,
                 "easy_data": easy_batches.state_dict() if easy_batches is not None else None}
        save_checkpoint(out / "last", model, optimizer, step, train_batches, log, args, extra)

    while step < args.steps:
        elapsed = time.time() - t_start
        if world > 1:  # every rank must use the same lr and stop after the same step: agree on the slowest clock
            agreed = torch.tensor([elapsed, float(stop["signal"] is not None)], device=device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            elapsed, stop["signal"] = agreed[0].item(), stop["signal"] or (signal.SIGTERM if agreed[1] else None)
        if stop["signal"] is not None or (budget_s and elapsed >= budget_s):
            break
        # what this step does: the stage, the learning rates, whether the encoder trains, where the data comes from
        p = plan(step, max(step / args.steps, elapsed / budget_s if budget_s else 0.0), stage2, args,
                 model.config.train_encoder)
        stage2 = p.stage2
        if any(q.requires_grad for q in model.encoder.parameters()) != p.encoder_trains:
            model.set_trainable(encoder=p.encoder_trains)
        for g in optimizer.param_groups:
            g["lr"] = p.encoder_lr if g["encoder"] else p.lr

        # one step
        t0 = time.time()
        micro_batches = [next(easy if p.easy and easy is not None else batches) for _ in range(args.grad_accum)]
        loss, lm_loss, ctc_loss, grad_norm = train_step(run, micro_batches, p)
        step += 1
        n_audio = sum(ex.seconds for batch in micro_batches for ex in batch) * world
        audio_seconds += n_audio
        rec = {"step": step, "loss": loss, "lr": p.lr, "grad_norm": grad_norm,
               "audio_s_per_s": n_audio / (time.time() - t0), "time": time.time() - t_start}
        if model.config.ctc_weight > 0:
            rec["lm_loss"], rec["ctc_loss"] = lm_loss, ctc_loss
        log.append(rec)
        if not master:
            continue
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{p.lr:.2e}", gnorm=f"{grad_norm:.2f}",
                        audio=f"{rec['audio_s_per_s']:.0f}s/s")
        bar.total = expected_steps(args.steps, step, first_step, time.time() - t_start - elapsed_before,
                                   budget_s and budget_s - elapsed_before)
        bar.update(1)

        # once in a while: evaluate (not in stage 1: the decoder has not trained yet), save
        if args.eval_every and step % args.eval_every == 0 and p.lm:
            rec["eval_wer"] = evaluate(model, evals, args, step, out)
        if args.save_every and step % args.save_every == 0:
            save()
    bar.close()
    if master:
        finish(run, step, log, stop["signal"], audio_seconds, t_start, save)
    if world > 1:
        dist.destroy_process_group()


def plot_loss(out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no loss.png; pip install 'nanoaudio[viz]')")
        return
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    steps = [r["step"] for r in recs if "loss" in r]
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in recs if "loss" in r], label="loss")
    if any("lm_loss" in r for r in recs):
        ax.plot(steps, [r.get("lm_loss", float("nan")) for r in recs if "loss" in r], label="decoder loss", alpha=.7)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main)
