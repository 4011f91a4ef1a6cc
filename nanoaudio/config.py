"""Configs: one small frozen dataclass per component, each built from a Hugging Face `config.json`.

Change a value with `dataclasses.replace(cfg, ...)`, never by mutation. `from_hf_config(dict)` reads the
checkpoint's own file; `to_hf_config()` writes one back (for checkpoints nanoaudio saves, and so that
`transformers` can load the same folder in the parity tests).

DecoderConfig covers three Llama-shaped families (one architecture, three flags):
- `qwen3`   (Qwen3ForCausalLM): per-head RMSNorm on q and k (`q_norm`/`k_norm`), explicit `head_dim`
            that may differ from hidden/heads (Qwen3-0.6B: 1024 / 16 heads but head_dim 128);
- `smollm3` (SmolLM3ForCausalLM): NoPE layers (`no_rope_layers`, 1 = this layer uses RoPE, 0 = it does
            not; the default pattern drops RoPE on every 4th layer), embeddings tied unless told otherwise;
- `llama`   (LlamaForCausalLM, Llama 3.x): `rope_scaling` of type `llama3` (long-context frequency scaling).
References: transformers' configuration_qwen3.py / configuration_smollm3.py / configuration_llama.py and
modeling_rope_utils.py (rope_parameters vs the older rope_theta + rope_scaling spelling).
"""

import math
from dataclasses import asdict, dataclass

from nanoaudio import NanoaudioError

DECODER_TYPES = ("qwen3", "smollm3", "llama")

# -----------------------------------------------------------------------------
# checking a config.json before any of it is used
#
# A config.json is user input: a hand-edited or damaged one must give one line naming the file and the key, not
# a TypeError deep in a constructor, an IndexError at inference or a 4 GB RoPE table. Each from_hf_config checks
# the raw JSON values against its dataclass's field types and a table of allowed ranges (check_fields), and
# check_asr_config does the same for the config.json that nanoaudio's own checkpoints carry.

RULES = {  # the allowed ranges, by the words the error message uses
    "> 0": lambda x: x > 0,
    ">= 0": lambda x: x >= 0,
    "in [0, 1)": lambda x: 0 <= x < 1,
    "0 or 1": lambda x: x in (0, 1),
}


def _json(x) -> str:
    """A value as its config.json spelling: "four", null, [1, 2] (cut short)."""
    import json

    try:
        text = json.dumps(x)
    except (TypeError, ValueError):
        text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(x) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(x), "number" if isinstance(x, (int, float)) else type(x).__name__)


