"""HuBERT: raw 16 kHz waveform in, one 1024/1280-d vector per 20 ms frame out.

    waveform (B, S) --7 strided convs (x320)--> (B, F, 512) --feature projection--> (B, F, C)
      --+ convolutional positional embedding--> L Transformer layers --> hidden states (B, F, C)
                                                                      [--lm_head--> CTC logits (B, F, V)]

Features:
- both published arrangements: hubert-base (GroupNorm on the first conv layer only, post-LN layers) and
  hubert-large/xlarge (LayerNorm after every conv, pre-LN "stable layer norm" layers + a final LayerNorm);
- the positional embedding is a wide grouped conv (128 taps, 16 groups) trained with weight norm; the
  norm is folded into a plain weight ONCE at load (both spellings: `weight_g/weight_v` and transformers'
  newer `parametrizations.weight.original0/original1`), so forward is an ordinary conv;
- padded batches: `config.num_frames` gives the exact frame count of a sample count; frames past a sample's end
  are zeroed before the positional conv and masked as attention keys (nanoaudio.nn.attention, kv_lens), so
  every valid frame equals what that sample gives alone (GroupNorm statistics, too, over the real samples);
- parameter names are transformers' HubertModel names, so a checkpoint loads nearly as is (`hubert.` prefix
  of HubertForCTC stripped), and the optional CTC head `lm_head` of the *-ls960-ft checkpoints.
References: HuBERT (arXiv:2106.07447); wav2vec 2.0 (arXiv:2006.11477, the architecture HuBERT reuses);
transformers models/hubert/modeling_hubert.py; weight normalization (arXiv:1602.07868).
Legend: B batch, S samples, F encoder frames, C width, H heads, D head dim, V CTC vocabulary.
"""

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanoaudio import NanoaudioError
from nanoaudio.config import EncoderConfig, EncoderFrames
from nanoaudio.load import (DTYPES, ENCODERS, atomic_file, convert_bin_to_safetensors, load_state, parse_dtype,
                            read_json, read_tensors, resolve, safetensors_files)
from nanoaudio.nn import attention
from nanoaudio.whisper import WhisperEncoder, load_whisper_encoder


# -----------------------------------------------------------------------------
# conv feature extractor: (B, S) -> (B, F, 512)


