"""Whisper's encoder: raw 16 kHz waveform in, a log-mel spectrogram, then one 384..1280-d vector per 20 ms frame.

    waveform (B, S) --zero-pad to 30 s, STFT (400 / hop 160), |.|^2, mel filters, log10, floor, scale-->
      log-mel (B, n_mels, 3000) --conv1 (k3) GELU, conv2 (k3, stride 2) GELU--> (B, 1500, C)
      --+ embed_positions--> L pre-LN Transformer layers --> layer_norm --> hidden (B, F, C), F = num_frames(S)

Features:
- the front end written out (`log_mel_spectrogram`): Whisper's constants, each derived value annotated, and the
  Slaney mel filters computed here, not shipped: bit-identical to whisper's mel_filters.npz (80 and 128 bins);
- parameter names are transformers' WhisperEncoder names, so a checkpoint loads as is once `model.encoder.`
  (WhisperForConditionalGeneration) or `encoder.` (WhisperModel) is stripped; the text decoder's tensors are
  never read (`load_whisper_encoder`);
- `embed_positions` is read from the checkpoint, not recomputed: it is the sinusoid table rounded to the
  checkpoint's fp16, and a table recomputed in fp32 would shift every output (the tests fill it with random
  values, so a recomputed table would fail them);
- two input modes (config.pad_to_30s, recorded in the checkpoint): pad every input to 30 s and attend over all
  1500 frames, as Whisper was trained (exact parity with transformers); or true length, the positional table
  sliced to the real frames and padded keys masked (Ultravox). Either way forward returns the F = num_frames(S)
  frames that cover real audio, and a padded batch gives each sample what it gives alone;
- raw samples in: the log-mel's own per-utterance floor and scaling normalize, so `normalize_audio` is False
  (HuBERT's is True: audio.batch_audio(waves, normalize=encoder.normalize_audio));
- no CTC head: `lm_head` is None and `ctc_logits` says so in one line.
References: Whisper (arXiv:2212.04356); openai/whisper audio.py and model.py; transformers models/whisper/
modeling_whisper.py and feature_extraction_whisper.py; librosa.filters.mel (Slaney's Auditory Toolbox scale);
Ultravox (fixie-ai/ultravox, the true-length encoder).
Legend: B batch, S samples, M mel bins, T mel frames, F encoder frames, C width, H heads, D head dim.
"""

import functools
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanoaudio import NanoaudioError
from nanoaudio.config import EncoderFrames, WhisperEncoderConfig
from nanoaudio.load import DTYPES, load_state, parse_dtype, read_json, read_tensors
from nanoaudio.nn import attention

# hard-coded audio hyperparameters, as whisper's audio.py (every Whisper size shares them)
SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # 25 ms STFT window
HOP_LENGTH = 160  # 10 ms between mel frames
CHUNK_LENGTH = 30  # seconds: the encoder's window, every input is padded to it
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480,000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a chunk
N_FREQS = N_FFT // 2 + 1  # 201 STFT bins: 0 .. 8000 Hz in steps of SAMPLE_RATE / N_FFT = 40 Hz
CONV_STRIDE = 2  # conv2 halves the frame rate ...
FRAMES_PER_SECOND = SAMPLE_RATE // (HOP_LENGTH * CONV_STRIDE)  # ... to 50 encoder frames per second (20 ms)
N_POSITIONS = N_FRAMES // CONV_STRIDE  # 1500 encoder frames in a chunk: the positional table's rows
LOG_FLOOR = 1e-10  # mel power is clamped here before log10: silence gives -10, not -inf
DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's loudest bin: 80 dB

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above
MEL_LINEAR_HZ = 200.0 / 3  # 66.67 Hz per mel below 1 kHz
MEL_LOG_HZ = 1000.0  # where the log part starts ...
MEL_LOG_START = MEL_LOG_HZ / MEL_LINEAR_HZ  # ... at 15 mels
MEL_LOG_STEP = math.log(6.4) / 27.0  # above it, 27 mels per factor 6.4 in frequency (1 kHz -> 6.4 kHz)


