"""How much memory a training run needs, before it starts: parameters counted from the real modules, bytes
from a formula for what autograd keeps. Shared by `python -m nanoaudio.compare decoders` and train.py.

    total = weights + gradients + AdamW state + activations

- Parameters: the real Decoder, encoder (HubertEncoder or WhisperEncoder), AudioProjector and LoRA layers are built
  on the meta device (shapes only, no memory, no time) and counted with sum(p.numel()), so every number follows the real
  config.json, including tied embeddings and Qwen3's head_dim != hidden/heads.
- weights: frozen parameters in the training dtype (bf16: train.py stores frozen weights in bf16), trainable
  ones in fp32 (master weights). gradients: 4 bytes per trainable parameter. AdamW: 2 fp32 moments, 8 bytes.
- activations: what the autograd graph saves for the backward pass, counted tensor by tensor for one decoder
  layer (`layer_activation_bytes`, every term commented). The frozen base weights save nothing for their own
  gradient, but the input needs one (it flows back to the projector), so activations are kept everywhere.
  With gradient checkpointing a layer keeps only its input, and recomputes the rest during backward.
  Plus the projector's, the backward pass's own peak (the larger of the loss on the label tokens and one
  MLP's gradients), and the frozen encoder's transient peak (it runs before the decoder, so the peak is the
  larger of the two, not the sum).
- The total is the plain sum, meant as an upper bound. When only the projector and LoRA train, gradients
  are tiny and the sum is the peak (measured on CPU: 3% high, 13% with checkpointing, where the upper bounds
  for the encoder and the backward's working set show); when everything trains it is ~10-30% high, because
  gradients are created as the activations they replace are freed.
- The formula is checked tensor by tensor against autograd's saved tensors on CPU, and as a whole against the
  measured peak of a real training step (tests/test_compare.py).
- kv_cache: inference, (L, 2, B, Hkv, T, D) in the activation dtype for the prompt plus the transcript.
Not counted: the CUDA context and library workspaces (~0.5-1 GiB), allocator fragmentation, torch.compile.
Legend: B batch, T tokens (audio + text), C width, I MLP width, H/Hkv heads, D head dim, L layers, V vocab.
"""

import functools
import math
from dataclasses import dataclass

import torch

from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.config import DecoderConfig, ProjectorConfig, WhisperEncoderConfig
from nanoaudio.lora import DEFAULT_TARGETS

TEXT_TOKENS_PER_SECOND = 4.0  # read speech: ~2.7 words/s (LibriSpeech) x ~1.4 BPE tokens/word, rounded up
PROMPT_TOKENS = 30  # chat template + instruction around the audio (Qwen3: 25 with the empty think block)
GiB = 2**30


@dataclass(frozen=True)
class Budget:
    # the run
    batch_size: int
    audio_seconds: float
    audio_tokens: int  # per sample, after stacking
    seq_len: int  # decoder tokens per sample: prompt + audio + transcript
    dtype: str
    grad_checkpointing: bool
    # parameters
    params_encoder: int
    params_projector: int
    params_decoder: int  # without LoRA
    params_lora: int
    params_trainable: int
    # bytes
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    kv_cache_bytes: int  # inference, batch_size sequences of seq_len
    encoder_peak_bytes: int = 0  # the frozen encoder's transient; activations_bytes when it sets the peak

    @property
    def params_total(self) -> int:
        return self.params_encoder + self.params_projector + self.params_decoder + self.params_lora

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes


# -----------------------------------------------------------------------------
# parameters, from the real modules on the meta device


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors are listed once


@functools.lru_cache(maxsize=64)
def decoder_params(cfg: DecoderConfig, lora_r: int = 0, lora_targets: tuple = ()) -> tuple[int, int]:
    """-> (decoder parameters, LoRA parameters), counted on a meta-device Decoder with LoRA applied."""
    from nanoaudio.decoder import Decoder
    from nanoaudio.lora import apply_lora

    with torch.device("meta"):
        d = Decoder(cfg)
    base = n_params(d)
    if lora_r > 0:
        apply_lora(d, lora_targets, r=lora_r, alpha=2 * lora_r, dropout=0.0)
    return base, n_params(d) - base


