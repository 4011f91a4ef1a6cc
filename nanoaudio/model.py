"""The speech recognizer: audio in, text out.

    waveform (B, S) --HuBERT (frozen)--> frames (B, F, Ce) --AudioProjector--> audio tokens (B, N, Cd)
    audio tokens --spliced into the chat prompt--> decoder --> transcript

The prompt is an ordinary chat turn of the decoder's own template, e.g. for Qwen3 (non-thinking mode):

    <|im_start|>user\\n[N audio embeddings]\\nTranscribe the speech to text<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n{transcript}<|im_end|>

`build_prompt` is the ONE function that builds it, for training (with the transcript) and for inference
(without): a prompt that differs between the two by a single token is the classic bug of these systems.
The audio embeddings take the place of N placeholder positions; nothing about them is tokenized.
Labels are -100 everywhere except the transcript tokens and the end-of-turn token, so the model learns to
write the transcript and to stop, and nothing else.

Decoding is greedy (the batch at once), or a beam search per utterance whose beams the encoder's CTC head, when
it has one, scores again (nbest): the decoder knows the words, the frame-level CTC model checks them against the
audio, letter by letter.

Checkpoint layout (one folder, written atomically, see load.atomic_dir):
    config.json                  this ASRConfig, with the encoder/decoder hub ids or their full configs
    model.safetensors            projector.* (+ encoder.* and decoder.* when trained from scratch)
    adapter_config.json          LoRA adapter in the PEFT layout (when the decoder is LoRA-tuned)
    adapter_model.safetensors
    tokenizer.json, tokenizer_config.json
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanoaudio import NanoaudioError
from nanoaudio.config import DecoderConfig, ProjectorConfig
from nanoaudio.decoder import until_eos
from nanoaudio.load import atomic_dir, load_state, read_json, read_tensors
from nanoaudio.text import normalize_text
from nanoaudio.tokenizer import FAMILY_OF_MODEL_TYPE

INSTRUCTION = "Transcribe the speech to text"
AUDIO_MARKER = "\x00audio\x00"  # splits the rendered prompt; never reaches the tokenizer
IGNORE = -100  # label value that cross_entropy skips

# CTC vocabulary of the *-ls960-ft HuBERT checkpoints (blank = <pad> = 0, "|" = word boundary). The tiny
# preset's encoder uses the same one, so its CTC head is shaped like the real fine-tuned checkpoints'.
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


@dataclass(frozen=True)
class ASRConfig:
    encoder: dict  # {"name": hub id or None, "config": HF config.json dict}
    decoder: dict  # {"name": hub id or None, "config": HF config.json dict}
    projector: dict  # ProjectorConfig fields
    lora: dict | None = None  # {"r", "alpha", "dropout", "targets"} or None
    from_scratch: bool = False  # True: encoder and decoder weights live in model.safetensors (tiny preset)
    train_encoder: bool = False  # the tiny preset trains its encoder; real recipes freeze HuBERT
    ctc_weight: float = 0.0  # auxiliary CTC loss on the encoder frames (tiny preset: 0.5)
    instruction: str = INSTRUCTION
    window_seconds: float = 30.0  # longest audio the model sees at once; longer files are cut (decoding.py)


def ctc_targets(text: str) -> list[int]:
    """Characters of normalized text -> CTC ids (spaces become the word boundary "|", unknown -> <unk>)."""
    ids = {c: i for i, c in enumerate(CTC_VOCAB)}
    return [ids["|"] if c == " " else ids.get(c, ids["<unk>"]) for c in text.upper().strip()]


# -----------------------------------------------------------------------------
# the prompt


def build_prompt(tokenizer, family: str, n_audio: int, transcript: str | None = None,
                 instruction: str = INSTRUCTION):
    """-> (ids, audio_start, labels). ids has n_audio placeholder slots starting at audio_start.

    With a transcript: ids continue with its tokens and the end-of-turn token, and labels mark exactly those
    (-100 elsewhere). Without: ids end where the assistant starts writing (the generation prompt), and
    labels is None. Both come from the same rendering, so inference sees exactly the training prefix.
    """
    user = f"{AUDIO_MARKER}\n{instruction}"
    prompt = tokenizer.chat_prompt(family, user)  # ends with the assistant header (+ empty think block)
    left, right = prompt.split(AUDIO_MARKER)
    left_ids, right_ids = tokenizer.encode(left), tokenizer.encode(right)
    ids = left_ids + [tokenizer.pad_id] * n_audio + right_ids
    if transcript is None:
        return ids, len(left_ids), None
    answer = tokenizer.encode(transcript) + [tokenizer.eot_id]
    labels = [IGNORE] * len(ids) + answer
    return ids + answer, len(left_ids), labels


# -----------------------------------------------------------------------------
# the model


class ASRModel(nn.Module):
    def __init__(self, encoder, projector, decoder, tokenizer, config: ASRConfig):
        super().__init__()
        self.encoder, self.projector, self.decoder = encoder, projector, decoder
        self.tokenizer, self.config = tokenizer, config
        self.family = FAMILY_OF_MODEL_TYPE[decoder.config.model_type]
        self.set_trainable()

    def set_trainable(self, encoder: bool | None = None):
        """Which parameters train: the one place this is decided (building, loading, resuming, stage switches).

        The projector always; the decoder's LoRA adapters, or the whole decoder when trained from scratch; the
        encoder when the config trains it (the tiny preset), or as `encoder` says (train.py's stages)."""
        self.requires_grad_(False)
        self.projector.requires_grad_(True)
        if self.config.from_scratch:
            self.decoder.requires_grad_(True)
        for name, p in self.decoder.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
        self.encoder.requires_grad_(self.config.train_encoder if encoder is None else encoder)
        if hasattr(self.encoder, "embed_positions"):
            self.encoder.embed_positions.requires_grad_(False)  # Whisper's: a fixed table, as Whisper trained it

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.train_encoder:
            self.encoder.eval()  # frozen: no dropout, ever
        return self

    # audio -> tokens ---------------------------------------------------------

    def encode_frames(self, waveform, attention_mask=None):
        """(B, S) samples -> encoder frames (B, F, Ce), frame mask (B, F) bool."""
        if self.encoder.normalize_audio:  # a bf16 HuBERT takes bf16 samples; Whisper's log-mel runs in fp32 first
            waveform = waveform.to(next(self.encoder.parameters()).dtype)
        with torch.set_grad_enabled(self.config.train_encoder and torch.is_grad_enabled()):
            frames = self.encoder(waveform, attention_mask)  # (B, F, Ce)
        if attention_mask is None:
            attention_mask = torch.ones(waveform.shape, dtype=torch.long, device=waveform.device)
        return frames, self.encoder.frame_mask(attention_mask)

    def encode_audio(self, waveform, attention_mask=None):
        """(B, S) samples -> audio tokens (B, N, Cd), token mask (B, N) bool, encoder frames, frame mask."""
        frames, frame_mask = self.encode_frames(waveform, attention_mask)
        tokens, token_mask = self.projector(frames.to(self.projector_dtype), frame_mask)  # (B, N, Cd), (B, N)
        return tokens, token_mask, frames, frame_mask

    @property
    def projector_dtype(self):
        return next(self.projector.parameters()).dtype

    def _splice(self, prompts, tokens, token_mask, left_pad: bool):
        """Pad the per-sample prompts into a batch and put the audio tokens in their slots.

        Training pads on the right (causal attention never looks at later padding, so no key mask is
        needed); generation pads on the left so that every row's next token is at the same position.
        """
        B, T = len(prompts), max(len(p[0]) for p in prompts)
        device = tokens.device
        ids = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        slots = torch.zeros(B, T, dtype=torch.bool)
        for b, (p_ids, start, p_labels) in enumerate(prompts):
            off = T - len(p_ids) if left_pad else 0
            ids[b, off:off + len(p_ids)] = torch.tensor(p_ids)
            mask[b, off:off + len(p_ids)] = 1
            n = int(token_mask[b].sum())
            slots[b, off + start:off + start + n] = True
            if p_labels is not None:
                labels[b, off:off + len(p_ids)] = torch.tensor(p_labels)
        ids, labels, mask, slots = ids.to(device), labels.to(device), mask.to(device), slots.to(device)
        embeds = self.decoder.model.embed_tokens(ids)  # (B, T, Cd)
        # valid audio tokens, row-major, fill the slots row-major: a differentiable scatter
        audio = tokens[token_mask].to(embeds.dtype)  # (sum n_b, Cd)
        embeds = embeds.masked_scatter(slots[..., None], audio)
        return embeds, mask, labels

    # training ------------------------------------------------------------------

    def forward(self, waveform, attention_mask, transcripts: list[str], lm: bool = True):
        """-> dict(lm_loss, ctc_loss, per_sample (B,), loss), each loss on its own: lm_loss is the decoder's mean
        over label tokens, ctc_loss the encoder's CTC loss (None when config.ctc_weight is 0), and
        loss = lm_loss + ctc_weight * ctc_loss, their sum for a plain training step.

        lm=False: the encoder alone, on its CTC loss (lm_loss and per_sample are 0; the decoder never runs).
        """
        if not lm:
            ctc = self.ctc_loss(*self.encode_frames(waveform, attention_mask), transcripts)
            return {"lm_loss": ctc.new_zeros(()), "per_sample": ctc.new_zeros(len(transcripts)), "ctc_loss": ctc,
                    "loss": self.config.ctc_weight * ctc}
        tokens, token_mask, frames, frame_mask = self.encode_audio(waveform, attention_mask)
        counts = token_mask.sum(1).tolist()
        prompts = [build_prompt(self.tokenizer, self.family, n, t, self.config.instruction)
                   for n, t in zip(counts, transcripts)]
        embeds, mask, labels = self._splice(prompts, tokens, token_mask, left_pad=False)
        # right padding: causal attention never looks at later padding, so no key mask is needed
        h = self.decoder.hidden_states(inputs_embeds=embeds)  # (B, T, Cd)
        # position t predicts token t+1; the vocabulary head runs only where there is a label (the LLM's
        # logits over 150k tokens at every prompt position would be most of the activation memory)
        targets = labels[:, 1:]  # (B, T-1)
        where = targets != IGNORE
        logits = self.decoder.lm_head(h[:, :-1][where]).float()  # (L, V), L = label tokens in the batch
        nll = F.cross_entropy(logits, targets[where], reduction="none")  # (L,)
        rows = where.nonzero()[:, 0]
        n_labels = where.sum(1)  # (B,)
        per_sample = torch.zeros(len(transcripts), device=nll.device).index_add(0, rows, nll) / n_labels.clamp(min=1)
        lm_loss = nll.mean()  # mean over every label token of the batch
        out = {"lm_loss": lm_loss, "per_sample": per_sample, "loss": lm_loss, "ctc_loss": None}
        if self.config.ctc_weight > 0:
            out["ctc_loss"] = self.ctc_loss(frames, frame_mask, transcripts)
            out["loss"] = lm_loss + self.config.ctc_weight * out["ctc_loss"]
        return out

    def ctc_loss(self, frames, frame_mask, transcripts):
        # CTC on the encoder's 50 frames/s, before stacking: it gives the encoder a direct, dense signal,
        # which is what lets a from-scratch encoder learn in minutes (the tiny preset).
        log_probs = self.encoder.ctc_logits(frames).float().log_softmax(-1)  # (B, F, V)
        targets = [torch.tensor(ctc_targets(t), dtype=torch.long) for t in transcripts]
        target_lens = torch.tensor([len(t) for t in targets])
        return F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets).to(frames.device),
                          frame_mask.sum(1).cpu(), target_lens, blank=0, reduction="mean", zero_infinity=True)

    # inference -----------------------------------------------------------------

    @torch.inference_mode()
    def generate_ids(self, waveform, attention_mask=None, max_new_tokens: int = 128, on_token=None,
                     num_beams: int = 1, ctc_weight: float = 0.0, ctc_out: list | None = None):
        """(B, S) -> list of B token-id lists, each stopped at the end-of-turn token.

        num_beams 1: greedy, the batch at once, with a KV cache (on_token streams it). num_beams > 1: a beam
        search per utterance, whose num_beams transcripts are then ranked by
        (1 - ctc_weight) * log p_decoder + ctc_weight * log p_CTC (see nbest).
        ctc_out: a list that receives, per utterance, the CTC head's log-probabilities (F_b, 32) float32 (None
        when the encoder has none), from the same encoder pass: word timestamps and the no-speech score use them.
        """
        if num_beams > 1:
            if on_token is not None:
                raise NanoaudioError("streaming (on_token) decodes greedily: it cannot be combined with beams")
            return [max(hyps, key=lambda h: (1 - ctc_weight) * h[1] + ctc_weight * h[2])[0]
                    for hyps in self.nbest(waveform, attention_mask, num_beams, max_new_tokens, ctc_weight > 0,
                                           ctc_out)]
        tokens, token_mask, frames, frame_mask = self.encode_audio(waveform, attention_mask)
        if ctc_out is not None:
            ctc_out += self.ctc_log_probs(frames, frame_mask)
        prompts = [build_prompt(self.tokenizer, self.family, int(n), None, self.config.instruction)
                   for n in token_mask.sum(1)]
        embeds, mask, _ = self._splice(prompts, tokens, token_mask, left_pad=True)
        eos = self.decoder.eos_token_ids
        out = self.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    eos_token_id=eos, on_token=on_token)  # (B, N) new tokens only
        return [until_eos(row, eos) for row in out.tolist()]

    @torch.inference_mode()
    def nbest(self, waveform, attention_mask=None, num_beams: int = 4, max_new_tokens: int = 128, ctc: bool = True,
              ctc_out: list | None = None):
        """(B, S) -> per utterance, the decoder's beam search's num_beams transcripts, best first:
        [(ids without the end-of-turn token, decoder log-probability, CTC log-probability), ...].

        The CTC log-probability is the encoder's CTC head's, of the transcript's characters (after
        normalize_text, as its training targets), summed over every alignment (torch's ctc_loss): the
        frame-level model checks the decoder's guesses against the audio, character by character. Joint
        CTC/attention decoding (Watanabe et al., 2017, arXiv:1706.00612) scores each prefix during the search;
        rescoring the finished beams is the simple form of it. ctc=False (or no CTC head): 0.0 in its place.
        ctc_out: as generate_ids'.
        """
        tokens, token_mask, frames, frame_mask = self.encode_audio(waveform, attention_mask)
        ctc = ctc and self.encoder.lm_head is not None
        # the CTC head runs once: its log-probabilities rank the beams and go out to the caller alike
        log_probs = self.ctc_log_probs(frames, frame_mask) if ctc or ctc_out is not None else None  # [(F_b, 32)]
        if ctc_out is not None:
            ctc_out += log_probs
        eos, result = self.decoder.eos_token_ids, []
        for b in range(len(tokens)):
            n = int(token_mask[b].sum())
            prompt = build_prompt(self.tokenizer, self.family, n, None, self.config.instruction)
            embeds, _, _ = self._splice([prompt], tokens[b:b + 1, :n], token_mask[b:b + 1, :n], left_pad=True)
            frames_b = log_probs[b] if ctc else None  # (F_b, 32)
            hyps = []
            for ids, score in self.decoder.beam_search(inputs_embeds=embeds, max_new_tokens=max_new_tokens,
                                                       num_beams=num_beams, eos_token_id=eos):
                ids = until_eos(ids, eos)
                hyps.append((ids, score, self.ctc_log_prob(frames_b, ids) if ctc else 0.0))
            result.append(hyps)
        return result

    def ctc_log_probs(self, frames, frame_mask) -> list:
        """Encoder frames (B, F, Ce), frame mask (B, F) -> per utterance, its CTC log-probabilities (F_b, 32)
        float32 on the CPU; [None] * B when the encoder has no CTC head (a Whisper encoder)."""
        if self.encoder.lm_head is None:
            return [None] * len(frames)
        log_probs = self.encoder.ctc_logits(frames).float().log_softmax(-1).cpu()  # (B, F, 32)
        return [lp[:n] for lp, n in zip(log_probs, frame_mask.sum(1).tolist())]

    def ctc_log_prob(self, log_probs, ids) -> float:
        """log p_CTC(transcript | audio): log_probs (F, 32) of one utterance, ids a decoded transcript."""
        target = torch.tensor(ctc_targets(normalize_text(self.tokenizer.decode(ids))), dtype=torch.long)
        nll = F.ctc_loss(log_probs[:, None], target[None], [len(log_probs)], [len(target)], blank=0,
                         reduction="sum")
        return -nll.item()

    def transcribe(self, audio, options=None, **overrides) -> list[str]:
        """Paths or 1-D 16 kHz waveforms -> transcripts, as sample.py makes them: long audio cut into windows in
        its pauses and stitched; by default 8 beams ranked with the CTC head. options: a
        decoding.DecodingOptions; overrides change its fields (transcribe(files, beams=1) is greedy)."""
        from nanoaudio.decoding import DecodingOptions, transcribe

        options = dataclasses.replace(options or DecodingOptions(), **overrides)
        return transcribe(self, audio, options)

    # checkpoints -----------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What model.safetensors holds: the projector, plus everything when trained from scratch."""
        if self.config.from_scratch:
            sd = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
            sd |= {f"decoder.{k}": v for k, v in self.decoder.state_dict().items() if "lora_" not in k}
        else:
            sd = {}
        sd |= {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        return sd

    def save_to(self, folder: Path, dtype=None):
        """Write the checkpoint files into an existing folder (use save() for the atomic version).

        dtype: store floating tensors in this dtype (the bundled tiny model: float16, half the bytes)."""
        from safetensors.torch import save_file

        from nanoaudio.lora import save_adapter

        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        sd = self.trainable_state_dict()
        # tied embeddings share storage: safetensors refuses shared tensors, so store a copy of each view
        cast = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        save_file({k: cast(v.detach()).contiguous().clone() for k, v in sd.items()}, folder / "model.safetensors")
        if self.config.lora:
            save_adapter(self.decoder, folder, base_model_name=self.config.decoder.get("name"))
        self.tokenizer.save(folder)

    def save(self, folder, dtype=None):
        with atomic_dir(folder) as tmp:
            self.save_to(tmp, dtype)

    @classmethod
    def load(cls, folder, dtype=None, device="cpu") -> "ASRModel":
        from nanoaudio.config import check_asr_config
        from nanoaudio.decoder import Decoder, load_decoder
        from nanoaudio.encoder import encoder_from_config, load_encoder
        from nanoaudio.load import require_folder
        from nanoaudio.lora import apply_lora, load_adapter
        from nanoaudio.projector import AudioProjector
        from nanoaudio.tokenizer import load_tokenizer

        folder = require_folder(folder)
        raw = read_json(folder / "config.json")
        if isinstance(raw, dict) and raw.get("extra") == {}:
            del raw["extra"]  # an always-empty field that checkpoints of nanoaudio 0.1 carry
        check_asr_config(raw, folder / "config.json", ASRConfig)  # types, ranges, required and unknown keys
        config = ASRConfig(**raw)
        if dtype is None and config.from_scratch:
            dtype = torch.float32  # a small model stored in half precision (the bundled one) runs in fp32
        tensors = read_tensors(folder, dtype=dtype, device=device)

        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        source = f"{folder / 'config.json'}: encoder.config"
        if config.from_scratch:
            with torch.device("meta"):
                encoder = encoder_from_config(config.encoder["config"], source)  # HuBERT or Whisper
                decoder = Decoder(DecoderConfig.from_hf_config(config.decoder["config"]))
            load_state(encoder, part("encoder."), folder / "model.safetensors")
            decoder.load_weights(part("decoder."), folder / "model.safetensors")
        else:
            encoder = load_encoder(config.encoder["name"], dtype=dtype, device=device)
            decoder = load_decoder(config.decoder["name"], dtype=dtype, device=device)
            if hasattr(encoder.config, "pad_to_30s"):  # Whisper: the input mode it trained with (30 s or true length)
                encoder.config = dataclasses.replace(encoder.config,
                                                     pad_to_30s=config.encoder["config"].get("pad_to_30s", True))
        with torch.device("meta"):
            projector = AudioProjector(ProjectorConfig(**config.projector))
        load_state(projector, part("projector."), folder / "model.safetensors")
        if config.lora:
            apply_lora(decoder, **config.lora)
            load_adapter(decoder, folder)
        model = cls(encoder, projector, decoder, load_tokenizer(folder), config)
        return model.to(device).eval()