# -----------------------------------------------------------------------------
# the log-mel front end: (B, S) -> (B, M, 3000)


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f >= MEL_LOG_HZ, MEL_LOG_START + torch.log(f / MEL_LOG_HZ) / MEL_LOG_STEP, f / MEL_LINEAR_HZ)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return torch.where(m >= MEL_LOG_START, MEL_LOG_HZ * torch.exp(MEL_LOG_STEP * (m - MEL_LOG_START)),
                       m * MEL_LINEAR_HZ)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int) -> torch.Tensor:
    """(M, 201) float32: M triangles evenly spaced on the mel scale from 0 to 8 kHz, each of area ~1 (Slaney).

    Triangle i rises from edge i to edge i+1 and falls to edge i+2 (M + 2 edges, in Hz), sampled at the 201
    STFT bin frequencies, then scaled by 2 / (its width in Hz), so that wide high-frequency bands do not
    outweigh narrow low ones. Computed in float64. whisper's mel_filters.npz came from librosa, which stores
    the triangles in float32 BEFORE the Slaney scaling and rounds again after it; the same two roundings here
    give its values bit for bit (a single rounding differs in the last bit: 118 of the 80-bin values, 85 of
    the 128-bin ones, as transformers' filters do).
    """
    cpu = dict(dtype=torch.float64, device="cpu")  # always: it is cached, and may first run under a meta device
    freqs = torch.arange(N_FREQS, **cpu) * (SAMPLE_RATE / N_FFT)  # (201,) 0, 40, ..., 8000 Hz
    top = hz_to_mel(torch.tensor(SAMPLE_RATE / 2, **cpu))  # 8 kHz = 45.25 mels
    edges = mel_to_hz(torch.linspace(0.0, top.item(), n_mels + 2, **cpu))  # (M + 2,) Hz
    width = edges[1:] - edges[:-1]  # (M + 1,)
    below = (freqs[None, :] - edges[:-2, None]) / width[:-1, None]  # (M, 201): rising edge, 1 at the peak
    above = (edges[2:, None] - freqs[None, :]) / width[1:, None]  # (M, 201): falling edge
    triangles = torch.clamp(torch.minimum(below, above), min=0.0).float().double()  # librosa's float32 store
    slaney = 2.0 / (edges[2:] - edges[:-2])  # (M,)
    return (triangles * slaney[:, None]).float()


def log_mel_spectrogram(waveform: torch.Tensor, n_mels: int = 80, frames: int = N_FRAMES) -> torch.Tensor:
    """(B, S) or (S,) raw 16 kHz samples -> (B, M, frames) or (M, frames): Whisper's log-mel spectrogram.

    Samples past each utterance's end must be zeros (batch_audio pads with zeros). S is at most 30 s:
    longer input raises (transformers' WhisperFeatureExtractor silently keeps the first 30 s; cut the audio
    yourself, `waveform[..., :N_SAMPLES]`, if that is what you want).
        x     = waveform zero-padded to 30 s (480,000 samples)
        X     = STFT(x): periodic Hann window of 400, hop 160, centred (reflect-padded by 200 at both ends);
                3001 frames, the last dropped (whisper's convention): 3000
        power = |X|^2                                                    (B, 201, 3000)
        mel   = filters @ power                                           (B, M, 3000)
        log   = log10(max(mel, 1e-10)), floored at (its maximum over the utterance) - 8
        out   = (log + 4) / 4                                             roughly in [-1, 1]
    frames < 3000 (the true-length mode): the first `frames` columns of the same 30 s spectrogram, computed
    from a shorter STFT: past the audio's reach every frame is silence (log = -10), which never sets the maximum.
    """
    x = torch.as_tensor(waveform)
    single = x.dim() == 1
    x = x[None] if single else x
    if x.dim() != 2:
        raise NanoaudioError(f"log_mel_spectrogram: waveform must be (S,) or (B, S), got {tuple(x.shape)}")
    S = x.shape[1]
    if S > N_SAMPLES:
        raise NanoaudioError(f"waveform of {S} samples ({S / SAMPLE_RATE:.2f} s) is longer than Whisper's "
                             f"{CHUNK_LENGTH} s window ({N_SAMPLES} samples): split the audio")
    if not 1 <= frames <= N_FRAMES:
        raise NanoaudioError(f"log_mel_spectrogram: frames must be in 1..{N_FRAMES}, got {frames}")
    # samples to transform: all 30 s; or, for fewer frames, enough that the frames after them hear only zeros
    # (a window reaches N_FFT / 2 samples either side of its centre)
    L = N_SAMPLES if frames == N_FRAMES else min(N_SAMPLES, max(S, HOP_LENGTH * frames) + 2 * N_FFT)
    x = F.pad(x.float(), (0, L - S))  # (B, L): zeros after the audio, as Whisper pads
    window = torch.hann_window(N_FFT, periodic=True, device=x.device)  # 0.5 - 0.5 cos(2 pi n / 400)
    X = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                   return_complex=True)  # (B, 201, L // 160 + 1)
    power = X.abs() ** 2  # (B, 201, L // 160 + 1)
    mel = mel_filters(n_mels).to(x.device) @ power  # (M, 201) @ (B, 201, T') -> (B, M, T')
    log = mel[..., :-1].clamp(min=LOG_FLOOR).log10()  # drop the last frame: (B, M, L // 160)
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - DYNAMIC_RANGE)  # each utterance's own floor
    out = ((log + 4.0) / 4.0)[..., :frames]  # (B, M, frames)
    return out[0] if single else out


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """(length, channels) Transformer positional table, sines then cosines: the init of embed_positions."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))  # (C/2,)
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]  # (length, C/2)
    return torch.cat([t.sin(), t.cos()], dim=1)


# -----------------------------------------------------------------------------
# Transformer encoder: (B, F, C) -> (B, F, C)


class Attention(nn.Module):
    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        C = cfg.d_model
        self.n_head = cfg.encoder_attention_heads
        self.q_proj, self.v_proj, self.out_proj = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        # no bias on k: it would add the same q.b to every score of a query's row, which softmax ignores
        self.k_proj = nn.Linear(C, C, bias=False)

    def forward(self, x, lengths=None):  # (B, F, C) -> (B, F, C)
        B, F_, C = x.shape
        H, D = self.n_head, C // self.n_head
        # q is scaled by 1/sqrt(D) before the dot product, as transformers does (whisper scales q and k by
        # D^-1/4 each): the same math, and the same rounding as the reference when done in the same place
        q = (self.q_proj(x) * D**-0.5).view(B, F_, H, D).transpose(1, 2)  # (B, F, C) -> (B, H, F, D)
        k = self.k_proj(x).view(B, F_, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, F_, H, D).transpose(1, 2)
        # bidirectional; in the true-length mode padded frames are masked as keys
        y = attention(q, k, v, causal=False, softmax_scale=1.0, kv_lens=lengths)  # (B, H, F, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, F_, C))


class EncoderLayer(nn.Module):
    """Pre-LN: normalize each branch's input; the residual stream itself is normalized once, at the end."""

    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        C = cfg.d_model
        self.self_attn_layer_norm = nn.LayerNorm(C)  # eps 1e-5, PyTorch's default (whisper, transformers)
        self.self_attn = Attention(cfg)
        self.final_layer_norm = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, C)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x, lengths=None):  # (B, F, C) -> (B, F, C)
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), lengths))
        h = self.activation_dropout(F.gelu(self.fc1(self.final_layer_norm(x))))  # exact (erf) GELU
        return x + self.dropout(self.fc2(h))


