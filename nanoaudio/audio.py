"""Waveform in, model input out: read any audio file, make it 16 kHz mono float32, normalize, batch.

- `load_audio(path)` reads whatever soundfile (libsndfile) reads: wav/flac/ogg/mp3, int16/int32/float, any
  number of channels (averaged to mono), any sample rate (resampled here to 16 kHz). Paths, bytes and
  file-like objects (stdin for `sample.py -`) are accepted. Bad input raises NanoaudioError naming the file.
- `resample(x, orig_sr, new_sr)`: a band-limited polyphase resampler (Kaiser-windowed sinc low-pass), run as
  ONE strided conv1d. Same filter design as scipy.signal.resample_poly, so the tests compare sample by sample.
- `normalize(x)` / `batch_audio(waves)`: per-utterance zero mean and unit variance over the real samples,
  exactly as transformers' Wav2Vec2FeatureExtractor(do_normalize=True) does for the fine-tuned HuBERTs, then
  right-padding with zeros and an attention mask.
References: openai/whisper audio.py (constants with derived values annotated); scipy.signal.resample_poly
and firwin (the filter design); J. O. Smith, "Digital Audio Resampling" (the polyphase view).
Legend: B batch, S samples.
"""

import io
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

from nanoaudio import NanoaudioError


# hard-coded audio hyperparameters. The encoders' own frame arithmetic (hop, receptive field, frames per
# second) lives on their configs: EncoderConfig (HuBERT's conv stack, or the tiny preset's), WhisperEncoderConfig.
SAMPLE_RATE = 16000  # Hz: every HuBERT and Whisper checkpoint was pre-trained on 16 kHz audio
MIN_SAMPLES = 400  # 25 ms: one frame of HuBERT's conv front end (its receptive field); shorter is not speech
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's epsilon: silence (variance 0) normalizes to zeros, not NaN

# the resampler's filter: the defaults of scipy.signal.resample_poly
KAISER_BETA = 5.0  # window shape: ~ -55 dB side lobes, a ~0.1 * Nyquist transition band at 10 zero crossings
ZERO_CROSSINGS = 10  # sinc lobes kept on each side of the filter's centre


# -----------------------------------------------------------------------------
# reading