@functools.lru_cache(maxsize=64)
def projector_params(cfg: ProjectorConfig) -> int:
    from nanoaudio.projector import AudioProjector

    with torch.device("meta"):
        return n_params(AudioProjector(cfg))


def encoder_class(cfg):
    """HubertEncoder or WhisperEncoder, by the config's type."""
    from nanoaudio.encoder import HubertEncoder
    from nanoaudio.whisper import WhisperEncoder

    return WhisperEncoder if isinstance(cfg, WhisperEncoderConfig) else HubertEncoder


@functools.lru_cache(maxsize=16)
def encoder_params(cfg) -> int:
    with torch.device("meta"):
        return n_params(encoder_class(cfg)(cfg))


# -----------------------------------------------------------------------------
# activations: bytes that autograd saves, per token


def layer_activation_bytes(cfg: DecoderConfig, s: int, lora_targets=(), lora_r=0, lora_dropout=0.0,
                           cuda=True) -> int:
    """Bytes one decoder layer keeps for backward, per token. s: bytes per activation (2 bf16, 4 fp32).

    cuda=True: the Triton path (RMSNorm and flash-attention kernels, fused dropout), as train.py runs on a
    GPU; cuda=False: the PyTorch path nanoaudio takes on CPU.
    """
    C, I, H, Hkv, D = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                       cfg.num_key_value_heads, cfg.head_dim)
    Q, KV = H * D, Hkv * D
    # RMSNorm keeps its input for backward: the kernel keeps x itself (s bytes), PyTorch's reference an fp32
    # copy (4 bytes, it normalizes in fp32); both keep 1/rms, one fp32 per row.
    n = s if cuda else 4
    b = 2 * (n * C + 4)  # input_layernorm, post_attention_layernorm
    if cfg.qk_norm:
        b += n * Q + 4 * H + n * KV + 4 * Hkv  # Qwen3's q_norm and k_norm, one row per head
    # attention keeps q, k, v, its output and the logsumexp of each row (fp32). The flash kernel reads the
    # shared K/V heads directly; the PyTorch path repeats k and v to all H heads before SDPA (GQA).
    kv = KV if cuda else Q
    b += s * (Q + 2 * kv + Q) + 4 * H
    b += 3 * s * I  # MLP: silu keeps gate(x); silu(gate) * up keeps both factors
    # LoRA: lora_A keeps its input, lora_B its (r,) input. With dropout each target draws its own mask and
    # keeps its own dropped-out copy of the input (CUDA: a bool mask; CPU: a float one); without dropout,
    # q/k/v share one input (the normed x), gate/up another, o and down each their own.
    width = {"q_proj": ("x1", C), "k_proj": ("x1", C), "v_proj": ("x1", C), "o_proj": ("y", Q),
             "gate_proj": ("x2", C), "up_proj": ("x2", C), "down_proj": ("m", I)}
    if lora_r > 0:
        if lora_dropout > 0:
            b += sum((s + (1 if cuda else s)) * width[t][1] for t in lora_targets)
        else:
            b += s * sum(dict(width[t] for t in lora_targets).values())
        b += s * lora_r * len(lora_targets)
    return b


def full_layer_bytes(cfg: DecoderConfig, s: int, cuda=True) -> int:
    """Per token, everything a fully trainable layer keeps: also the inputs of every linear (for dW)."""
    C, I, Q = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim
    KV = cfg.num_key_value_heads * cfg.head_dim
    b = layer_activation_bytes(cfg, s, cuda=cuda) + s * (C + Q + C + I)  # x1 (q,k,v), y (o), x2 (gate,up), m (down)
    if not cuda:  # PyTorch's RMSNorm also keeps its normalized input, for the weight's gradient
        b += s * (2 * C + ((Q + KV) if cfg.qk_norm else 0))
    return b


