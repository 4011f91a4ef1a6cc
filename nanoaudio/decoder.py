"""The language model half of nanoaudio: a Qwen3-style decoder that loads real checkpoints and generates.

    ids (B, T) -> embed_tokens -> L x [x += attn(RMSNorm(x)); x += mlp(RMSNorm(x))] -> RMSNorm -> lm_head
    -> logits (B, T, V)

- One architecture, three families (see config.py): Qwen3 (per-head q_norm/k_norm before RoPE), SmolLM3
  (NoPE: some layers skip RoPE), Llama 3.x (llama3 RoPE frequency scaling). Grouped-query attention.
- Parameter names are the checkpoints' (`model.layers.{i}.self_attn.q_proj.weight`, ...), so the state dict
  keys ARE the safetensors keys and loading is the identity (plus tied embeddings).
- RoPE in the half-split ("rotate_half") layout that Hugging Face checkpoints expect: q/k weights load
  verbatim, no permutation. cos/sin are precomputed non-persistent buffers, for the positions used so far.
- RMSNorm and attention go through nanoaudio.nn: Triton kernels on CUDA, PyTorch (SDPA) elsewhere.
- Generation: an explicit preallocated KVCache, one prefill over the prompt, then one token per step;
  greedy; batched prompts are left-padded and described by an attention mask, positions counted from
  the mask (as transformers does); stops on the eos ids of generation_config.json. `beam_search` keeps
  W hypotheses of one prompt as W cache rows, reordered each step as the beams survive.
- `load_decoder`: the model is built on the meta device and the raw safetensors are read straight into
  the target dtype, one tensor at a time (load.py): no fp32 copy, nothing unpickled, strict names/shapes.
References: transformers models/qwen3/modeling_qwen3.py, models/smollm3/modeling_smollm3.py,
models/llama/modeling_llama.py, modeling_rope_utils.py (llama3 scaling); RoFormer (arXiv:2104.09864);
GQA (arXiv:2305.13245); gpt-fast and nanochat for the static KV cache.
Legend: B batch, T tokens, C width, V vocab, L layers, H/Hkv query/key-value heads, D head dim.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nanoaudio import NanoaudioError
from nanoaudio.config import DecoderConfig
from nanoaudio.load import DECODERS, DTYPES, load_state, parse_dtype, read_json, read_tensors, resolve
from nanoaudio.nn import RMSNorm, attention

# -----------------------------------------------------------------------------
# rotary position embedding


def rope_inv_freq(config: DecoderConfig) -> torch.Tensor:
    """(D/2,) rotation frequencies theta^(-2i/D), with Llama 3's long-context scaling when configured."""
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    if config.rope_type == "llama3":
        # Llama 3.1+: wavelengths longer than the original context are slowed down by `factor`, short ones are
        # kept, and the band between is interpolated smoothly (same float32 ops as transformers).
        factor, lo, hi = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
        old_len = config.rope_original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / hi) * ~(wavelen > old_len / lo)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


ROPE_ROWS = 4096  # positions the cos/sin tables hold at first (Decoder.init_rope); they double when needed


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]): the half-split layout. x (B, H, T, D), cos/sin (B, 1, T, D/2).

    Equal, to the bit, to transformers' x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), with half the table.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# -----------------------------------------------------------------------------
# the KV cache


