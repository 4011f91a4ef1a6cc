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

from dataclasses import asdict, dataclass

from nanoaudio import NanoaudioError

DECODER_TYPES = ("qwen3", "smollm3", "llama")


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
        model_type = d.get("model_type")
        if model_type not in DECODER_TYPES:
            raise NanoaudioError(f"{source}: model_type {model_type!r} is not supported; use one of "
                                 f"{', '.join(DECODER_TYPES)}")

        def need(key):
            if d.get(key) is None:
                raise NanoaudioError(f"{source}: missing key {key!r}")
            return d[key]

        if d.get("hidden_act", "silu") != "silu":
            raise NanoaudioError(f"{source}: hidden_act {d['hidden_act']!r} is not supported (only silu)")
        if d.get("use_sliding_window"):
            raise NanoaudioError(f"{source}: use_sliding_window=true is not supported")

        # RoPE lives in `rope_theta` + `rope_scaling` (transformers 4.x files) or in one `rope_parameters`
        # dict (transformers 5.x re-saves). Both say the same thing.
        rope = dict(d.get("rope_scaling") or {})
        rope.update(d.get("rope_parameters") or {})
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise NanoaudioError(f"{source}: rope type {rope_type!r} is not supported (only default and llama3)")

        no_rope = d.get("no_rope_layers")
        if model_type == "smollm3" and no_rope is None:
            # transformers' SmolLM3Config default: NoPE on every `no_rope_layer_interval`-th layer
            every = d.get("no_rope_layer_interval", 4)
            no_rope = [int((i + 1) % every != 0) for i in range(need("num_hidden_layers"))]

        eos = d.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        dtype = d.get("torch_dtype", d.get("dtype"))  # transformers 5 renamed torch_dtype to dtype
        # tied embeddings: an explicit flag wins; otherwise the family's transformers default
        # (SmolLM3Config defaults to True; Qwen3Config and LlamaConfig to False).
        tied = d.get("tie_word_embeddings", model_type == "smollm3")
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
                rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                max_position_embeddings=d.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(tied),
                attention_bias=bool(d.get("attention_bias", False)),
                mlp_bias=bool(d.get("mlp_bias", False)),
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
                initializer_range=d.get("initializer_range", 0.02),
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