class ConvLayer(nn.Module):
    """Conv1d -> [LayerNorm over channels | GroupNorm (one group per channel) | nothing] -> GELU.

    Runs channels last, (B, S, C), unlike transformers' (B, C, S): see forward.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)  # holds the weights only
        self.norm = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out)  # eps 1e-5 (PyTorch's default, not config.layer_norm_eps)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out)  # normalizes each channel over time

    def forward(self, x, lengths=None):  # (B, S_in, C_in) -> (B, S_out, C_out)
        w = self.conv.weight  # (C_out, C_in, K), as the checkpoints store it
        C_out, C_in, K = w.shape
        s = self.conv.stride[0]
        B, S_in, _ = x.shape
        S_out = (S_in - K) // s + 1
        # A strided conv is a matmul over overlapping windows. Channels last, the K*C_in inputs of output t
        # are one contiguous run starting at t*s*C_in, so all windows are a view of x (F.linear copies it
        # once: im2col). Channels last also means LayerNorm and the next layer read rows directly, with no
        # transposes: on CPU this stack runs ~1.5x faster than transformers' conv -> transpose -> norm.
        # (unfold rather than as_strided: same view, but its backward is a cheap scatter-add of windows.)
        win = x.reshape(B, S_in * C_in).unfold(1, K * C_in, s * C_in)  # (B, S_out, K*C_in)
        x = F.linear(win, w.transpose(1, 2).reshape(C_out, K * C_in), self.conv.bias)  # (B, S_out, C_out)
        if self.norm == "layer":
            x = self.layer_norm(x)
        elif self.norm == "group":
            x = self.group_norm(x, lengths)
        return F.gelu(x)

    def group_norm(self, x, lengths):  # (B, S, C): each channel normalized over time
        # In a right-padded batch, plain GroupNorm would average in the padding, and a sample's frames would
        # depend on its batch neighbours (transformers has this quirk: it asks base models to be run without
        # an attention mask). Statistics over each sample's valid outputs make padded = alone.
        B, S = x.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), S, device=x.device)
        valid = (torch.arange(S, device=x.device)[None, :] < lengths[:, None])[:, :, None]  # (B, S, 1)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in >= fp32: bf16 sums are coarse
        n = lengths.clamp(min=1)[:, None, None].to(xf.dtype)
        mean = (xf * valid).sum(1, keepdim=True) / n  # (B, 1, C)
        var = (((xf - mean) * valid) ** 2).sum(1, keepdim=True) / n  # population variance, as GroupNorm
        y = ((xf - mean) * torch.rsqrt(var + self.layer_norm.eps)).to(x.dtype)
        return y * self.layer_norm.weight + self.layer_norm.bias


class FeatureExtractor(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        dims = (1, *cfg.conv_dim)
        if cfg.feat_extract_norm == "group":  # base: GroupNorm on the first layer only
            norms = ["group"] + [None] * (len(cfg.conv_dim) - 1)
        else:  # large/xlarge: LayerNorm after every layer
            norms = ["layer"] * len(cfg.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], cfg.conv_kernel[i], cfg.conv_stride[i], cfg.conv_bias, norms[i])
            for i in range(len(cfg.conv_dim)))

    def forward(self, waveform, sample_lengths=None):  # (B, S) -> (B, F, C0)
        x = waveform[:, :, None]  # (B, S) -> (B, S, 1): one input channel, channels last
        lengths = sample_lengths
        for layer in self.conv_layers:
            if lengths is not None:
                # valid outputs of this layer: the conv arithmetic, per sample
                k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
                lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
            x = layer(x, lengths)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.feat_proj_dropout)

    def forward(self, x):  # (B, F, C0) -> (B, F, C)
        if hasattr(self, "layer_norm"):
            x = self.layer_norm(x)
        return self.dropout(self.projection(x))


# -----------------------------------------------------------------------------
# Transformer encoder: (B, F, C) -> (B, F, C)


class PositionalConvEmbedding(nn.Module):
    """Relative position from a wide grouped conv over time (wav2vec 2.0 style), instead of a position table.

    Its kernel is even (128), and padding K//2 on both sides gives F + 1 outputs: the last is dropped
    (transformers' SamePadLayer), so output t sees frames t-64 .. t+63.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        K = cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, K, padding=K // 2,
                              groups=cfg.num_conv_pos_embedding_groups)
        self.remove = 1 if K % 2 == 0 else 0

    def forward(self, x):  # (B, F, C) -> (B, F, C)
        y = self.conv(x.transpose(1, 2))  # (B, C, F + remove)
        if self.remove:
            y = y[:, :, :-self.remove]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        C = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(C, C), nn.Linear(C, C)
        self.v_proj, self.out_proj = nn.Linear(C, C), nn.Linear(C, C)

    def forward(self, x, lengths=None):  # (B, F, C) -> (B, F, C)
        B, F_, C = x.shape
        H, D = self.n_head, C // self.n_head
        q = self.q_proj(x).view(B, F_, H, D).transpose(1, 2)  # (B, F, C) -> (B, H, F, D)
        k = self.k_proj(x).view(B, F_, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, F_, H, D).transpose(1, 2)
        # bidirectional; padded frames are masked as keys (their own rows are garbage nobody reads)
        y = attention(q, k, v, causal=False, kv_lens=lengths)  # (B, H, F, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, F_, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.intermediate_dropout = nn.Dropout(cfg.activation_dropout)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x):
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))  # exact (erf) GELU, as transformers
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.attention = Attention(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, lengths=None):
        if self.stable:
            # pre-LN (large/xlarge): normalize each branch's input, the residual stream is never normalized
            x = x + self.dropout(self.attention(self.layer_norm(x), lengths))
            return x + self.feed_forward(self.final_layer_norm(x))
        # post-LN (base, the original Transformer): normalize after each residual addition
        x = self.layer_norm(x + self.dropout(self.attention(x, lengths)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        # post-LN: normalizes the layers' input; stable (pre-LN): normalizes the last layer's output
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, lengths=None):  # (B, F, C) -> (B, F, C)
        if lengths is not None:
            # zero the padded frames: the positional conv near a sample's end then sees the same zeros a lone
            # sample sees from the conv's own zero padding (transformers does the same)
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, F)
            x = x * valid[..., None].to(x.dtype)
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, lengths)
        return self.layer_norm(x) if self.stable else x


# -----------------------------------------------------------------------------
# the model