class KVCache:
    """Keys and values of every layer, preallocated for max_len tokens: k, v (L, B, Hkv, max_len, D).

    `pos` counts the tokens already stored; a forward pass writes its T new keys/values at [pos, pos + T)
    in every layer and then advances pos by T. Nothing is ever concatenated or reallocated.
    """

    def __init__(self, config: DecoderConfig, batch_size: int, max_len: int, dtype, device):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, Hkv, T, D) of `layer`; -> all keys/values so far, views (B, Hkv, pos + T, D)."""
        end = self.pos + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache is full: {end} tokens > {self.k.shape[3]} preallocated")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def select(self, rows: torch.Tensor):
        """Keep the batch rows `rows` (B',), in that order, repeats allowed: beam search follows its beams."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


# -----------------------------------------------------------------------------
# the blocks (class names follow transformers' Qwen3 classes)


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.layer_idx, self.head_dim = layer_idx, D
        self.use_rope = config.uses_rope(layer_idx)  # False on SmolLM3's NoPE layers
        self.q_proj = nn.Linear(C, H * D, bias=config.attention_bias)  # H*D may differ from C (Qwen3-0.6B)
        self.k_proj = nn.Linear(C, Hkv * D, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=config.attention_bias)
        self.o_proj = nn.Linear(H * D, C, bias=config.attention_bias)
        if config.qk_norm:
            # Qwen3: RMSNorm over each head's D features of q and k, before RoPE (stabilizes attention logits)
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask=None, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # (B, T, C) -> (B, T, H, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, D)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, T_past + T, D)
        # A single new token may attend to every cached key (all are in its past): no causal mask needed,
        # which keeps each decode step on SDPA's plain path. Longer inputs are causal, bottom-right aligned.
        y = attention(q, k, v, causal=T > 1, mask=mask)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H*D) -> (B, T, C)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        C, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, inner, bias=config.mlp_bias)
        self.up_proj = nn.Linear(C, inner, bias=config.mlp_bias)
        self.down_proj = nn.Linear(inner, C, bias=config.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, residual, cos, sin, mask=None, cache=None):
        """Pre-norm residual block, (B, T, C) -> (B, T, C): residual += attn(norm(residual)); residual += mlp(...).

        Each `residual += branch` is done by the norm that reads the sum next (nn.rms_norm with a residual: one
        read of each, one write of the sum and of the normalized output, fused in the Triton kernel). So a layer
        takes the previous layer's MLP output x and the residual stream before it (None in the first layer, whose
        x is the embeddings), and returns its own MLP output and the stream before that."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual=residual)  # residual = residual + x; h = norm(residual)
        h, residual = self.post_attention_layernorm(self.self_attn(h, cos, sin, mask, cache), residual=residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    """The `model.` prefix of the checkpoints: embeddings, layers, final norm."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        # _weight: skip nn.Embedding's own N(0, 1) draw; Decoder.init_weights initializes (and on the meta
        # device, normal_ would import torch._dynamo: seconds of start-up for nothing)
        weight = torch.empty(config.vocab_size, config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


# -----------------------------------------------------------------------------
# the decoder


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one (V, C) matrix, two uses
        self.gradient_checkpointing = False  # recompute each layer in backward (saves activation memory)
        # generation defaults; load_decoder overrides them from generation_config.json
        self.eos_token_ids = list(config.eos_token_id)
        self.pad_token_id = config.pad_token_id
        self.source = None  # the name or folder load_decoder read it from
        self.init_rope()
        self.init_weights()

    def init_rope(self, rows: int | None = None):
        """(Re)compute the cos/sin tables, (n, D/2) in fp32, non-persistent buffers, for the first
        n = min(rows or ROPE_ROWS, max_position_embeddings) positions; rope() grows them when a longer sequence
        comes.

        Not the whole max_position_embeddings: a config may allow 2e7 positions (a 10 GB table at D = 128) and a
        model uses a few thousand. Each entry is one fp32 product and one cos/sin of it, so a row is the same,
        to the bit, whatever the table's length. A model built on the meta device gets empty placeholders;
        load_weights computes the real tables.
        """
        device = self.model.embed_tokens.weight.device
        if device.type == "meta":
            self.register_buffer("rope_cos", torch.empty(0, device=device), persistent=False)
            self.register_buffer("rope_sin", torch.empty(0, device=device), persistent=False)
            return
        inv_freq = rope_inv_freq(self.config).to(device)
        pos = torch.arange(min(rows or ROPE_ROWS, self.config.max_position_embeddings), device=device,
                           dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]  # (n, D/2), the same fp32 product as transformers
        self.register_buffer("rope_cos", freqs.cos(), persistent=False)
        self.register_buffer("rope_sin", freqs.sin(), persistent=False)

    def rope(self, positions: torch.Tensor, end: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B or 1, 1, T, D/2) of positions (B or 1, T), which are all < end (the sequence's columns:
        left padding only lowers a row's positions). The table doubles when `end` passes its length (rarely: it
        starts at ROPE_ROWS), and a position beyond max_position_embeddings is a NanoaudioError, not an IndexError."""
        limit = self.config.max_position_embeddings
        if end > limit and int(positions.max()) >= limit:  # (the exact check syncs a GPU, so only past the limit)
            raise NanoaudioError(f"the decoder was asked for position {int(positions.max())}, beyond its "
                                 f"max_position_embeddings {limit} (config.json): a shorter prompt or fewer new "
                                 f"tokens")
        if min(end, limit) > self.rope_cos.shape[0]:
            self.init_rope(max(end, 2 * self.rope_cos.shape[0]))
        return self.rope_cos[positions][:, None].to(dtype), self.rope_sin[positions][:, None].to(dtype)

    @torch.no_grad()
    def init_weights(self):
        """Random init for models trained from scratch, as transformers does: every Linear and the embedding
        ~ N(0, initializer_range), biases 0, RMSNorm weights 1."""
        if self.lm_head.weight.is_meta:
            return  # shapes only (load_decoder): the checkpoint provides the values
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def load_weights(self, tensors: dict, source) -> None:
        """Strictly assign checkpoint tensors (keys as in the state dict); handles tied embeddings."""
        tensors = dict(tensors)
        if self.config.tie_word_embeddings:
            # Tied checkpoints usually omit lm_head.weight (Qwen3-0.6B/1.7B, SmolLM3); a stored copy is
            # ignored, as transformers does: the embedding matrix is the head.
            tensors.pop("lm_head.weight", None)
            if "model.embed_tokens.weight" in tensors:
                tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        load_state(self, tensors, source)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # assign=True made two Parameters: re-tie
        self.init_rope()

    # forward -------------------------------------------------------------------

    def forward(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, cache=None):
        """-> logits (B, T, V). See hidden_states for the arguments."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                                               cache=cache))

    def hidden_states(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, cache=None):
        """Final-norm hidden states (B, T, C).

        input_ids (B, T), or inputs_embeds (B, T, C) that replace the embedding lookup (the ASR model puts
        audio embeddings into the prompt this way). attention_mask (B, T_past + T): 1 for real tokens, 0 for
        (left) padding, covering the cached tokens too, as in transformers. cache: a KVCache, or None.
        """
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        past = cache.pos if cache is not None else 0
        mask = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, past + T):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
            mask = attention_mask.bool()
            # a token's position counts only the real tokens before it, so left padding shifts nothing
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        else:
            positions = torch.arange(past, past + T, device=x.device)[None]  # (1, T)
        cos, sin = self.rope(positions, past + T, x.dtype)  # (B or 1, 1, T, D/2)
        residual = None  # x: the last branch's output, residual: the stream before it (see DecoderLayer)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # a checkpointed layer keeps its inputs for the backward's recompute: hand it one tensor, the
                # stream itself, rather than two (that add is unfused; the one after attention still is)
                x = x if residual is None else x + residual
                x, residual = checkpoint(layer, x, None, cos, sin, mask, cache, use_reentrant=False)
            else:
                x, residual = layer(x, residual, cos, sin, mask, cache)
        if cache is not None:
            cache.pos += T
        return self.model.norm(x) if residual is None else self.model.norm(x, residual=residual)[0]

    # generation ----------------------------------------------------------------

    def _prompt(self, input_ids, inputs_embeds, eos_token_id):
        """What generate and beam_search start from: the prompt's embeddings (B, T, C) and the eos ids (a list)."""
        eos = self.eos_token_ids if eos_token_id is None else eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos)
        return (self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds), eos

    @torch.inference_mode()
    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=32, eos_token_id=None, *,
                 inputs_embeds=None, on_token=None, pad_token_id=None):
        """Greedy decoding with a KV cache. -> (B, T + N) ids like transformers' generate when input_ids are
        given, else (B, N) new tokens only (inputs_embeds prompt). N <= max_new_tokens: it stops as soon as
        every row has produced an eos id; rows that finished earlier are filled with the pad id.

        Batched prompts of different lengths must be LEFT padded (every row's next token then sits in the
        same column) with attention_mask marking the padding. on_token(step, tokens (B,)) is called with
        each new column (streaming).
        """
        x, eos = self._prompt(input_ids, inputs_embeds, eos_token_id)  # (B, T, C)
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        pad = pad if pad is not None else (eos[0] if eos else 0)
        B, T, _ = x.shape
        device = x.device
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: skip the masks entirely (faster SDPA path)
        mask = None
        if attention_mask is not None:
            # the mask of the whole run, preallocated; each step reads a prefix of it
            mask = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=device)
            mask[:, :T] = attention_mask.bool()
        cache = KVCache(self.config, B, T + max_new_tokens, x.dtype, device)
        eos_t = torch.tensor(eos, device=device, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        new = []
        h = self.hidden_states(attention_mask=None if mask is None else mask[:, :T], inputs_embeds=x, cache=cache)
        for step in range(max_new_tokens):
            logits = self.lm_head(h[:, -1])  # (B, V): the head runs on the last position only
            token = logits.argmax(-1)  # (B,)
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            if on_token is not None:
                on_token(step, token)
            done |= torch.isin(token, eos_t)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            step_mask = None if mask is None else mask[:, :cache.pos + 1]
            h = self.hidden_states(token[:, None], step_mask, cache=cache)  # (B, 1, C), one cached step
        out = torch.stack(new, 1) if new else torch.zeros(B, 0, dtype=torch.long, device=device)  # (B, N)
        return out if input_ids is None else torch.cat([input_ids, out], 1)

    @torch.inference_mode()
    def beam_search(self, input_ids=None, max_new_tokens=32, num_beams=4, eos_token_id=None, *, inputs_embeds=None):
        """Beam search over ONE prompt, input_ids (1, T) or inputs_embeds (1, T, C) -> the num_beams best
        finished continuations, best first: [(new token ids, summed log-probability), ...].

        The textbook search, as transformers runs it with generate(num_beams=W, early_stopping="never",
        length_penalty=0.0): each step keeps the W best unfinished of the (1 + #eos) * W best extensions; an
        extension ending in an eos id, or at max_new_tokens, is a finished hypothesis if it ranks among the
        first W of them. It stops once no live beam scores above the W-th finished one (log-probabilities only
        fall as tokens are added, so none could still beat it). A finished hypothesis keeps its eos id.
        """
        x, eos = self._prompt(input_ids, inputs_embeds, eos_token_id)  # (1, T, C)
        if x.shape[0] != 1:
            raise ValueError(f"beam_search takes one prompt, got a batch of {x.shape[0]}")
        W, K = num_beams, (1 + max(len(eos), 1)) * num_beams
        cache = KVCache(self.config, 1, x.shape[1] + max_new_tokens, x.dtype, x.device)
        h = self.hidden_states(inputs_embeds=x, cache=cache)[:, -1]  # (1, C): one row until the first step
        beams, scores = [[]], torch.zeros(1, device=x.device)  # token lists and their log-probabilities (R,)
        finished = []  # (score, ids), the best W so far, best first
        for step in range(max_new_tokens):
            logp = self.lm_head(h).float().log_softmax(-1)  # (R, V)
            V = logp.shape[-1]
            top, where = (scores[:, None] + logp).view(-1).topk(min(K, logp.numel()))  # (K,), sorted
            alive = []  # (score, row, token) of the W best unfinished extensions
            for rank, (score, i) in enumerate(zip(top.tolist(), where.tolist())):
                row, token = divmod(i, V)
                if token in eos or step == max_new_tokens - 1:
                    if rank < W:
                        finished.append((score, beams[row] + [token]))
                elif len(alive) < W:
                    alive.append((score, row, token))
            finished = sorted(finished, key=lambda f: -f[0])[:W]
            if not alive or (len(finished) == W and alive[0][0] <= finished[-1][0]):
                break
            scores = torch.tensor([a[0] for a in alive], device=x.device)
            rows = torch.tensor([a[1] for a in alive], device=x.device)
            tokens = torch.tensor([a[2] for a in alive], device=x.device)
            beams = [beams[a[1]] + [a[2]] for a in alive]
            cache.select(rows)
            h = self.hidden_states(tokens[:, None], cache=cache)[:, -1]  # (W, C)
        return [(ids, score) for score, ids in finished]


def until_eos(ids: list[int], eos) -> list[int]:
    """A generated row up to (without) its first eos id: the transcript, without the end-of-turn token or the
    padding after it."""
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


# -----------------------------------------------------------------------------
# loading


def load_decoder(name_or_path, dtype=None, device="cpu") -> Decoder:
    """A local checkpoint folder, a hub id, or a short name (load.DECODERS: qwen3-8b, smollm3-3b, ...).

    dtype: None -> the dtype the config.json names (`torch_dtype`, or `dtype` in transformers 5 files),
    float32 if it names none; or torch.float32/bfloat16/float16 or "fp32"/"bf16"/"fp16". Floating tensors
    are cast one by one while reading, so the model is never held in memory twice.
    """
    patterns = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json"]
    folder = resolve(name_or_path, DECODERS, patterns)
    config = DecoderConfig.from_hf_config(read_json(folder / "config.json"), source=folder / "config.json")
    dtype = parse_dtype(dtype) or DTYPES.get(config.torch_dtype or "", torch.float32)
    with torch.device("meta"):
        model = Decoder(config)  # shapes only: no memory, no random init work
    model.load_weights(read_tensors(folder, dtype=dtype, device=device), folder)
    model.source = str(name_or_path)  # what a nanoaudio checkpoint's config.json records, to load it again
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        # end-of-turn ids (Qwen3: <|im_end|> and <|endoftext|>) live here, not in config.json
        gen = read_json(gen_path)
        eos = gen.get("eos_token_id")
        if eos is not None:
            model.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        if gen.get("pad_token_id") is not None:
            model.pad_token_id = gen["pad_token_id"]
    return model.eval()


# -----------------------------------------------------------------------------
# command line: python -m nanoaudio.decoder CHECKPOINT --prompt TEXT


def main(argv=None):
    import argparse
    import sys

    from nanoaudio.tokenizer import load_tokenizer

    p = argparse.ArgumentParser(description="Greedy completion of a text prompt with a decoder checkpoint.")
    p.add_argument("checkpoint", help="checkpoint folder, hub id or short name (qwen3-0.6b, ...)")
    p.add_argument("--prompt", required=True, help="text to complete")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=32, help="most tokens to generate")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: the checkpoint's)")
    args = p.parse_args(argv)
    try:
        decoder = load_decoder(args.checkpoint, dtype=args.dtype)
        tok = load_tokenizer(args.checkpoint)
        text = tok.chat_prompt(tok.family, args.prompt) if args.chat else args.prompt
        ids = torch.tensor([tok.encode(text)])
        out = decoder.generate(ids, max_new_tokens=args.max_new_tokens)
        print(tok.decode(out[0, ids.shape[1]:].tolist()))
    except NanoaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