def projector_activation_bytes(cfg: ProjectorConfig, s: int) -> int:
    """Per audio token (upper bound, PyTorch path): fp32 stacked input and normed copy for ln_pre, its cast for
    the linear, dropout mask and output, fp32 copy and normed output for ln_post; SwiGLU adds its hidden."""
    kC, Cd = cfg.stack * cfg.encoder_dim, cfg.decoder_dim
    b = kC * (4 + 4 + s) + Cd * (1 + s + 4 + s) + 8
    if cfg.kind == "swiglu":
        b += 4 * s * cfg.hidden  # gate out, up out, silu(gate), their product (input of down_proj)
    return b


def head_bytes(vocab: int, label_tokens: int) -> int:
    """The loss on label_tokens positions: fp32 log-probs saved by log_softmax, and in backward their gradient
    and the gradient of the logits, each (labels, V) fp32: 12 bytes per label per vocabulary entry."""
    return 12 * label_tokens * vocab


def encoder_transient_bytes(enc_cfg, batch_size: int, samples: int, s: int) -> int:
    """Peak of the frozen encoder's forward (no_grad), in elements of its first conv layer's output
    (B, S/5, conv_dim), the largest tensor it makes: about three such tensors at once. On a GPU under bf16
    autocast, the conv output (s bytes), then the LayerNorm's fp32 input copy and fp32 output: s + 8 bytes.
    On CPU in fp32 the channels-last conv stack measures ~9.5 bytes (tests/test_compare.py): an upper bound.
    Whisper: see whisper_transient_bytes."""
    if isinstance(enc_cfg, WhisperEncoderConfig):
        return whisper_transient_bytes(enc_cfg, batch_size, samples, s)
    width = enc_cfg.conv_dim[0]
    frames0 = (samples - enc_cfg.conv_kernel[0]) // enc_cfg.conv_stride[0] + 1
    return batch_size * width * frames0 * (s + 8)


