"""The tiny preset: the course's recipe in miniature, trained from scratch on a laptop CPU in minutes.

Same classes as the real models, at tiny sizes (sizes chosen so 2 CPU cores train them in minutes):
    encoder   HubertEncoder: a raw-waveform conv front end (3 layers of 128 channels, strides 20 x 4 x 4 =
              320 -> 50 frames/s; the first starts as a mel filterbank, filterbank() below), 4 pre-LN Transformer
              layers of width 192, and a CTC head over the 32 characters of the *-ls960-ft checkpoints
    projector AudioProjector: stack k=5 frames -> RMSNorm -> Linear(960 -> 256) -> Dropout -> RMSNorm
    decoder   Decoder: a Qwen3-style model (q_norm/k_norm, RoPE), 4 layers of width 256, 8 heads of 32, tied head
    tokenizer a byte-level BPE in Qwen3's format (same pipeline, same chat special tokens), trained here with
              `tokenizers` on the preset's vocabulary (nanoaudio/assets/tiny_vocab.txt)
Data: synthetic speech (nanoaudio/synth.py, espeak-ng voices at random rate and pitch): digit strings and random
sentences from the preset's vocabulary, a quarter of them spoken as phrases with pauses, written as a JSONL
manifest so the real loader path runs.
Training (train.py's PRESETS["tiny"]): a CTC loss on the encoder frames (weight 0.5), two stages (the encoder alone
first, then the projector and decoder on it, frozen, starting with a curriculum of digit strings), then the
encoder rejoins. Why each of these, with the measurements: docs/tiny-preset.md. The current results: the README.

    python train.py --preset tiny --minutes 10               # 2 CPU cores
    python -m nanoaudio.tiny export out/tiny/last            # -> nanoaudio/assets/tiny-asr, float16
"""

from pathlib import Path

import torch

from nanoaudio import NanoaudioError
from nanoaudio.model import CTC_VOCAB

ASSETS = Path(__file__).resolve().parent / "assets"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]  # Qwen3's chat tokens

# HF-style config.json dicts, so the tiny checkpoint is described exactly like a real one
ENCODER = dict(
    model_type="hubert", architectures=["HubertForCTC"],
    # 3 conv layers of 128 channels, strides 20 x 4 x 4 = 320: 50 frames/s, a 380-sample (24 ms) receptive field
    conv_dim=[128] * 3, conv_kernel=[80, 4, 4], conv_stride=[20, 4, 4],
    conv_bias=True, feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True,
    hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768, hidden_act="gelu",
    num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8, layer_norm_eps=1e-5, feat_proj_layer_norm=True,
    hidden_dropout=0.05, attention_dropout=0.05, activation_dropout=0.0, feat_proj_dropout=0.05, final_dropout=0.0,
    layerdrop=0.0, vocab_size=len(CTC_VOCAB), pad_token_id=0,
)
# The same preset with a Whisper-style encoder (`train.py --preset tiny-whisper`): a log-mel front end (80 bins),
# 2 convs (stride 2 -> 50 frames/s), 4 pre-LN layers of width 192. No CTC head (Whisper has none), so it trains in
# one stage, and on its true length (pad_to_30s False: 30 s of padding per utterance would be 10x the compute).
WHISPER_ENCODER = dict(
    model_type="whisper", architectures=["WhisperForConditionalGeneration"], num_mel_bins=80, d_model=192,
    encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=768, max_source_positions=500,  # 10 s
    activation_function="gelu", dropout=0.05, pad_to_30s=False,
)
DECODER = dict(
    model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=256, intermediate_size=768,
    # 8 heads of 32 rather than 4 of 64 (or GQA 4/2): a from-scratch decoder must learn to walk through the
    # audio tokens in order, and more heads find that alignment sooner (measured: decoder loss 2.90 vs 3.15
    # after 500 steps, digit WER 56% vs 68% after 5 minutes, on the same pre-trained encoder)
    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, head_dim=32, hidden_act="silu",
    rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=1024, tie_word_embeddings=True,
    attention_bias=False, initializer_range=0.02,
)
WINDOW_SECONDS = 4.0  # about the longest utterance in its training data: sample.py cuts longer audio into chunks
# a quarter of the training utterances are spoken as phrases with silences between them: sample.py's windows
# of a long recording start, end and pause between phrases, and a model that never heard a pause drops the
# words after it (measured on the long-file test of tests/test_sample.py: WER 0.125-0.50 without them, 0 with)
PAUSES = 0.25
VOCAB_SIZE = 1024  # BPE merges enough that nearly every vocabulary word is one token