def _has_type(x, annotation) -> bool:
    """Is JSON value x an instance of a field annotation: int, float, bool, str, dict, tuple[T, ...], X | None?"""
    import types
    import typing

    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return any(_has_type(x, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return x is None
    if typing.get_origin(annotation) is tuple:
        return isinstance(x, list) and all(_has_type(v, typing.get_args(annotation)[0]) for v in x)
    if annotation is int:  # JSON true/false are not counts, though Python's bool is an int
        return isinstance(x, int) and not isinstance(x, bool)
    if annotation is float:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return isinstance(x, annotation)


def _describe(annotation) -> str:
    import types
    import typing

    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        return f"a list of {_describe(typing.get_args(annotation)[0])[2:]}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object",
            type(None): "null"}.get(annotation, annotation.__name__)


def check_fields(d, cls, ranges: dict, source, prefix: str = "", none_is_default: bool = True, skip=()) -> None:
    """Check the keys of the JSON object `d` that name fields of dataclass `cls`: each value has the field's type
    and lies in ranges[key] (a RULES name; for a list, every item). null means "the default" when
    none_is_default (the Hugging Face convention), else only fields typed `X | None` may be null.
    `skip`: keys the caller checks itself. Raises NanoaudioError "{source}: {prefix}{key}: {value} is not ..." on
    the first bad one."""
    import dataclasses

    if not isinstance(d, dict):
        what = prefix.rstrip(".") or "the file"
        raise NanoaudioError(f"{source}: {what} is a JSON {_json_type(d)}, not an object")
    for f in dataclasses.fields(cls):
        if f.name not in d or f.name in skip or (d[f.name] is None and none_is_default):
            continue
        x = d[f.name]
        where = f"{source}: {prefix}{f.name}: {_json(x)}"
        if not _has_type(x, f.type):
            raise NanoaudioError(f"{where} is not {_describe(f.type)}")
        rule = ranges.get(f.name)
        if rule and x is not None and not all(RULES[rule](v) for v in (x if isinstance(x, list) else [x])):
            raise NanoaudioError(f"{where}: must be {rule}")


def check_asr_config(raw, source, cls) -> None:
    """The config.json of a nanoaudio checkpoint (cls: model.ASRConfig), before ASRConfig(**raw) is built:
    a JSON object with the required keys and no unknown ones, each of the right type; "encoder"/"decoder" hold
    {"name": hub id or null, "config": its config.json}, checked by its own from_hf_config; "projector" holds
    ProjectorConfig's fields, "lora" null or apply_lora's arguments."""
    import dataclasses

    if not isinstance(raw, dict):
        raise NanoaudioError(f"{source}: not a nanoaudio checkpoint config (a JSON {_json_type(raw)}, not an object)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise NanoaudioError(f"{source}: not a nanoaudio checkpoint config (no {name!r} key)")
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise NanoaudioError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; a nanoaudio checkpoint "
                             f"config has {', '.join(fields)}")
    check_fields(raw, cls, {"ctc_weight": ">= 0", "window_seconds": "> 0"}, source, none_is_default=False)
    for part in ("encoder", "decoder"):
        d = raw[part]
        extra = [k for k in d if k not in ("name", "config")]
        if extra or "config" not in d or "name" not in d:
            raise NanoaudioError(f"{source}: {part} must be {{\"name\": hub id or null, \"config\": {{...}}}}, got "
                                 f"the keys {', '.join(map(repr, d)) or 'none'}")
        if not (d["name"] is None or isinstance(d["name"], str)):
            raise NanoaudioError(f"{source}: {part}.name: {_json(d['name'])} is not a string or null")
        if not isinstance(d["config"], dict):
            raise NanoaudioError(f"{source}: {part}.config: a JSON {_json_type(d['config'])}, not an object")
        if d["name"] is None and not raw.get("from_scratch", False):
            raise NanoaudioError(f"{source}: {part}.name is null, but from_scratch is false: the {part}'s weights "
                                 f"are not in this checkpoint and nothing says where they are")
    DecoderConfig.from_hf_config(raw["decoder"]["config"], source=f"{source}: decoder.config")
    encoder, where = raw["encoder"]["config"], f"{source}: encoder.config"
    if encoder.get("model_type", "hubert") == "hubert":
        EncoderConfig.from_hf_config(encoder, source=where)
    elif encoder.get("model_type") == "whisper":
        check_fields(encoder, WhisperEncoderConfig, WHISPER_RANGES, where)
        WhisperEncoderConfig.from_hf_config(encoder, source=where)
    else:
        raise NanoaudioError(f"{where}: model_type {_json(encoder.get('model_type'))} is not an encoder nanoaudio "
                             f"builds (hubert or whisper)")
    unknown = [k for k in raw["projector"] if k not in ProjectorConfig.__dataclass_fields__]
    if unknown:
        raise NanoaudioError(f"{source}: projector: unknown key(s) {', '.join(map(repr, unknown))}")
    check_fields(raw["projector"], ProjectorConfig, PROJECTOR_RANGES, source, "projector.", none_is_default=False)
    lora = raw.get("lora")
    if lora is not None:
        for key in lora:
            if key not in LORA_RULES:
                raise NanoaudioError(f"{source}: lora: unknown key {key!r}; use {', '.join(LORA_RULES)}")
        for key, (ok, what) in LORA_RULES.items():
            if key in lora and not ok(lora[key]):
                raise NanoaudioError(f"{source}: lora.{key}: {_json(lora[key])} is not {what}")


WHISPER_RANGES = {  # WhisperEncoderConfig's fields (below)
    **{k: "> 0" for k in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                          "max_source_positions")},
    **{k: "in [0, 1)" for k in ("dropout", "attention_dropout", "activation_dropout")},
    "init_std": ">= 0",
}
LORA_RULES = {  # apply_lora's arguments (lora.py)
    "r": (lambda x: _has_type(x, int) and x > 0, "an integer > 0"),
    "alpha": (lambda x: _has_type(x, float) and x > 0, "a number > 0"),
    "dropout": (lambda x: _has_type(x, float) and 0 <= x < 1, "a number in [0, 1)"),
    "targets": (lambda x: isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, str) for t in x)),
                "a list of module names"),
}


