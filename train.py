"""
Train a nanoaudio speech recognizer: HuBERT (frozen) -> AudioProjector -> LoRA-tuned decoder.

CPU, no downloads: the tiny preset synthesizes speech with espeak-ng and trains every part from scratch
    python train.py --preset tiny --minutes 10
The bundled model (57 minutes on 2 cores, then `python -m nanoaudio.tiny export out/tiny/last`):
    python train.py --preset tiny --minutes 52 --synth-sentences 0.9 --rejoin-lr-scale 0.3 --encoder-first 0.3

One GPU, the course's recipe on LibriSpeech (projector + LoRA trained; encoder and decoder frozen):
    python train.py --decoder smollm3-3b --data /data/LibriSpeech/train-clean-100 \\
        --eval-data /data/LibriSpeech/dev-clean --precision bf16 --grad-checkpointing
Several GPUs (DistributedDataParallel, one process per GPU, each on a disjoint shard of the data):
    torchrun --nproc_per_node=8 train.py --decoder qwen3-8b --data openslr/librispeech_asr ...
Resume exactly where a run stopped (its settings, model, optimizer, schedule, RNG and data position):
    python train.py --resume out/tiny/last

The loop is nanoGPT's: one file, top to bottom, defaults in one block.
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

# -----------------------------------------------------------------------------
# defaults, in one block. Presets override them; flags override presets.
DEFAULTS = dict(
    decoder="qwen3-8b",  # the course's decoder
    encoder="hubert-xlarge",  # the course's encoder (1280-d)
    projector="linear",  # the course's projector; "swiglu" is its exercise
    stack=5,  # frames stacked per audio token: 50 frames/s -> 10 tokens/s
    data=None,
    eval_data=None,
    easy_data=None,  # a curriculum: the decoder's first --easy-steps steps train on this, then on --data
    easy_steps=0,
    out="out/run",
    steps=2000,
    minutes=None,  # wall-clock budget; the LR schedule then follows elapsed time
    batch_size=8,
    grad_accum=1,
    lr=1e-4,
    weight_decay=0.01,
    lora_r=8,  # the course: rank 8 on the attention projections
    lora_alpha=16,
    lora_dropout=0.05,
    lora_targets="q_proj,k_proj,v_proj,o_proj",
    warmup=100,
    precision="bf16",
    grad_checkpointing=False,
    eval_every=500,
    eval_samples=200,
    save_every=500,
    resume=None,
    seed=1337,
    max_audio_seconds=20.0,
    device=None,  # cuda if available, else cpu
    compile=False,
    clip=1.0,
    ctc_weight=0.0,
    encoder_first=0.0,  # from scratch: this share of the run trains the encoder alone (CTC), then freezes it
    encoder_rejoin=-1,  # ... until this step of stage 2, when it trains again with the rest (-1: never)
    rejoin_lr_scale=1.0,  # ... at this share of the others' learning rate
    synth_sentences=0.5,  # the tiny preset's synthetic training data: this share sentences, the rest digit strings
    preset=None,
)

PRESETS = {
    # Everything from scratch on CPU in minutes: a small HuBERT-style encoder with a CTC head, the
    # AudioProjector and a small Qwen3-style decoder, on synthetic speech (see nanoaudio/tiny.py).
    # Small batches, many steps: on 2 cores a step of 8 utterances takes ~0.2 s with the encoder alone or frozen,
    # ~0.3 s once it rejoins (12,072 steps in the bundled model's 52 minutes, 2-core AMD EPYC, fp32; ~0.13 s on a 2-core
    # Xeon with AMX in bf16, --precision auto, measured with the earlier 7x32 conv front end), and this model
    # learns more per second from more, noisier steps than from fewer, larger ones.
    "tiny": dict(decoder="tiny", encoder="tiny", out="out/tiny", steps=100_000, batch_size=8, lr=3e-3,
                 warmup=100, precision="auto", eval_every=2500, eval_samples=100, save_every=500,
                 ctc_weight=0.5, encoder_first=0.4, easy_steps=700, encoder_rejoin=700,
                 max_audio_seconds=8.0, lora_r=0, weight_decay=0.0),
    # The course's recipe on LibriSpeech train-clean-100 (one 80 GB GPU).
    "librispeech-qwen3-8b": dict(decoder="qwen3-8b", encoder="hubert-xlarge", out="out/qwen3-8b", steps=20_000,
                                 batch_size=8, grad_accum=4, lr=1e-4, warmup=500, grad_checkpointing=True),
    "librispeech-smollm3-3b": dict(decoder="smollm3-3b", encoder="hubert-xlarge", out="out/smollm3-3b",
                                   steps=20_000, batch_size=16, grad_accum=2, lr=1e-4, warmup=500),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h = {
        "decoder": "decoder LLM: qwen3-8b, smollm3-3b, qwen3-0.6b/1.7b/4b, llama-3.2-1b/3b, a folder or a hub id",
        "encoder": "audio encoder: hubert-xlarge, hubert-large, a folder or a hub id",
        "preset": f"named recipe ({', '.join(PRESETS)}); flags given explicitly override it",
        "projector": "projector kind: linear (the course's) or swiglu (its exercise)",
        "stack": "encoder frames stacked into one audio token (k)",
        "data": "training data: LibriSpeech folder, JSONL manifest, parquet file/folder or HF dataset id",
        "eval_data": "held-out data in the same formats, for WER",
        "easy_data": "curriculum: data (same formats) for the decoder's first --easy-steps steps (from step 0, or from "
                     "the start of stage 2 with --encoder-first); the tiny preset uses its digit strings",
        "easy_steps": "steps on --easy-data before --data (0: no curriculum)",
        "out": "output folder (checkpoints, log.jsonl, loss.png)",
        "steps": "optimizer steps",
        "minutes": "wall-clock budget in minutes; training stops (and saves) when it is spent",
        "batch_size": "utterances per micro-batch (per process)",
        "grad_accum": "micro-batches accumulated per optimizer step",
        "lr": "peak learning rate (AdamW), reached after --warmup steps, then cosine decay to 10%%",
        "weight_decay": "AdamW weight decay on matrices (not on norms)",
        "lora_r": "LoRA rank (0: no LoRA)",
        "lora_alpha": "LoRA alpha (scale alpha/r)",
        "lora_dropout": "dropout on the LoRA branch",
        "lora_targets": "comma-separated decoder linears to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
        "warmup": "linear warmup steps",
        "precision": "bf16 (autocast, frozen weights stored in bf16), fp32, or auto: bf16 on CUDA and on CPUs with "
                     "AMX bf16 matmuls (Intel Xeon since Sapphire Rapids), fp32 on other CPUs",
        "grad_checkpointing": "recompute decoder activations in the backward pass (less memory, ~30%% slower)",
        "eval_every": "evaluate WER every N steps (0: only at the end)",
        "eval_samples": "held-out utterances per evaluation",
        "save_every": "write a checkpoint every N steps",
        "resume": "checkpoint folder to resume from exactly (e.g. out/run/last); its run's settings apply",
        "seed": "random seed (data order, dropout, init)",
        "max_audio_seconds": "skip training utterances longer than this",
        "device": "cpu, cuda, cuda:1 ... (default: cuda if available)",
        "compile": "torch.compile the decoder",
        "clip": "gradient-norm clipping",
        "ctc_weight": "weight of the CTC loss on the encoder frames (needs a CTC head; the tiny preset uses 0.5)",
        "encoder_first": "share of the run (of --steps, or of --minutes) that trains the encoder alone on its CTC "
                         "loss; the rest trains projector + decoder on it, frozen. Each stage has its own warmup "
                         "and cosine (0: one stage, everything together; the bundled model: 0.3)",
        "encoder_rejoin": "with --encoder-first: from this step of stage 2 on, the encoder trains again, together "
                          "with projector and decoder (-1: frozen to the end; the tiny preset: 700, when the "
                          "decoder's curriculum ends)",
        "rejoin_lr_scale": "the rejoined encoder's learning rate, as a share of stage 2's (the bundled model: 0.3; "
                           "at the full rate it first loses much of what stage 1 taught it)",
        "synth_sentences": "the tiny preset's synthetic training utterances: the share of sentences, the rest digit "
                           "strings (the bundled model: 0.9)",
    }
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=h[name])
        else:
            kind = type(default) if default is not None else (float if name == "minutes" else str)
            p.add_argument(flag, type=kind, default=None, help=h[name])
    args = p.parse_args(argv)
    # resolution order: DEFAULTS < preset < the resumed run's settings < explicit flags
    merged = dict(DEFAULTS)
    if args.preset:
        if args.preset not in PRESETS:
            p.error(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
        merged |= PRESETS[args.preset]
    if args.resume:  # `--resume FOLDER` alone continues that run: same data, batch size, schedule...
        state = Path(args.resume) / "trainer_state.json"
        if not state.is_file():
            raise NanoaudioError(f"{args.resume}: no trainer_state.json, not a checkpoint train.py wrote "
                                 f"(e.g. out/run/last)")
        saved = json.loads(state.read_text()).get("args", {})  # (older checkpoints have none: flags only)
        merged |= {k: v for k, v in saved.items() if k in DEFAULTS}
    merged |= {k: v for k, v in vars(args).items() if v is not None}
    return argparse.Namespace(**merged)


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
# building the model


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
    else:
        decoder.requires_grad_(False)
    decoder.gradient_checkpointing = args.grad_checkpointing
    config = ASRConfig(
        encoder={"name": encoder.source, "config": encoder.config.to_hf_config()},
        decoder={"name": decoder.source, "config": decoder.config.to_hf_config()},
        projector=dataclasses.asdict(pcfg), lora=lora, ctc_weight=args.ctc_weight,
    )
    return ASRModel(encoder, projector, decoder, tokenizer, config)


# -----------------------------------------------------------------------------
# data


def build_data(args, model, rank, world):
    from nanoaudio.data import Batches, open_dataset

    if args.decoder == "tiny" and args.data is None:
        from nanoaudio.tiny import tiny_data

        # DDP: rank 0 synthesizes the data; the others wait, then find it on disk (tiny_data reuses it)
        if rank > 0:
            dist.barrier()
        args.data, easy, args.eval_data = tiny_data(Path(args.out).parent / "tiny-data", seed=args.seed,
                                                        sentences=args.synth_sentences)
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


def to_device(batch, device, pad_to_multiple_of=1):
    from nanoaudio.audio import batch_audio
    from nanoaudio.text import normalize_text

    wave, mask = batch_audio([ex.audio for ex in batch], pad_to_multiple_of)
    # the model learns to write normalized text ("DON'T" -> "don't"), the same form WER compares
    return wave.to(device), mask.to(device), [normalize_text(ex.text) for ex in batch]


@torch.no_grad()
def evaluate(model, dataset, n, batch_size, device):
    """Greedy transcripts of the first n utterances -> (WER, [(reference, hypothesis), ...])."""
    from nanoaudio.text import normalize_text, wer

    refs, hyps, batch = [], [], []
    model.eval()
    examples = [ex for _, ex in zip(range(n), dataset)]
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        hyps += model.transcribe([ex.audio for ex in batch], batch_size=batch_size)
        refs += [ex.text for ex in batch]
    model.train()
    refs, hyps = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    return wer(refs, hyps), list(zip(refs, hyps))


# -----------------------------------------------------------------------------
# checkpoints: model files + optimizer/schedule/RNG/data position, written atomically


def save_checkpoint(folder, model, optimizer, step, train_batches, log, args=None, extra=None):
    """extra: more entries for trainer_state.json (the two stages' switch step, the curriculum's data position)."""
    from safetensors.torch import save_file

    from nanoaudio.load import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_to(tmp)
        # optimizer tensors go to safetensors (no pickle); the rest is JSON
        opt = optimizer.state_dict()
        tensors, state = {}, {}
        for pid, st in opt["state"].items():
            state[pid] = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
                    state[pid][k] = "tensor"
                else:
                    state[pid][k] = v
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, tmp / "optimizer.safetensors")
        trainer = {
            "step": step, "param_groups": opt["param_groups"], "state": state,
            "rng_python": random.getstate()[1], "rng_numpy": np.random.get_state()[1].tolist(),
            "rng_numpy_pos": int(np.random.get_state()[2]),  # where in the 624-word key numpy's stream is
            "data": train_batches.state_dict(), "log_tail": log[-5:], "args": vars(args) if args else {},
        } | (extra or {})
        (tmp / "trainer_state.json").write_text(json.dumps(trainer))


def load_trainer_state(folder, optimizer, train_batches, easy_batches=None) -> dict:
    """Restore optimizer, RNG and data positions from a checkpoint -> its trainer_state.json (step, stage2_step...)."""
    from nanoaudio.load import read_json, read_tensors

    folder = Path(folder)
    trainer = read_json(folder / "trainer_state.json")
    tensors = read_tensors_file(folder / "optimizer.safetensors")
    state = {int(pid): {k: (tensors[f"{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
             for pid, st in trainer["state"].items()}

    def layout(groups):
        return [(len(g["params"]), g.get("encoder", False)) for g in groups]

    saved, ours = layout(trainer["param_groups"]), layout(optimizer.param_groups)
    if saved != ours:
        raise NanoaudioError(f"{folder}: its optimizer state holds parameter groups {saved} (size, encoder?), this "
                             f"model's are {ours}: a checkpoint of another model, or from an older train.py")
    optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate((3, tuple(trainer["rng_python"]), None))
    np.random.set_state(("MT19937", np.array(trainer["rng_numpy"], dtype=np.uint32),
                         trainer.get("rng_numpy_pos", 624), 0, 0.0))
    train_batches.load_state_dict(trainer["data"])
    if easy_batches is not None and trainer.get("easy_data"):
        easy_batches.load_state_dict(trainer["easy_data"])
    return trainer


def read_tensors_file(path):
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise NanoaudioError(f"{path}: missing (not a training checkpoint?)")
    return load_file(path)


# -----------------------------------------------------------------------------
# the schedule: linear warmup, then cosine decay to 10% of the peak over the run. The run's progress is
# steps done / --steps, or the fraction of --minutes spent, whichever is further along.


def lr_at(step, progress, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def expected_steps(steps, step, first_step, elapsed, budget_s):
    """The step the run will end at: --steps, or sooner if --minutes runs out first at this run's pace so far."""
    if not budget_s or step == first_step:
        return steps
    seconds_per_step = elapsed / (step - first_step)
    return min(steps, step + int((budget_s - elapsed) / seconds_per_step))