def whisper_transient_bytes(enc_cfg: WhisperEncoderConfig, batch_size: int, samples: int, s: int) -> int:
    """Peak of a frozen WhisperEncoder's forward (no_grad): the larger of
    - the front end, per mel frame: the STFT's frames (400 fp32), its complex spectrum (201 x 8 bytes) and power
      (201 x 4), in fp32 whatever the encoder's dtype;
    - a layer's MLP, per encoder frame: the residual stream, fc2's output and their sum (C each), fc1's output
      and its GELU (I each), s bytes each. Attention on a GPU (the flash kernel) keeps no F x F scores.
    Frames: all 1500 in the pad-to-30 s mode, whatever the audio; only the real ones in the true-length mode.
    Measured on CPU in fp32: 0.95-0.97 of this (tests/test_whisper.py)."""
    if enc_cfg.pad_to_30s:
        mel_frames, frames = 3000, 1500
    else:
        mel_frames, frames = -(-samples // 160), enc_cfg.num_frames(samples)
    front = batch_size * (mel_frames + 6) * (400 * 4 + 201 * 12)  # + 6: the few frames past the audio it computes
    layer = batch_size * frames * (3 * enc_cfg.d_model + 2 * enc_cfg.encoder_ffn_dim) * s
    return max(front, layer)


def encoder_activation_bytes(enc_cfg, batch_size: int, samples: int, s: int) -> int:
    """What a TRAINED encoder keeps for backward (the tiny preset trains its own). Counted, not derived: the
    real HubertEncoder runs on the meta device (no memory) in training mode, and every tensor autograd saves
    is summed once per storage; an fp32 trace, scaled to s bytes per element."""
    with torch.device("meta"):
        enc = encoder_class(enc_cfg)(enc_cfg).train()
        wave = torch.empty(batch_size, samples)
    own = {t.untyped_storage()._cdata for t in enc.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in own:
            seen[st._cdata] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(wave)
    return sum(seen.values()) * s // 4


def kv_cache_bytes(cfg: DecoderConfig, batch_size: int, tokens: int, s: int) -> int:
    return 2 * cfg.num_hidden_layers * batch_size * cfg.num_key_value_heads * tokens * cfg.head_dim * s


def encoder_frames(enc_cfg, samples: int) -> int:
    """Frames the encoder gives for `samples` (the arithmetic lives on its config)."""
    return enc_cfg.num_frames(samples)


# -----------------------------------------------------------------------------
# the estimate


def estimate(decoder_cfg: DecoderConfig, encoder_cfg, projector_cfg: ProjectorConfig, lora_r: int = 8,
             lora_targets=DEFAULT_TARGETS, batch_size: int = 8,
             audio_seconds: float = 20.0, text_tokens: int | None = None, dtype: str = "bf16",
             grad_checkpointing: bool = False, trainable: str = "lora", lora_dropout: float = 0.05,
             prompt_tokens: int = PROMPT_TOKENS, cuda: bool = True, train_encoder: bool = False) -> Budget:
    """The budget of one training step on batch_size utterances of audio_seconds each.

    trainable: "lora" (the course: projector + LoRA adapters; lora_r=0 trains the projector alone) or "all"
    (decoder and projector from scratch, as the tiny preset; train_encoder=True trains the encoder too).
    dtype: "bf16" (frozen weights and activations in bf16, trainable weights fp32) or "fp32". text_tokens:
    transcript tokens per sample (default TEXT_TOKENS_PER_SECOND * audio_seconds). cuda: the GPU code path
    (Triton kernels, fused dropout) or the CPU one; they keep slightly different tensors.
    """
    if trainable not in ("lora", "all"):
        raise ValueError(f"trainable must be 'lora' or 'all', got {trainable!r}")
    s = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    lora_targets = tuple(lora_targets) if lora_r > 0 and trainable == "lora" else ()
    lora_r = lora_r if lora_targets else 0
    p_dec, p_lora = decoder_params(decoder_cfg, lora_r, lora_targets)
    p_enc, p_proj = encoder_params(encoder_cfg), projector_params(projector_cfg)

    # tokens of one sample
    samples = int(round(audio_seconds * SAMPLE_RATE))
    n_audio = -(-encoder_frames(encoder_cfg, samples) // projector_cfg.stack)  # ceil(F / k)
    n_text = int(math.ceil(TEXT_TOKENS_PER_SECOND * audio_seconds)) if text_tokens is None else int(text_tokens)
    T = prompt_tokens + n_audio + n_text + 1  # + the end-of-turn token
    N = batch_size * T  # decoder tokens in the batch

    # weights, gradients, optimizer
    train_p = p_proj + p_lora + (p_dec if trainable == "all" else 0) + (p_enc if train_encoder else 0)
    frozen_p = (0 if train_encoder else p_enc) + (p_dec if trainable == "lora" else 0)
    weights = frozen_p * s + train_p * 4
    grads, adam = train_p * 4, train_p * 8

    # activations
    L = decoder_cfg.num_hidden_layers
    if trainable == "all":
        layer = full_layer_bytes(decoder_cfg, s, cuda)
    else:
        layer = layer_activation_bytes(decoder_cfg, s, lora_targets, lora_r, lora_dropout, cuda)
    final_norm = (s if cuda else 4) * decoder_cfg.hidden_size + 4
    if trainable == "all" and not cuda:
        final_norm += s * decoder_cfg.hidden_size  # its normalized input, for the weight's gradient
    if grad_checkpointing:
        kept = L * s * decoder_cfg.hidden_size + layer  # every layer's input, and one layer recomputed at a time
    else:
        kept = L * layer
    act = N * (kept + final_norm) + batch_size * n_audio * projector_activation_bytes(projector_cfg, s)
    # On top of what is kept, the backward pass peaks twice: first at the loss (head_bytes), then in each
    # layer's MLP, which holds three (I)-wide gradients at once (of its output m, of silu(gate), of up) and
    # two (C)-wide ones. They do not overlap: the head's are freed before the layers' backward starts.
    working = N * s * (3 * decoder_cfg.intermediate_size + 2 * decoder_cfg.hidden_size)
    act += max(head_bytes(decoder_cfg.vocab_size, batch_size * (n_text + 1)), working)
    if train_encoder:  # its activations stay alive until the backward pass reaches it
        act += encoder_activation_bytes(encoder_cfg, batch_size, samples, s)
        enc_peak = 0
    else:  # a frozen encoder runs first, under no_grad: its transient peak comes before any of the above
        enc_peak = encoder_transient_bytes(encoder_cfg, batch_size, samples, s)
        act = max(act, enc_peak)
    kv = kv_cache_bytes(decoder_cfg, batch_size, T, s)
    return Budget(batch_size=batch_size, audio_seconds=audio_seconds, audio_tokens=n_audio, seq_len=T, dtype=dtype,
                  grad_checkpointing=grad_checkpointing, params_encoder=p_enc, params_projector=p_proj,
                  params_decoder=p_dec, params_lora=p_lora, params_trainable=train_p, weights_bytes=weights,
                  grads_bytes=grads, optimizer_bytes=adam, activations_bytes=act, kv_cache_bytes=kv,
                  encoder_peak_bytes=enc_peak)


def estimate_for_model(model, batch_size: int, audio_seconds: float, precision: str = "bf16",
                       grad_checkpointing: bool = False, text_tokens: int | None = None) -> Budget:
    """The same estimate for a built ASRModel (train.py): configs, LoRA rank/targets and the prompt length
    are read from the model itself."""
    from nanoaudio.lora import lora_layers
    from nanoaudio.model import build_prompt

    layers = lora_layers(model.decoder)
    first = next(iter(layers.values()), None)
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name in layers}))
    base_trainable = any(p.requires_grad for n, p in model.decoder.named_parameters() if "lora_" not in n)
    ids, _, _ = build_prompt(model.tokenizer, model.family, 0, None, model.config.instruction)
    device = next(model.decoder.parameters()).device
    return estimate(model.decoder.config, model.encoder.config, model.projector.config,
                    lora_r=first.r if first else 0, lora_targets=targets, batch_size=batch_size,
                    audio_seconds=audio_seconds, text_tokens=text_tokens, dtype=precision,
                    grad_checkpointing=grad_checkpointing, trainable="all" if base_trainable else "lora",
                    lora_dropout=getattr(first.lora_dropout, "p", 0.0) if first else 0.0,
                    prompt_tokens=len(ids), cuda=device.type == "cuda",
                    train_encoder=any(p.requires_grad for p in model.encoder.parameters()))