def load_audio(source, sample_rate: int = SAMPLE_RATE, name: str | None = None) -> torch.Tensor:
    """A file path, bytes or a binary file-like object -> (S,) float32 mono at `sample_rate`, not normalized.

    name: what messages call the source (default: the path, the stream's name, "<bytes>"; sample.py passes
    "<stdin>"). A file that decodes to fewer frames than its header states (cut off mid-file) is returned as
    decoded, with a warning on stderr that gives both lengths.
    """
    import soundfile as sf

    if isinstance(source, (bytes, bytearray, memoryview)):
        name, f = name or "<bytes>", io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        name = name or str(getattr(source, "name", "<stream>"))
        # libsndfile seeks (it reads the header, then the data): pipes such as stdin must be buffered first
        seekable = getattr(source, "seekable", lambda: False)()
        f = source if seekable else io.BytesIO(source.read())
    else:
        name = name or str(source)
        path = Path(source).expanduser()
        if not path.exists():
            raise NanoaudioError(f"{name}: no such file")
        if path.is_dir():
            raise NanoaudioError(f"{name}: is a folder, not an audio file")
        f = path
    try:
        with sf.SoundFile(f) as snd:
            sr, stated = snd.samplerate, max(snd.frames, _header_frames(snd))
            # always_2d: (S, channels) for every file; integer PCM is scaled to [-1, 1) (int16 / 32768, ...)
            data = snd.read(dtype="float32", always_2d=True)
            exact = snd.format in ("WAV", "WAVEX")
    except (RuntimeError, TypeError, ValueError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        # error_string: libsndfile's own words, without soundfile's "Error opening <_io.BytesIO object at 0x...>"
        reason = getattr(e, "error_string", None) or str(e).strip() or type(e).__name__
        if "System error" in reason and isinstance(f, Path):  # libsndfile's word for any OS error: ask the OS
            try:
                open(f, "rb").close()
            except OSError as os_error:
                reason = os_error.strerror or reason
        reason = reason.strip().splitlines()[0].rstrip(".")
        raise NanoaudioError(f"{name}: not an audio file soundfile can read ({reason})") from None
    # A WAV header's length is exact; an MP3's comes from its Xing/LAME header or is estimated from the file size,
    # so there a shortfall of up to 1% (and two 1152-sample MPEG frames) is not reported.
    missing = stated - data.shape[0]
    if missing > (0 if exact else 0.01 * stated + 2304):
        print(f"warning: {name}: decoded {data.shape[0]} of the {stated} frames its header states "
              f"({data.shape[0] / sr:.2f} of {stated / sr:.2f} s; the file is cut off?); using what was decoded",
              file=sys.stderr)
    if data.shape[0] == 0:
        raise NanoaudioError(f"{name}: the file holds zero samples")
    if not np.isfinite(data).all():  # float WAVs can store NaN/inf; they would poison every frame they touch
        raise NanoaudioError(f"{name}: the audio contains NaN or infinite samples")
    wav = torch.from_numpy(data.mean(axis=1, dtype=np.float32))  # (S, channels) -> (S,) mono by averaging
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    need = math.ceil(MIN_SAMPLES * sample_rate / SAMPLE_RATE)
    if wav.shape[0] < need:
        ms = wav.shape[0] / sample_rate * 1000
        raise NanoaudioError(f"{name}: {wav.shape[0]} samples at {sample_rate} Hz ({ms:.1f} ms) is shorter than "
                             f"one encoder frame ({need} samples, 25 ms)")
    return wav


def _header_frames(snd) -> int:
    """The frames a WAV header states. libsndfile shortens .frames to what the file holds, and says so only in
    its log: "data : 32000 (should be 15978)" (bytes the header states, bytes there), beside "Block Align : 2"."""
    log = snd.extra_info
    data = re.search(r"^data\s*:\s*(\d+)\s*\(should be \d+\)", log, re.M)
    align = re.search(r"Block Align\s*:\s*(\d+)", log)
    if not data or not align or int(align.group(1)) == 0 or int(data.group(1)) >= 0xFFFFFFFF:
        return 0  # no complaint, not a WAV, or a streamed WAV whose header never got its length (0xFFFFFFFF)
    return int(data.group(1)) // int(align.group(1))


# -----------------------------------------------------------------------------
# resampling


def lowpass_filter(up: int, down: int) -> torch.Tensor:
    """The anti-aliasing/interpolation low-pass of a rational resampler, (2 * half_len + 1,) float64.

    Upsampling by `up` puts up-1 zeros between samples, downsampling by `down` keeps every down-th sample; in
    between, one low-pass must remove the spectral images (of the upsampling) and everything the
    downsampling would alias, so it cuts at the lower of the two Nyquists: 1 / max(up, down) of the
    upsampled Nyquist. Design: a sinc at that cutoff, ZERO_CROSSINGS lobes each side, Kaiser window, unit DC
    gain, times `up` (the inserted zeros divide the signal's average by `up`).
    """
    m = max(up, down)
    half_len = ZERO_CROSSINGS * m  # the sinc crosses zero every m taps
    n = torch.arange(-half_len, half_len + 1, dtype=torch.float64)
    h = torch.sinc(n / m) * torch.kaiser_window(2 * half_len + 1, periodic=False, beta=KAISER_BETA,
                                                dtype=torch.float64)
    return h / h.sum() * up


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """(S,) -> (ceil(S * new_sr / orig_sr),) band-limited, output sample 0 aligned with input sample 0.

    The polyphase trick as one conv1d: write the rate change as up/down (reduced by their gcd). Output j
    sits at time j*down on the upsampled grid, i.e. between input samples, and is
        y[j] = sum_i x[i] * h(j*down - i*up)                      (h: the low-pass centred at 0)
    Group the outputs in blocks of `up`: j = n*up + s. Then y[n*up + s] = sum_u x[n*down + u] * h(s*down - u*up),
    a strided convolution (stride `down`) of x with `up` kernels K_s[u] = h(s*down - u*up), one per output
    phase s. conv1d computes all phases at once, the (up, n_blocks) result interleaves into y.
    """
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if up == down:
        return x.clone()
    h = lowpass_filter(up, down)
    half_len = (h.numel() - 1) // 2
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)  # ceil, as scipy
    # the input offsets u any phase touches: |s*down - u*up| <= half_len for some s in [0, up)
    u_min = -(half_len // up)
    u_max = ((up - 1) * down + half_len) // up
    u = torch.arange(u_min, u_max + 1)  # (L,)
    s = torch.arange(up)  # (up,)
    t = s[:, None] * down - u[None, :] * up  # (up, L): tap position on the upsampled grid
    inside = t.abs() <= half_len
    kernels = torch.where(inside, h[(t + half_len).clamp(0, 2 * half_len)], 0.0)  # (up, L)
    n_blocks = -(-n_out // up)
    need = (n_blocks - 1) * down + kernels.shape[1]  # input samples the last block reads (after left padding)
    xp = torch.nn.functional.pad(x.float(), (-u_min, max(0, need - n_in + u_min)))  # zeros outside the signal
    y = torch.nn.functional.conv1d(xp[None, None], kernels.float()[:, None, :], stride=down)  # (1, up, n_blocks)
    return y[0].T.reshape(-1)[:n_out].to(x.dtype)  # (up, n_blocks) -> (n_blocks * up,) -> (n_out,)


# -----------------------------------------------------------------------------
# normalization and batching


def normalize(wav: torch.Tensor) -> torch.Tensor:
    """(S,) -> (S,) zero mean, unit variance: (x - mean) / sqrt(var + 1e-7), the population variance.

    Statistics in float64: a 30 s utterance is 480k samples, and float32 sums of that many would drift.
    """
    x = wav.double()
    mean = x.mean()
    var = ((x - mean) ** 2).mean()  # ddof=0, as numpy's .var() in Wav2Vec2FeatureExtractor
    return ((x - mean) / torch.sqrt(var + NORM_EPS)).to(torch.float32)


def batch_audio(waves: list[torch.Tensor], pad_to_multiple_of: int = 1,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """B waveforms (S_i,) -> waveform (B, S) float32, attention_mask (B, S) long (1 = real sample).

    Each waveform is normalized over its own samples (normalize=False: kept raw, as Whisper wants them; pass the
    encoder's `normalize_audio`), then right-padded with zeros (the padding value of both feature extractors:
    the encoder's valid frames never see the padding, see encoder.py) to S, the longest length rounded up to a
    multiple of pad_to_multiple_of (fewer distinct shapes: train.py).
    """
    if len(waves) == 0:
        raise NanoaudioError("batch_audio: empty list of waveforms")
    from nanoaudio.audio import normalize as normalize_wave  # the flag shadows the function's name here
    waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waves]
    S = -(-max(w.shape[0] for w in waves) // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.zeros(len(waves), S, dtype=torch.float32)
    mask = torch.zeros(len(waves), S, dtype=torch.long)
    for b, w in enumerate(waves):
        if w.shape[0] == 0:
            raise NanoaudioError(f"batch_audio: waveform {b} has zero samples")
        out[b, : w.shape[0]] = normalize_wave(w) if normalize else w
        mask[b, : w.shape[0]] = 1
    return out, mask