def tiny_vocab() -> list[str]:
    return [w.strip() for w in (ASSETS / "tiny_vocab.txt").read_text().splitlines() if w.strip()]


def train_tokenizer(words: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE with Qwen3's pipeline (NFC, the Qwen2 split regex, byte-level) and chat tokens."""
    from tokenizers import pre_tokenizers, trainers
    from tokenizers.models import BPE

    from nanoaudio.tokenizer import Tokenizer, qwen2_pipeline

    tk = qwen2_pipeline(BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # every word both at the start of a line and after a space (" word" is its own pre-token)
    corpus = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)] * 4 + words
    tk.train_from_iterator(corpus, trainer)
    tk.add_special_tokens(SPECIAL_TOKENS)  # after the BPE vocabulary, as in Qwen3
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    return Tokenizer(tk, config, family="qwen3")


def filterbank(channels: int, kernel: int, low_hz: float = 150.0, high_hz: float = 7000.0) -> torch.Tensor:
    """Initial weights for the first conv layer: Hann-windowed cosines and sines at mel-spaced frequencies
    -> (channels, 1, kernel), channels // 2 frequencies x 2 phases.

    Why: a randomly initialised first layer must find its frequency bands by gradient descent before anything
    above it can learn phonemes; started as a filterbank (the first step of a spectrogram, left trainable, as
    in SincNet or LEAF) it gives the layers above a spectrum from step 1. Each row has the squared norm 2 that
    Kaiming-normal init gives on average. Measured (2 cores, encoder alone on CTC for 3 minutes, see the
    docstring at the top): held-out sentence CER 52.7% vs 66.6% with the random init.
    """
    import math

    from nanoaudio.audio import SAMPLE_RATE

    mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731  (HTK's mel scale)
    n = channels // 2
    freqs = 700 * (10 ** (torch.linspace(mel(low_hz), mel(high_hz), n, dtype=torch.float64) / 2595) - 1)  # Hz
    t = torch.arange(kernel, dtype=torch.float64) / SAMPLE_RATE
    phase = 2 * math.pi * freqs[:, None, None] * t + torch.tensor([0.0, math.pi / 2])[None, :, None]  # (n, 2, K)
    w = (torch.hann_window(kernel, periodic=False, dtype=torch.float64) * torch.cos(phase)).reshape(2 * n, kernel)
    w = w / w.norm(dim=1, keepdim=True) * math.sqrt(2)
    return w[:, None, :].float()


def build_tiny(args, device):
    """A randomly initialised ASRModel of the tiny preset's sizes (args: stack, projector, seed)."""
    import dataclasses

    from nanoaudio.config import DecoderConfig, ProjectorConfig
    from nanoaudio.decoder import Decoder
    from nanoaudio.encoder import encoder_from_config
    from nanoaudio.model import ASRConfig, ASRModel
    from nanoaudio.projector import AudioProjector

    tokenizer = train_tokenizer(tiny_vocab())
    decoder_cfg = dict(DECODER, vocab_size=-(-tokenizer.vocab_size // 64) * 64,  # a multiple of 64, as real ones
                       eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id, bos_token_id=None)
    if args.encoder not in ("tiny", "tiny-whisper"):
        raise NanoaudioError(f"--encoder {args.encoder}: the tiny preset builds its own encoder (tiny or tiny-whisper)")
    encoder_cfg = WHISPER_ENCODER if args.encoder == "tiny-whisper" else ENCODER
    encoder = encoder_from_config(encoder_cfg)
    if args.encoder == "tiny":
        with torch.no_grad():
            conv0 = encoder.feature_extractor.conv_layers[0].conv.weight  # (128, 1, 80)
            conv0.copy_(filterbank(channels=conv0.shape[0], kernel=conv0.shape[2]))
    decoder = Decoder(DecoderConfig.from_hf_config(decoder_cfg))
    decoder.eos_token_ids = [tokenizer.eot_id]
    pcfg = ProjectorConfig(kind=args.projector, stack=args.stack, encoder_dim=encoder.config.hidden_size,
                           decoder_dim=DECODER["hidden_size"])
    projector = AudioProjector(pcfg)
    config = ASRConfig(
        encoder={"name": None, "config": encoder_cfg}, decoder={"name": None, "config": decoder_cfg},
        projector=dataclasses.asdict(pcfg), lora=None, from_scratch=True, train_encoder=True,
        ctc_weight=args.ctc_weight, window_seconds=WINDOW_SECONDS,
    )
    return ASRModel(encoder, projector, decoder, tokenizer, config).to(device)


def tiny_data(folder, seed: int = 0, n_train: int = 36000, n_eval: int = 200, sentences: float = 0.5,
              non_speech: float = 0.0, surround: float = 0.0):
    """Synthesize (once) the preset's training set and two held-out sets -> (train, easy, evals) data specs.

    36,000 training utterances, a share `sentences` of the spoken ones random sentences and the rest digit strings
    (half: 21.3 hours of speech, 4.9-5.8 minutes to synthesize on 2 cores; 0.9, the bundled model's: 23.0 hours,
    5.0 minutes): a 52-minute run sees each about 2.7-2.9 times, so the decoder cannot get by on memorized
    transcripts. A share `non_speech` of the clips has nobody speaking and `surround` of the spoken ones noise
    or music around them (synth.make_dataset; the bundled model's fine-tune, 0.06 each at 0.9 sentences: 2199
    and 2110 clips, 24.1 hours in all, about 6.5 minutes to synthesize. Without them, 24 held-out non-speech clips
    gave 204 invented words and speech surrounded by noise a WER of 218 %: issue 27). `easy` is a manifest of its
    digit strings alone: the decoder's first steps (the curriculum, train.py --easy-steps).
    Held-out utterances use other seeds and strings that never occur in training (synth.make_dataset's
    `exclude`), spoken by voices/rates/pitches drawn from all of espeak-ng's variants.
    """
    from nanoaudio.synth import make_dataset

    folder = Path(folder)
    train = make_dataset(folder / "train", n_train, kind="mixed", seed=seed, pauses=PAUSES, sentences=sentences,
                         non_speech=non_speech, surround=surround)
    evals = [make_dataset(folder / f"eval-{kind}", n_eval, kind=kind, seed=10_000 + seed + i, exclude=train)
             for i, kind in enumerate(("digits", "sentences"))]
    return str(train), str(digit_strings(train)), ",".join(str(e) for e in evals)


def digit_strings(manifest) -> Path:
    """The manifest's digit-string rows alone, as digits.jsonl beside it (same audio files, nothing re-synthesized)."""
    import json

    from nanoaudio.load import atomic_file
    from nanoaudio.synth import DIGITS

    manifest = Path(manifest)
    rows = [line for line in manifest.read_text().splitlines()
            if (words := json.loads(line)["text"].split()) and set(words) <= set(DIGITS)]  # not the empty ones
    out = manifest.with_name("digits.jsonl")
    with atomic_file(out) as tmp:  # another DDP rank reading it sees the old file or the whole new one
        tmp.write_text("".join(row + "\n" for row in rows))
    return out


BUNDLED = ASSETS / "tiny-asr"  # what sample.py uses when no --checkpoint is given


def export(checkpoint, out=BUNDLED) -> Path:
    """A train.py checkpoint -> the bundled model: the model files only (no optimizer or trainer state), weights
    stored in float16 (half the bytes; ASRModel.load runs a from-scratch model in float32 again)."""
    from nanoaudio.model import ASRModel

    ASRModel.load(checkpoint).save(out, dtype=torch.float16)
    return Path(out)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="The tiny preset's tools.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a train.py checkpoint as the bundled model (float16, model files only)")
    e.add_argument("checkpoint", help="e.g. out/tiny/last")
    e.add_argument("--out", default=str(BUNDLED), help="destination folder (default: the bundled model's)")
    args = p.parse_args(argv)
    print(export(args.checkpoint, args.out))


if __name__ == "__main__":
    from nanoaudio import run_cli

    run_cli(main)