DECODER_RANGES = {
    **{k: "> 0" for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta")},
    # >= 1 is all this file can say: the positions a model will use are known only when it runs, and a longer
    # prompt is a NanoaudioError there (decoder.py's rope table); the table grows with use, so a huge value is safe
    "max_position_embeddings": "> 0",
    "initializer_range": ">= 0", "bos_token_id": ">= 0", "pad_token_id": ">= 0", "no_rope_layers": "0 or 1",
}


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str = "qwen3"
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads (in __post_init__)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    # RoPE: theta, and the llama3 frequency scaling (rope_type "default" = none)
    rope_theta: float = 1_000_000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    no_rope_layers: tuple[int, ...] | None = None  # SmolLM3: 1 = use RoPE in this layer, 0 = NoPE
    torch_dtype: str | None = None  # the dtype the checkpoint was trained/stored in ("bfloat16", ...)
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    initializer_range: float = 0.02  # std of the normal init (init_weights), as in transformers

    def __post_init__(self):
        if self.model_type not in DECODER_TYPES:
            raise NanoaudioError(f"model_type {self.model_type!r} is not supported; use one of {DECODER_TYPES}")
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim < 2 or self.head_dim % 2:
            raise NanoaudioError(f"head_dim {self.head_dim} must be even and > 0 (RoPE rotates pairs of dimensions)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise NanoaudioError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                                 f"num_key_value_heads {self.num_key_value_heads}")
        if self.no_rope_layers is not None:
            object.__setattr__(self, "no_rope_layers", tuple(int(x) for x in self.no_rope_layers))
            if len(self.no_rope_layers) != self.num_hidden_layers:
                raise NanoaudioError(f"no_rope_layers has {len(self.no_rope_layers)} entries for "
                                     f"{self.num_hidden_layers} layers")
        if self.rope_type not in ("default", "llama3"):
            raise NanoaudioError(f"rope type {self.rope_type!r} is not supported (only default and llama3)")

    # derived, read by decoder.py

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"  # Qwen3 normalizes each head of q and k before RoPE

    def uses_rope(self, layer: int) -> bool:
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])

    # Hugging Face config.json <-> DecoderConfig

    @classmethod
    def from_hf_config(cls, d: dict, source="config.json") -> "DecoderConfig":
        """Read a transformers config.json dict (any of the spellings transformers 4.x and 5.x write)."""
        check_fields(d, cls, DECODER_RANGES, source, skip=("eos_token_id",))  # an id or a list of ids, below
        model_type = d.get("model_type")
        if model_type not in DECODER_TYPES:
            raise NanoaudioError(f"{source}: model_type {model_type!r} is not supported; use one of "
                                 f"{', '.join(DECODER_TYPES)}")

        def need(key):
            if d.get(key) is None:
                raise NanoaudioError(f"{source}: missing key {key!r}")
            return d[key]

        def get(key, default):  # null means the default, as a missing key does
            return default if d.get(key) is None else d[key]

        if d.get("hidden_act", "silu") != "silu":
            raise NanoaudioError(f"{source}: hidden_act {d['hidden_act']!r} is not supported (only silu)")
        if d.get("use_sliding_window"):
            raise NanoaudioError(f"{source}: use_sliding_window=true is not supported")

        # RoPE lives in `rope_theta` + `rope_scaling` (transformers 4.x files) or in one `rope_parameters`
        # dict (transformers 5.x re-saves). Both say the same thing.
        rope = {}
        for key in ("rope_scaling", "rope_parameters"):
            if not isinstance(d.get(key) or {}, dict):
                raise NanoaudioError(f"{source}: {key}: a JSON {_json_type(d[key])}, not an object")
            rope.update(d.get(key) or {})
        for key, rule in (("rope_theta", "> 0"), ("factor", "> 0"), ("low_freq_factor", "> 0"),
                          ("high_freq_factor", "> 0"), ("original_max_position_embeddings", "> 0")):
            if key in rope and not (_has_type(rope[key], float) and RULES[rule](rope[key])):
                raise NanoaudioError(f"{source}: rope {key}: {_json(rope[key])} is not a number {rule}")
        theta = rope.get("rope_theta", get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise NanoaudioError(f"{source}: rope type {rope_type!r} is not supported (only default and llama3)")

        no_rope = d.get("no_rope_layers")
        if model_type == "smollm3" and no_rope is None and not (_has_type(d.get("no_rope_layer_interval", 4), int)
                                                                and d.get("no_rope_layer_interval", 4) > 0):
            raise NanoaudioError(f"{source}: no_rope_layer_interval: {_json(d['no_rope_layer_interval'])} is not "
                                 f"an integer > 0")
        if model_type == "smollm3" and no_rope is None:
            # transformers' SmolLM3Config default: NoPE on every `no_rope_layer_interval`-th layer
            every = d.get("no_rope_layer_interval", 4)
            no_rope = [int((i + 1) % every != 0) for i in range(need("num_hidden_layers"))]

        eos = d.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        if not all(_has_type(i, int) and i >= 0 for i in eos):
            raise NanoaudioError(f"{source}: eos_token_id: {_json(d['eos_token_id'])} is not a token id or a list "
                                 f"of them")
        dtype = d.get("torch_dtype", d.get("dtype"))  # transformers 5 renamed torch_dtype to dtype
        # tied embeddings: an explicit flag wins; otherwise the family's transformers default
        # (SmolLM3Config defaults to True; Qwen3Config and LlamaConfig to False).
        tied = get("tie_word_embeddings", model_type == "smollm3")
        heads = need("num_attention_heads")
        try:
            return cls(
                model_type=model_type,
                vocab_size=need("vocab_size"),
                hidden_size=need("hidden_size"),
                intermediate_size=need("intermediate_size"),
                num_hidden_layers=need("num_hidden_layers"),
                num_attention_heads=heads,
                num_key_value_heads=d.get("num_key_value_heads") or heads,
                head_dim=d.get("head_dim"),
                rms_norm_eps=get("rms_norm_eps", 1e-6),
                max_position_embeddings=get("max_position_embeddings", 2048),
                tie_word_embeddings=tied,
                attention_bias=get("attention_bias", False),
                mlp_bias=get("mlp_bias", False),
                rope_theta=float(theta),
                rope_type=rope_type,
                rope_factor=float(rope.get("factor", 1.0)),
                rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                rope_original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
                no_rope_layers=tuple(no_rope) if no_rope is not None else None,
                torch_dtype=dtype if isinstance(dtype, str) else None,
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=eos,
                pad_token_id=d.get("pad_token_id"),
                initializer_range=get("initializer_range", 0.02),
            )
        except NanoaudioError as e:
            raise NanoaudioError(f"{source}: {e}") from None

    def to_hf_config(self) -> dict:
        """A config.json dict that from_hf_config and transformers both read back to the same model."""
        d = asdict(self)
        arch = {"qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM", "llama": "LlamaForCausalLM"}
        out = {"architectures": [arch[self.model_type]], "hidden_act": "silu"}
        for key in ("rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                    "rope_original_max_position_embeddings", "torch_dtype", "no_rope_layers", "eos_token_id"):
            d.pop(key)
        out |= d
        out["rope_scaling"] = None if self.rope_type == "default" else {
            "rope_type": "llama3", "factor": self.rope_factor, "low_freq_factor": self.rope_low_freq_factor,
            "high_freq_factor": self.rope_high_freq_factor,
            "original_max_position_embeddings": self.rope_original_max_position_embeddings}
        if self.no_rope_layers is not None:
            out["no_rope_layers"] = list(self.no_rope_layers)
        if self.torch_dtype:
            out["torch_dtype"] = self.torch_dtype
        eos = list(self.eos_token_id)
        out["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
        return out


PROJECTOR_KINDS = ("linear", "swiglu")
PROJECTOR_RANGES = {"stack": "> 0", "encoder_dim": "> 0", "decoder_dim": "> 0", "hidden": "> 0", "dropout": "in [0, 1)",
                    "eps": "> 0"}


@dataclass(frozen=True)
class ProjectorConfig:
    """The AudioProjector (projector.py). No Hugging Face file describes it: nanoaudio's checkpoint config.json
    stores these fields under "projector". encoder_dim/decoder_dim must come from the real encoder and decoder
    configs (hubert-xlarge 1280, hubert-large 1024; Qwen3-8B 4096, not the course's 2048)."""

    kind: str = "linear"  # "linear": the course's projector; "swiglu": its Exercise 1 variant
    stack: int = 5  # k: encoder frames per audio token (50 frames/s -> 10 tokens/s)
    encoder_dim: int = 1280  # Ce: hubert-xlarge
    decoder_dim: int = 4096  # Cd: Qwen3-8B
    hidden: int = 8192  # swiglu only: width of gate/up (the course's Exercise 1 value)
    dropout: float = 0.05
    eps: float = 1e-6  # RMSNorm epsilon of ln_pre and ln_post

    def __post_init__(self):
        if self.kind not in PROJECTOR_KINDS:
            raise NanoaudioError(f"projector kind {self.kind!r} is not supported; use one of {PROJECTOR_KINDS}")
        for key in ("stack", "encoder_dim", "decoder_dim", "hidden"):
            if int(getattr(self, key)) < 1:
                raise NanoaudioError(f"projector {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise NanoaudioError(f"projector dropout must be in [0, 1), got {self.dropout}")


ENCODER_RANGES = {
    **{k: "> 0" for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                          "conv_kernel", "conv_stride", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
                          "layer_norm_eps", "vocab_size")},
    **{k: "in [0, 1)" for k in ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
                                "final_dropout")},
    "initializer_range": ">= 0", "pad_token_id": ">= 0",
}


class EncoderFrames:
    """The frame arithmetic of an encoder module, read off its config (`config.num_frames`): HubertEncoder and
    WhisperEncoder both inherit it, so a padded batch's frame mask is made one way."""

    def num_frames(self, num_samples):
        return self.config.num_frames(num_samples)

    def frame_lengths(self, attention_mask):
        """(B, S) right-padding mask -> (B,) valid frames per sample."""
        return self.config.num_frames(attention_mask.sum(-1).long())

    def frame_mask(self, attention_mask):
        """(B, S) sample mask (1 = real) -> (B, F) bool, True for the frames that cover real samples only."""
        import torch

        F_ = self.num_frames(attention_mask.shape[1])
        return torch.arange(F_, device=attention_mask.device)[None, :] < self.frame_lengths(attention_mask)[:, None]


@dataclass(frozen=True)
class EncoderConfig:
    """HuBERT (encoder.py), read from a HubertModel/HubertForCTC config.json.

    Defaults are transformers' HubertConfig defaults (hubert-base), so a config.json that omits a key means
    what it means to transformers. Two arrangements, one flag each:
    - base:          feat_extract_norm "group" (GroupNorm on the first conv layer only), do_stable_layer_norm
                     false (post-LN Transformer layers, LayerNorm before the first layer);
    - large, xlarge: feat_extract_norm "layer" (LayerNorm after every conv layer), do_stable_layer_norm true
                     (pre-LN layers and a final LayerNorm). Both ship conv_bias true in their HF configs.
    ctc_head: HubertForCTC's lm_head (hidden -> vocab_size characters), as in the *-ls960-ft checkpoints.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # product 320: one frame per 20 ms at 16 kHz
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_proj_layer_norm: bool = True
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128  # kernel width of the convolutional positional embedding
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1  # kept for the round trip; not applied (nanoaudio.nn.attention has no dropout)
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1  # before the CTC head
    vocab_size: int = 32
    ctc_head: bool = False
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    torch_dtype: str | None = None

    def __post_init__(self):
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, key, tuple(int(v) for v in getattr(self, key)))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise NanoaudioError(f"conv_dim, conv_kernel and conv_stride have different lengths "
                                 f"({len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)})")
        if self.feat_extract_norm not in ("group", "layer"):
            raise NanoaudioError(f"feat_extract_norm {self.feat_extract_norm!r} is not supported (group or layer)")
        if self.hidden_size % self.num_attention_heads:
            raise NanoaudioError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                                 f"{self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise NanoaudioError(f"hidden_size {self.hidden_size} is not a multiple of "
                                 f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")

    # frame arithmetic: the one home of the conv stack's lengths (the encoder, budget.py and --trace use it)

    @property
    def hop_length(self) -> int:
        """Samples between consecutive frames: the product of the strides (320: 20 ms, 50 frames/s)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 = 25 ms for HuBERT): walk back from r = 1, r <- (r - 1) * stride + kernel."""
        r = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            r = (r - 1) * s + k
        return r

    def num_frames(self, num_samples):
        """Frames from num_samples samples (an int, or a tensor of lengths): each valid conv maps n -> (n-k)//s+1."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
        return n.clamp(min=0) if hasattr(n, "clamp") else max(n, 0)

    @classmethod
    def from_hf_config(cls, d: dict, source="config.json") -> "EncoderConfig":
        check_fields(d, cls, ENCODER_RANGES, source, skip=("ctc_head",))  # ctc_head: from "architectures"
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            if d.get(key) == []:
                raise NanoaudioError(f"{source}: {key}: [] (the feature extractor needs at least one conv layer)")
        if d.get("model_type", "hubert") != "hubert":
            raise NanoaudioError(f"{source}: model_type {d.get('model_type')!r} is not hubert")
        for key in ("hidden_act", "feat_extract_activation"):
            if d.get(key, "gelu") != "gelu":
                raise NanoaudioError(f"{source}: {key} {d[key]!r} is not supported (only gelu)")
        # variants transformers' Hubert code has and no published HuBERT checkpoint uses
        for key in ("conv_pos_batch_norm", "add_adapter", "adapter_attn_dim", "use_weighted_layer_sum"):
            if d.get(key):
                raise NanoaudioError(f"{source}: {key}={d[key]!r} is not supported")
        fields = {f: d[f] for f in cls.__dataclass_fields__ if f in d and d[f] is not None}
        fields.pop("ctc_head", None)
        fields["ctc_head"] = "HubertForCTC" in (d.get("architectures") or [])
        dtype = d.get("torch_dtype", d.get("dtype"))  # transformers 5 renamed torch_dtype to dtype
        fields["torch_dtype"] = dtype if isinstance(dtype, str) else None
        try:
            return cls(**fields)
        except (NanoaudioError, TypeError, ValueError) as e:
            raise NanoaudioError(f"{source}: {e}") from None

    def to_hf_config(self) -> dict:
        """A config.json that from_hf_config and transformers' HubertModel/HubertForCTC both read back."""
        d = asdict(self)
        d.pop("ctc_head")
        out = {"architectures": ["HubertForCTC" if self.ctc_head else "HubertModel"], "model_type": "hubert",
               "hidden_act": "gelu", "feat_extract_activation": "gelu", "num_feat_extract_layers": len(self.conv_dim)}
        out |= {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if v is not None}
        # what nanoaudio does not implement, written as "off" so transformers builds the same model:
        # SpecAugment (its learned `masked_spec_embed` vector exists only when a mask prob is > 0) and LayerDrop
        out |= {"mask_time_prob": 0.0, "mask_feature_prob": 0.0, "layerdrop": 0.0}
        return out


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Whisper's encoder (whisper.py), read from a WhisperModel/WhisperForConditionalGeneration config.json.

    Field names are transformers' WhisperConfig names (d_model, encoder_layers, ...), defaults its defaults, so a
    config.json that omits a key means what it means to transformers. The text decoder's keys are ignored.
    num_mel_bins: log-mel bins (80; 128 for large-v3 and turbo); preprocessor_config.json's feature_size must agree.
    pad_to_30s: the input mode, which training and inference must share (so it is written into config.json):
      True  = every input is zero-padded to 30 s and the encoder attends over all 1500 frames, as Whisper was
              trained and as transformers runs it (exact parity);
      False = true length: only the frames covering real audio, the positional table sliced to them and padded
              keys masked (Ultravox's choice; faster on short inputs).
    """

    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    max_source_positions: int = 1500  # 30 s at 50 frames/s: the positional table's rows
    activation_function: str = "gelu"
    dropout: float = 0.0
    attention_dropout: float = 0.0  # kept for the round trip; not applied (nanoaudio.nn.attention has no dropout)
    activation_dropout: float = 0.0
    init_std: float = 0.02
    torch_dtype: str | None = None
    pad_to_30s: bool = True

    def __post_init__(self):
        if self.d_model % self.encoder_attention_heads:
            raise NanoaudioError(f"d_model {self.d_model} is not a multiple of encoder_attention_heads "
                                 f"{self.encoder_attention_heads}")
        if self.activation_function != "gelu":
            raise NanoaudioError(f"activation_function {self.activation_function!r} is not supported (only gelu)")
        if self.pad_to_30s and self.max_source_positions != 1500:
            raise NanoaudioError(f"pad_to_30s needs max_source_positions 1500 (30 s at 50 frames/s), got "
                                 f"{self.max_source_positions}")

    @property
    def hidden_size(self) -> int:  # the name the projector and the budget read, as for HuBERT
        return self.d_model

    @property
    def hop_length(self) -> int:
        """Samples per encoder frame: 160 per mel frame x conv2's stride 2 = 320 (20 ms, 50 frames/s)."""
        return 320

    def num_frames(self, num_samples):
        """Encoder frames covering num_samples real samples (an int, or a tensor of lengths): ceil(S / 160)
        log-mel frames (hop 160 samples = 10 ms, whisper.HOP_LENGTH), then conv2 (kernel 3, stride 2, padding 1):
        n -> (n - 1) // 2 + 1 (0 -> 0). So 50 frames/s, and 480,000 samples (30 s) -> 1500 (transformers'
        _get_feat_extract_output_lengths of the mel frames)."""
        mel = -(-num_samples // 160)  # ceil
        return (mel - 1) // 2 + 1

    @classmethod
    def from_hf_config(cls, d: dict, source="config.json", preprocessor: dict | None = None,
                       preprocessor_source="preprocessor_config.json") -> "WhisperEncoderConfig":
        """config.json (and, when the checkpoint has one, its preprocessor_config.json or processor_config.json
        dict: the log-mel settings, which nanoaudio's front end has fixed, so they are checked, not read)."""
        if d.get("model_type") != "whisper":
            raise NanoaudioError(f"{source}: model_type {d.get('model_type')!r} is not whisper")
        if d.get("scale_embedding"):
            # transformers computes embed_scale and never applies it in the encoder; refuse rather than guess
            raise NanoaudioError(f"{source}: scale_embedding=true is not supported")
        fields = {f: d[f] for f in cls.__dataclass_fields__ if f in d and d[f] is not None}
        dtype = d.get("torch_dtype", d.get("dtype"))  # transformers 5 renamed torch_dtype to dtype
        fields["torch_dtype"] = dtype if isinstance(dtype, str) else None
        if preprocessor is not None:
            fe = preprocessor.get("feature_extractor", preprocessor)  # processor_config.json nests it
            fixed = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "chunk_length": 30}
            for key, value in fixed.items():
                if fe.get(key, value) != value:
                    raise NanoaudioError(f"{preprocessor_source}: {key} {fe[key]!r} is not supported (Whisper's "
                                         f"front end has {value})")
            n_mels = fe.get("feature_size", fields.get("num_mel_bins", 80))
            if n_mels != fields.setdefault("num_mel_bins", n_mels):
                raise NanoaudioError(f"{preprocessor_source}: feature_size {n_mels} disagrees with {source}'s "
                                     f"num_mel_bins {fields['num_mel_bins']}")
        try:
            return cls(**fields)
        except (NanoaudioError, TypeError, ValueError) as e:
            raise NanoaudioError(f"{source}: {e}") from None

    def to_hf_config(self) -> dict:
        """A config.json that from_hf_config and transformers' WhisperConfig both read back (the decoder keys are
        transformers' defaults: nanoaudio saves the encoder only). pad_to_30s is nanoaudio's own key."""
        out = {"architectures": ["WhisperEncoder"], "model_type": "whisper"}
        out |= {k: v for k, v in asdict(self).items() if v is not None}
        # what nanoaudio does not implement, written as "off" so transformers builds the same model
        out |= {"scale_embedding": False, "encoder_layerdrop": 0.0, "apply_spec_augment": False}
        return out