# -----------------------------------------------------------------------------


def main(argv=None):
    # Denormal floats (below 1.2e-38) flushed to zero. As a model trains, some of its activations and
    # gradients get that small, and on x86 every op that touches one runs many times slower: on 2 Xeon cores a
    # tiny-preset CTC step took 166 ms on a fresh model, 262 ms on one trained for 4 minutes, 168 ms with the
    # flush. Set before the first op: each of torch's worker threads copies the flag from the thread that
    # starts it (tests/bench/test_bench_train_step.py measures both).
    torch.set_flush_denormal(True)
    args = parse_args(argv)
    # distributed: torchrun sets RANK/WORLD_SIZE; gloo on CPU, nccl on GPU
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if ddp:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    args.precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)  # same init on every rank; data differs by shard
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)

    if args.resume:
        from nanoaudio.model import ASRModel

        model = ASRModel.load(args.resume, device=device)
        model.decoder.gradient_checkpointing = args.grad_checkpointing
        # everything save_to wrote is trainable; the rest stays frozen
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
        if model.config.from_scratch:
            model.decoder.requires_grad_(True)
            model.encoder.requires_grad_(model.config.train_encoder)
        for n, p in model.decoder.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
    else:
        model = build_model(args, device)
    model.to(device).train()
    if not 0 <= args.encoder_first < 1:
        raise NanoaudioError(f"--encoder-first is a share of the run, in [0, 1): got {args.encoder_first}")
    if args.encoder_first and not (model.config.from_scratch and model.config.ctc_weight > 0):
        raise NanoaudioError("--encoder-first trains the encoder alone on its CTC loss: it needs a from-scratch model "
                             "with --ctc-weight > 0 (the tiny preset)")
    train_batches, easy_batches, evals = build_data(args, model, rank, world)

    from nanoaudio.budget import estimate_for_model, format_budget

    budget = estimate_for_model(model, batch_size=args.batch_size, audio_seconds=args.max_audio_seconds,
                                precision=args.precision, grad_checkpointing=args.grad_checkpointing)
    if master:
        print(format_budget(budget))
    if device.type == "cuda":
        free = torch.cuda.get_device_properties(device).total_memory
        if budget.total_bytes > free:
            raise NanoaudioError(f"estimated {budget.total_bytes / 2**30:.1f} GiB exceeds {device}'s "
                                 f"{free / 2**30:.1f} GiB: lower --batch-size, add --grad-checkpointing or pick a "
                                 f"smaller --decoder")

    params = [p for p in model.parameters() if p.requires_grad]
    # four groups: weight decay on matrices only; the encoder apart, for its own learning rate once it rejoins
    in_encoder = {id(p) for p in model.encoder.parameters()}
    groups = []
    for encoder in (False, True):
        for decay in (True, False):
            group = [p for p in params if (id(p) in in_encoder) == encoder and (p.ndim >= 2) == decay]
            if group:
                groups.append({"params": group, "weight_decay": args.weight_decay if decay else 0.0,
                               "encoder": encoder})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
    trainer = load_trainer_state(args.resume, optimizer, train_batches, easy_batches) if args.resume else {}
    step = trainer.get("step", 0)
    # two stages (--encoder-first): the step where the second began, None before it (or with one stage)
    stage2 = trainer.get("stage2_step")

    train_model = model
    if ddp:
        # two stages: the decoder sits out the first, the encoder the second (DDP must expect unused parameters)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(args.encoder_first))
    if args.compile:
        model.decoder = torch.compile(model.decoder)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    # CPU bf16: oneDNN builds its AMX kernels for each new shape, and length-bucketed batches bring a new length
    # almost every step; that costs more than bf16 saves (tiny preset, encoder step: fp32 136 ms, bf16 155).
    # Padded to a multiple of 0.5 s, the few lengths are built once (bf16 103 ms).
    pad_samples = 8000 if args.precision == "bf16" and device.type == "cpu" else 1

    # Ctrl-C: finish the current step, save, exit
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))

    from tqdm import tqdm

    log, t_start, audio_seconds = [], time.time(), 0.0

    def state_extra():
        return {"stage2_step": stage2, "easy_data": easy_batches.state_dict() if easy_batches is not None else None}
    budget_s = args.minutes * 60 if args.minutes else None
    total = args.steps
    bar = tqdm(total=total, initial=step, disable=not master, dynamic_ncols=True)
    first_step = step
    out.mkdir(parents=True, exist_ok=True)
    batches = iter(train_batches)
    easy = iter(easy_batches) if easy_batches is not None else None
    while step < total:
        elapsed = time.time() - t_start
        if ddp:  # every rank must use the same lr and stop after the same step: agree on the slowest clock
            agreed = torch.tensor([elapsed, float(stop["now"])], device=device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            elapsed, stop["now"] = agreed[0].item(), bool(agreed[1].item())
        if stop["now"] or (budget_s and elapsed >= budget_s):
            break
        progress = max(step / total, elapsed / budget_s if budget_s else 0.0)
        if args.encoder_first and stage2 is None and progress >= args.encoder_first:
            stage2 = step
        if stage2 is not None:
            # Stage 2: the encoder is done, as a real CTC-fine-tuned encoder is, and frozen while the decoder
            # learns to read it (each step skips its backward pass); from --encoder-rejoin on, it trains again
            # with the rest. Why two stages at all, and why rejoin: see nanoaudio/tiny.py.
            rejoined = args.encoder_rejoin >= 0 and step - stage2 >= args.encoder_rejoin
            if any(p.requires_grad for p in model.encoder.parameters()) != rejoined:
                model.encoder.requires_grad_(rejoined)
        if not args.encoder_first:
            lr = lr_at(step, progress, args.warmup, args.lr)
        elif stage2 is None:  # each stage its own warmup and cosine: the decoder starts as fresh as the encoder did
            lr = lr_at(step, progress / args.encoder_first, args.warmup, args.lr)
        else:
            lr = lr_at(step - stage2, (progress - args.encoder_first) / (1 - args.encoder_first), args.warmup, args.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr * args.rejoin_lr_scale if g["encoder"] and stage2 is not None else lr
        t0 = time.time()
        loss_sum, n_audio = 0.0, 0.0
        decoder_start = stage2 if args.encoder_first else 0  # None while the encoder trains alone
        # the curriculum: the decoder's first --easy-steps steps
        curriculum = easy is not None and decoder_start is not None and step - decoder_start < args.easy_steps
        source = easy if curriculum else batches
        micro_batches = [next(source) for _ in range(args.grad_accum)]
        # The decoder loss is a mean over label tokens: weight each micro-batch, on each rank, by its share of
        # the step's label tokens, so that accumulation and DDP (which averages the ranks' gradients) give the
        # gradient of one batch holding them all. The CTC term is a mean over utterances: plain average.
        n_labels = [label_tokens(model, batch) for batch in micro_batches]
        step_labels = torch.tensor(float(sum(n_labels)), device=device)
        if ddp:
            dist.all_reduce(step_labels)
        for micro, batch in enumerate(micro_batches):
            wave, mask, texts = to_device(batch, device, pad_samples)
            n_audio += sum(ex.seconds for ex in batch)
            sync = contextlib.nullcontext() if (not ddp or micro == args.grad_accum - 1) else train_model.no_sync()
            with sync, autocast:
                outd = train_model(wave, mask, texts, lm=decoder_start is not None)
                lm_share = n_labels[micro] * world / step_labels  # 1 with one process and one micro-batch
                ctc_term = outd["loss"] - outd["lm_loss"]  # ctc_weight * CTC loss, or 0
                loss = outd["lm_loss"] * lm_share + ctc_term / args.grad_accum
            loss.backward()
            loss_sum += loss.item()
        if ddp:  # log the whole batch's loss, not rank 0's share of it
            batch_loss = torch.tensor(loss_sum, device=device)
            dist.all_reduce(batch_loss)
            loss_sum = batch_loss.item() / world
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        audio_seconds += n_audio
        rec = {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
               "audio_s_per_s": n_audio * world / (time.time() - t0), "time": time.time() - t_start}
        if "ctc_loss" in outd:
            rec["lm_loss"], rec["ctc_loss"] = outd["lm_loss"].item(), outd["ctc_loss"].item()
        log.append(rec)
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", gnorm=f"{grad_norm:.2f}",
                            audio=f"{rec['audio_s_per_s']:.0f}s/s")
            bar.total = expected_steps(total, step, first_step, time.time() - t_start, budget_s)
            bar.update(1)
            # (not in stage 1: the decoder has not trained yet, its greedy transcripts would only cost time)
            if args.eval_every and step % args.eval_every == 0 and decoder_start is not None:
                rec["eval_wer"] = run_evals(model, evals, args, device, step, out)
            if args.save_every and step % args.save_every == 0:
                save_checkpoint(out / "last", model, optimizer, step, train_batches, log, args, state_extra())
    bar.close()
    if master:
        saved_now = log and args.save_every and step % args.save_every == 0
        if not saved_now:
            save_checkpoint(out / "last", model, optimizer, step, train_batches, log, args, state_extra())
        evaluated_now = log and "eval_wer" in log[-1]
        results = log[-1]["eval_wer"] if evaluated_now else run_evals(model, evals, args, device, step, out)
        plot_loss(out)
        skipped = train_batches.skipped_report() if hasattr(train_batches, "skipped_report") else None
        summary = {"step": step, "minutes": (time.time() - t_start) / 60, "audio_hours": audio_seconds / 3600,
                   "wer": results, "skipped": skipped}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"done: {step} steps in {summary['minutes']:.1f} min; checkpoint {out / 'last'}; WER {results}")
        if skipped:
            print(f"skipped files: {skipped}")
    if ddp:
        dist.destroy_process_group()


def run_evals(model, evals, args, device, step, out):
    results = {}
    for name, dataset in evals.items():
        w, pairs = evaluate(model, dataset, args.eval_samples, args.batch_size, device)
        results[name] = round(w, 4)
        print(f"\nstep {step} {name}: WER {100 * w:.2f}% on {len(pairs)} utterances")
        for ref, hyp in pairs[:3]:
            print(f"  ref: {ref}\n  hyp: {hyp}")
    if results:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "eval_wer": results}) + "\n")
    return results


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
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in recs if "loss" in r], label="loss")
    if any("lm_loss" in r for r in recs):
        ax.plot(steps, [r.get("lm_loss", float("nan")) for r in recs if "loss" in r], label="decoder loss", alpha=.7)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from nanoaudio import run_cli

    run_cli(main)