def format_budget(b: Budget) -> str:
    def gib(x):
        return f"{x / GiB:8.2f} GiB"

    ck = "with" if b.grad_checkpointing else "without"
    return "\n".join([
        f"memory budget: batch {b.batch_size} x {b.audio_seconds:g} s audio ({b.audio_tokens} audio tokens, "
        f"{b.seq_len} decoder tokens per sample), {b.dtype}, {ck} gradient checkpointing",
        f"  parameters  {b.params_total:>15,} total, {b.params_trainable:,} trainable "
        f"(encoder {b.params_encoder:,}, projector {b.params_projector:,}, decoder {b.params_decoder:,}, "
        f"LoRA {b.params_lora:,})",
        f"  weights     {gib(b.weights_bytes)}   frozen in {b.dtype}, trainable in fp32",
        f"  gradients   {gib(b.grads_bytes)}",
        f"  AdamW state {gib(b.optimizer_bytes)}",
        f"  activations {gib(b.activations_bytes)}"
        + ("   (the frozen encoder's forward sets this peak)" if b.activations_bytes == b.encoder_peak_bytes
           else ""),
        f"  total       {gib(b.total_bytes)}   (on a GPU add the CUDA context and workspaces, ~0.5-1 GiB)",
        f"  inference KV cache {b.kv_cache_bytes / GiB:.2f} GiB for {b.batch_size} x {b.seq_len} tokens",
    ])