class HubertEncoder(EncoderFrames, nn.Module):
    normalize_audio = True  # wants zero-mean unit-variance samples, as fine-tuned (WhisperEncoder: False)

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = TransformerEncoder(config)
        # HubertForCTC: dropout, then a linear map to characters (blank = <pad> = 0)
        self.final_dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size) if config.ctc_head else None
        self.source = None  # the name or folder it was loaded from (load_encoder)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Random init for training from scratch (the tiny preset), as transformers' HubertPreTrainedModel:
        Linear ~ N(0, initializer_range) with zero bias; conv ~ Kaiming normal, zero bias; norms 1 and 0.
        The positional conv ~ N(0, sqrt(4 / (K * C))) as fairseq's wav2vec 2.0 (it is trained without weight
        norm here: nanoaudio keeps only the folded weight)."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                m.bias.zero_()
            elif isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.fill_(1.0)
                m.bias.zero_()
        pos = self.encoder.pos_conv_embed.conv
        pos.weight.normal_(0.0, (4.0 / (pos.kernel_size[0] * self.config.hidden_size)) ** 0.5)

    # forward ----------------------------------------------------------------------

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """waveform (B, S) normalized samples (audio.batch_audio), attention_mask (B, S) -> hidden (B, F, C)."""
        S = waveform.shape[1]
        if self.num_frames(S) == 0:
            raise NanoaudioError(f"waveform of {S} samples is shorter than one encoder frame "
                                 f"({self.config.receptive_field} samples)")
        sample_lengths = lengths = None
        if attention_mask is not None:
            sample_lengths = attention_mask.sum(-1).long()
            if bool((sample_lengths < S).any()):  # no padding (one sample, equal lengths): nothing to mask
                lengths = self.frame_lengths(attention_mask)
            else:
                sample_lengths = None
        x = waveform.to(self.feature_projection.projection.weight.dtype)
        x = self.feature_extractor(x, sample_lengths)  # (B, S) -> (B, F, C0)
        x = self.feature_projection(x)  # (B, F, C0) -> (B, F, C)
        return self.encoder(x, lengths)  # (B, F, C)

    def ctc_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, F, C) -> (B, F, V) character logits (HubertForCTC's head)."""
        if self.lm_head is None:
            raise NanoaudioError("this encoder has no CTC head (lm_head): load a HubertForCTC checkpoint")
        return self.lm_head(self.final_dropout(hidden))


# -----------------------------------------------------------------------------
# loading and saving

POS_CONV = "encoder.pos_conv_embed.conv"
WEIGHT_NORM = {f"{POS_CONV}.weight_g", f"{POS_CONV}.weight_v"}  # folded into f"{POS_CONV}.weight" at load
# checkpoint key (after the `hubert.` prefix) -> our key; every other key is taken verbatim
RENAME = {
    # transformers >= 4.34 saves weight norm as a parametrization; older files (the hub's) as weight_g/_v
    f"{POS_CONV}.parametrizations.weight.original0": f"{POS_CONV}.weight_g",
    f"{POS_CONV}.parametrizations.weight.original1": f"{POS_CONV}.weight_v",
}
# dropped on purpose: SpecAugment's learned mask vector, only used when masking time steps during training,
# which nanoaudio never does (it is absent from checkpoints whose mask probabilities are 0)
DROP = {"masked_spec_embed"}


def rename(key: str) -> str | None:
    key = key.removeprefix("hubert.")  # HubertForCTC nests the HubertModel under `hubert.`, beside lm_head
    key = RENAME.get(key, key)
    return None if key in DROP else key


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g * v / ||v||. transformers applies weight_norm(conv, dim=2): one norm per kernel tap, taken over
    the output and input channels, so g is (1, 1, K) and v is (C, C / groups, K). Done in float64, once."""
    v = v.double()
    return g.double() * v / v.norm(dim=(0, 1), keepdim=True)


def encoder_from_config(hf: dict, source="config.json") -> "HubertEncoder | WhisperEncoder":
    """A randomly initialised encoder (or, under torch.device("meta"), shapes only) from a config.json dict: HuBERT
    or Whisper by its model_type. The tiny preset builds its encoder this way, and ASRModel.load rebuilds one."""
    from nanoaudio.config import WhisperEncoderConfig

    model_type = hf.get("model_type", "hubert") if isinstance(hf, dict) else None
    if model_type == "whisper":
        return WhisperEncoder(WhisperEncoderConfig.from_hf_config(hf, source=source))
    if model_type != "hubert":
        raise NanoaudioError(f"{source}: model_type {model_type!r} is not an encoder nanoaudio builds (hubert or "
                             f"whisper)")
    return HubertEncoder(EncoderConfig.from_hf_config(hf, source=source))


def load_encoder(name_or_path, dtype=None, device="cpu") -> "HubertEncoder | WhisperEncoder":
    """An encoder checkpoint, dispatched on config.json's model_type: a local folder, a hub id or a short name.
    hubert: HubertModel/HubertForCTC (hubert-xlarge, hubert-large); the CTC head is loaded when the checkpoint
    has one (lm_head.*). whisper: the encoder of WhisperModel/WhisperForConditionalGeneration (whisper-large-v3,
    -turbo, -small, -base, -tiny), the text decoder's tensors never read (whisper.load_whisper_encoder).
    dtype: None -> the config's torch_dtype (float32 if none); or a torch dtype / "bf16"..."""
    patterns = ["config.json", "preprocessor_config.json", "processor_config.json", "model.safetensors*"]
    folder = resolve(name_or_path, ENCODERS, patterns)
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        if not (folder / "pytorch_model.bin").is_file() and not Path(name_or_path).expanduser().is_dir():
            folder = resolve(name_or_path, ENCODERS, patterns + ["pytorch_model.bin"])  # older hub repos
        if (folder / "pytorch_model.bin").is_file():
            convert_bin_to_safetensors(folder)  # once: torch.load(weights_only=True), never a full unpickle
    hf = read_json(folder / "config.json")
    model_type = hf.get("model_type", "hubert")  # the oldest HuBERT files name none
    if model_type == "whisper":
        model = load_whisper_encoder(folder, dtype, device)
        model.source = str(name_or_path)
        return model
    if model_type != "hubert":
        raise NanoaudioError(f"{folder / 'config.json'}: model_type {model_type!r} is not an encoder nanoaudio "
                             f"loads (hubert or whisper)")
    config = EncoderConfig.from_hf_config(hf, source=folder / "config.json")
    dtype = parse_dtype(dtype) or DTYPES.get(config.torch_dtype or "", torch.float32)
    files = safetensors_files(folder)
    # the positional conv's weight norm is folded in float64 from the file's values, then cast: read that
    # pair separately, everything else straight into the target dtype
    tensors = read_tensors(folder, dtype=dtype, device=device,
                           rename=lambda k: None if rename(k) in WEIGHT_NORM else rename(k))
    norm = read_tensors(folder, rename=lambda k: rename(k) if rename(k) in WEIGHT_NORM else None)
    if norm:
        if set(norm) != WEIGHT_NORM:
            raise NanoaudioError(f"{files[0]}: positional conv has only {sorted(norm)}, needs weight_g and weight_v")
        w = fold_weight_norm(norm[f"{POS_CONV}.weight_g"], norm[f"{POS_CONV}.weight_v"])
        tensors[f"{POS_CONV}.weight"] = w.to(device, dtype)
    # the checkpoint decides whether there is a CTC head (HubertModel files have none)
    config = dataclasses.replace(config, ctc_head="lm_head.weight" in tensors)
    with torch.device("meta"):
        model = HubertEncoder(config)  # shapes only: no memory, no init work
    load_state(model, tensors, folder)
    model.source = str(name_or_path)
    return model.eval()


def save_encoder(encoder: HubertEncoder, folder) -> Path:
    """Write config.json + model.safetensors that transformers (HubertModel/HubertForCTC) and load_encoder read.

    The positional conv goes back to weight-norm form (g = the per-tap norm, v = the weight: g * v / ||v|| is
    the weight again), keys as transformers writes them; with a CTC head, the HubertForCTC layout.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "hubert." if encoder.lm_head is not None else ""
    out = {}
    for k, v in encoder.state_dict().items():
        v = v.detach().to("cpu").contiguous()
        if k == f"{POS_CONV}.weight":
            g = v.double().norm(dim=(0, 1), keepdim=True).to(v.dtype)  # (1, 1, K)
            out[f"{prefix}{POS_CONV}.parametrizations.weight.original0"] = g
            out[f"{prefix}{POS_CONV}.parametrizations.weight.original1"] = v.clone()
        else:
            out[k if k.startswith("lm_head.") else prefix + k] = v.clone()
    hf = encoder.config.to_hf_config()
    hf["torch_dtype"] = str(next(encoder.parameters()).dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    with atomic_file(folder / "model.safetensors") as tmp:  # never a half-written weights file
        save_file(out, tmp, metadata={"format": "pt"})
    return folder