# -----------------------------------------------------------------------------
# the model


class WhisperEncoder(EncoderFrames, nn.Module):
    normalize_audio = False  # raw samples in: the log-mel normalizes (HubertEncoder: True)

    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        self.config = config
        C = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, C, kernel_size=3, padding=1)  # (B, M, T) -> (B, C, T)
        self.conv2 = nn.Conv1d(C, C, kernel_size=3, stride=CONV_STRIDE, padding=1)  # -> (B, C, (T - 1) // 2 + 1)
        # a table, as transformers stores it (a frozen parameter; whisper: a buffer); read from the checkpoint
        self.embed_positions = nn.Embedding(config.max_source_positions, C)
        self.embed_positions.requires_grad_(False)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(C)
        self.lm_head = None  # no CTC head: Whisper was trained with its own text decoder, not CTC
        self.source = None  # the name or folder it was loaded from (load_encoder)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Random init for training from scratch, as transformers' WhisperPreTrainedModel: Linear and Conv1d
        ~ N(0, init_std) with zero bias, LayerNorm 1 and 0, embed_positions = sinusoids (as whisper)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                m.weight.normal_(0.0, self.config.init_std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        self.embed_positions.weight.copy_(sinusoids(*self.embed_positions.weight.shape))

    # forward ----------------------------------------------------------------------

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """waveform (B, S) raw samples (not normalized), attention_mask (B, S) -> hidden (B, F, C), F = num_frames(S).

        pad_to_30s: all 1500 frames are computed over the 30 s chunk (the padding is silence to the model, as
        in training) and the first F returned: the rest cover only padding. True length: only those F.
        """
        B, S = waveform.shape
        max_samples = min(N_SAMPLES, self.config.max_source_positions * HOP_LENGTH * CONV_STRIDE)
        if S == 0 or S > max_samples:
            raise NanoaudioError(f"waveform of {S} samples ({S / SAMPLE_RATE:.2f} s): Whisper's encoder takes 1 to "
                                 f"{max_samples} samples ({max_samples / SAMPLE_RATE:g} s)")
        x = waveform.float()  # the log-mel is computed in fp32 whatever the encoder's dtype
        padded = attention_mask is not None and bool((attention_mask.sum(-1) < S).any())
        if padded:
            x = x * attention_mask.to(x.dtype)  # zeros after each sample's end: what it is padded with alone
        F_ = self.num_frames(S)
        if self.config.pad_to_30s:
            mel = log_mel_spectrogram(x, self.config.num_mel_bins)  # (B, M, 3000)
            return self.encode(mel)[:, :F_]  # (B, 1500, C) -> (B, F, C)
        T = -(-S // HOP_LENGTH)  # mel frames covering the longest sample
        mel = log_mel_spectrogram(x, self.config.num_mel_bins, frames=T)  # (B, M, T)
        mel_lens = -(-attention_mask.sum(-1).long() // HOP_LENGTH) if padded else None  # (B,) ceil(S_b / 160)
        return self.encode(mel, mel_lens)  # (B, F, C)

    def encode(self, mel: torch.Tensor, mel_lens: torch.Tensor | None = None) -> torch.Tensor:
        """log-mel (B, M, T) -> (B, (T - 1) // 2 + 1, C). mel_lens (B,): valid mel frames (true-length mode).

        With mel_lens, frames past a sample's end are zeroed before each conv, so its last frames see the same
        zeros as the convs' own padding when it runs alone, and are masked as attention keys.
        """
        x = mel.to(self.conv1.weight.dtype)
        if mel_lens is not None:
            valid = (torch.arange(x.shape[2], device=x.device)[None, :] < mel_lens[:, None])[:, None, :]  # (B, 1, T)
            x = x * valid.to(x.dtype)
        x = F.gelu(self.conv1(x))  # (B, M, T) -> (B, C, T)
        if mel_lens is not None:
            x = x * valid.to(x.dtype)
        x = F.gelu(self.conv2(x))  # (B, C, T) -> (B, C, F)
        F_ = x.shape[2]
        x = x.transpose(1, 2) + self.embed_positions.weight[:F_]  # (B, F, C), positions 0 .. F - 1
        x = self.dropout(x)
        lengths = None if mel_lens is None else (mel_lens - 1) // CONV_STRIDE + 1  # (B,) valid frames, as conv2
        for layer in self.layers:
            x = layer(x, lengths)
        return self.layer_norm(x)

    def ctc_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NanoaudioError("the Whisper encoder has no CTC head: CTC rescoring and the CTC loss need a HuBERT "
                             "encoder with one (a HubertForCTC checkpoint)")


# -----------------------------------------------------------------------------
# loading and saving


def rename(key: str) -> str | None:
    """Checkpoint key -> our key, or None for the text decoder's tensors (never read)."""
    for prefix in ("model.encoder.", "encoder."):  # WhisperForConditionalGeneration, WhisperModel
        if key.startswith(prefix):
            return key[len(prefix):]
    if key.startswith(("model.decoder.", "decoder.", "proj_out.")):  # the text decoder and its output head
        return None
    return key  # an encoder-only file (save_whisper_encoder, transformers' WhisperEncoder): verbatim


def read_preprocessor(folder: Path) -> tuple[dict | None, Path | None]:
    """The feature extractor's settings: preprocessor_config.json (the hub's) or processor_config.json (what
    transformers 5 writes, under "feature_extractor"); (None, None) when the checkpoint has neither."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (Path(folder) / name).is_file():
            return read_json(Path(folder) / name), Path(folder) / name
    return None, None


def load_whisper_encoder(folder, dtype=None, device="cpu") -> WhisperEncoder:
    """The encoder of a WhisperModel / WhisperForConditionalGeneration checkpoint folder (single file or
    sharded), or of one save_whisper_encoder wrote. dtype: None -> the config's torch_dtype (float32 if none)."""
    folder = Path(folder)
    pre, pre_path = read_preprocessor(folder)
    config = WhisperEncoderConfig.from_hf_config(read_json(folder / "config.json"), source=folder / "config.json",
                                                 preprocessor=pre, preprocessor_source=pre_path)
    dtype = parse_dtype(dtype) or DTYPES.get(config.torch_dtype or "", torch.float32)
    tensors = read_tensors(folder, dtype=dtype, device=device, rename=rename)
    with torch.device("meta"):
        model = WhisperEncoder(config)  # shapes only: no memory, no init work
    load_state(model, tensors, folder)
    model.embed_positions.requires_grad_(False)  # assign=True brought the file's tensor, and its default flag
    return model.eval()


def save_whisper_encoder(encoder: WhisperEncoder, folder) -> Path:
    """Write config.json, preprocessor_config.json and model.safetensors (keys unprefixed, as transformers'
    WhisperEncoder.from_pretrained reads them), which load_whisper_encoder reads back."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    hf = encoder.config.to_hf_config()
    hf["torch_dtype"] = str(next(encoder.parameters()).dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    pre = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": encoder.config.num_mel_bins,
           "sampling_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "chunk_length": CHUNK_LENGTH,
           "n_samples": N_SAMPLES, "nb_max_frames": N_FRAMES, "padding_value": 0.0, "return_attention_mask": False}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    tmp = folder / "model.safetensors.tmp"
    save_file(out, tmp, metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")  # never a half-written weights file
    return folder
