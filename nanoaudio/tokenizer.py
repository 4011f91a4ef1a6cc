"""Text <-> token ids, and the chat prompt of each decoder family, in plain Python.

- `load_tokenizer(name_or_path)`: reads `tokenizer.json` with the `tokenizers` library, or, when a folder has
  only the "slow" files (`vocab.json` + `merges.txt` + `tokenizer_config.json`, like Qwen3's), builds the same
  byte-level BPE that transformers' Qwen2Tokenizer builds: NFC normalization, the Qwen2 pre-tokenizer regex
  (isolated splits), byte-level mapping, and the added tokens of tokenizer_config.json at their ids.
- `chat_prompt(family, user, assistant=None)`: the chat template of Qwen3, SmolLM3 and Llama 3, written out by
  hand (no jinja at runtime) for the one shape nanoaudio needs: [system] + one user turn + the assistant's
  (non-thinking) reply or the generation prompt. The user text is inserted verbatim, so callers can put a
  marker in it and split the rendered prompt around it (model.py does that for the audio slots).
- `Tokenizer.save(folder)` writes tokenizer.json + tokenizer_config.json, so checkpoints carry their tokenizer.
References: transformers models/qwen2/tokenization_qwen2.py; the chat_template of Qwen/Qwen3-*
tokenizer_config.json, HuggingFaceTB/SmolLM3-3B chat_template.jinja, meta-llama/Llama-3.2-*-Instruct.
"""

import json
from pathlib import Path

from nanoaudio import NanoaudioError
from nanoaudio.load import DECODERS, read_json, resolve

# transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX: contractions, letters with one leading non-letter, single
# digits (numbers are split digit by digit), punctuation runs, newlines, other whitespace.
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

FAMILIES = ("qwen3", "smollm3", "llama3")
FAMILY_OF_MODEL_TYPE = {"qwen3": "qwen3", "smollm3": "smollm3", "llama": "llama3"}
END_OF_TURN = {"qwen3": "<|im_end|>", "smollm3": "<|im_end|>", "llama3": "<|eot_id|>"}

# -----------------------------------------------------------------------------
# chat prompts

# Llama 3.2 and SmolLM3 put "Today Date" in their system block (strftime_now in the jinja templates). A prompt
# that changes every day would make training and inference prompts differ, so we pin it: Llama's template
# uses "26 Jul 2024" when no clock is available; SmolLM3 gets the same day in its own format.
LLAMA3_DATE = "26 Jul 2024"
SMOLLM3_DATE = "26 July 2024"
SMOLLM3_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."


def chat_prompt(family: str, user: str, assistant: str | None = None, system: str | None = None,
                date: str | None = None) -> str:
    """One chat turn rendered as the family's template renders it, thinking disabled.

    assistant=None -> ends with the generation prompt (where the model starts writing);
    otherwise the assistant reply follows, closed by the end-of-turn token.
    """
    if family == "qwen3":
        # Qwen3 (hybrid thinking): non-thinking mode is an EMPTY think block at the start of the reply; the
        # template renders the same block for the last assistant turn, so training and inference agree.
        out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        out += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        return out if assistant is None else out + assistant.lstrip("\n") + "<|im_end|>\n"
    if family == "smollm3":
        # SmolLM3 always opens with a metadata system block ("/no_think" = thinking disabled). Its template
        # closes that block with <|im_end|> only when tools are given, so here it runs straight into the user
        # turn. The empty think block is followed by ONE newline (Qwen3 has two).
        custom = (system or "").replace("/no_think", "").replace("/think", "").rstrip()
        out = ("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n"
               f"Today Date: {date or SMOLLM3_DATE}\nReasoning Mode: /no_think\n\n## Custom Instructions\n\n"
               f"{custom or SMOLLM3_DEFAULT_SYSTEM}\n\n")
        out += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"
        return out if assistant is None else out + assistant.lstrip("\n") + "<|im_end|>\n"
    if family == "llama3":
        # Llama 3.x Instruct: <|begin_of_text|>, a system header with the knowledge-cutoff lines, then
        # header-delimited turns closed by <|eot_id|>. The template trims each message's content.
        out = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               f"Cutting Knowledge Date: December 2023\nToday Date: {date or LLAMA3_DATE}\n\n"
               f"{(system or '').strip()}<|eot_id|>")
        out += (f"<|start_header_id|>user<|end_header_id|>\n\n{user.strip()}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
        return out if assistant is None else out + assistant.strip() + "<|eot_id|>"
    raise NanoaudioError(f"unknown chat family {family!r}; use one of {', '.join(FAMILIES)}")


# -----------------------------------------------------------------------------
# the tokenizer


def _content(token):
    """tokenizer_config.json writes special tokens as "text" or as {"content": "text", ...}."""
    return token.get("content") if isinstance(token, dict) else token


class Tokenizer:
    def __init__(self, tk, config: dict | None = None, family: str | None = None):
        self.tk = tk  # a tokenizers.Tokenizer
        self.config = dict(config or {})  # tokenizer_config.json
        self.family = family
        self.eos_id = self.token_to_id(_content(self.config.get("eos_token")))
        self.bos_id = self.token_to_id(_content(self.config.get("bos_token")))
        self.eot_id = self.token_to_id(END_OF_TURN.get(family)) if family else None
        self.eot_id = self.eot_id if self.eot_id is not None else self.eos_id
        pad = self.token_to_id(_content(self.config.get("pad_token")))
        self.pad_id = pad if pad is not None else self.eos_id  # Llama 3 defines no pad token

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tk.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        # No automatic BOS/EOS: prompts spell out their special tokens (chat_prompt does), as transformers'
        # apply_chat_template(tokenize=True) does. Special tokens written in the text become their ids.
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, family: str | None, user: str, assistant: str | None = None, **kw) -> str:
        return chat_prompt(family or self.family, user, assistant, **kw)

    def save(self, folder) -> None:
        folder = Path(folder)
        self.tk.save(str(folder / "tokenizer.json"))
        config = {k: v for k, v in self.config.items() if k != "added_tokens_decoder"}
        config["nanoaudio_family"] = self.family  # read back by load_tokenizer
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def qwen2_pipeline(bpe):
    """A tokenizers.Tokenizer around a BPE model with Qwen2/Qwen3's pipeline: NFC, the Qwen2 split regex, then
    byte-level (bytes -> printable unicode), and the byte-level decoder. The tiny preset trains its BPE in it."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Tk

    tk = Tk(bpe)
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes -> printable unicode
    ])
    tk.decoder = decoders.ByteLevel()
    return tk


def qwen2_bpe(folder: Path, config: dict):
    """Byte-level BPE from vocab.json + merges.txt, exactly as transformers' Qwen2Tokenizer assembles it."""
    from tokenizers import AddedToken
    from tokenizers.models import BPE

    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise NanoaudioError(f"{folder / name}: missing (and no tokenizer.json in {folder})")
    try:
        bpe = BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"), dropout=None, unk_token=None,
                            continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                            byte_fallback=False)
    except Exception as e:
        raise NanoaudioError(f"{folder}: unreadable vocab.json/merges.txt ({e})") from None
    tk = qwen2_pipeline(bpe)
    # Added tokens (<|endoftext|>, <|im_start|>, <think>, ...) sit right after the BPE vocabulary; adding them
    # in id order gives each its id. "special" ones are dropped by decode(skip_special_tokens=True).
    added = config.get("added_tokens_decoder")
    if added is None and (folder / "added_tokens.json").is_file():
        added = {i: {"content": t, "special": True} for t, i in read_json(folder / "added_tokens.json").items()}
    for i, t in sorted((int(i), t) for i, t in (added or {}).items()):
        tok = AddedToken(t["content"], single_word=t.get("single_word", False), lstrip=t.get("lstrip", False),
                         rstrip=t.get("rstrip", False), normalized=t.get("normalized", False),
                         special=t.get("special", False))
        (tk.add_special_tokens if tok.special else tk.add_tokens)([tok])
        if tk.token_to_id(t["content"]) != i:
            raise NanoaudioError(f"{folder / 'tokenizer_config.json'}: added token {t['content']!r} should have "
                                 f"id {i} but lands at {tk.token_to_id(t['content'])}")
    return tk


def load_tokenizer(name_or_path) -> Tokenizer:
    """A folder (a model checkpoint or a nanoaudio checkpoint), a hub id, or a short name (qwen3-8b, ...)."""
    from tokenizers import Tokenizer as Tk

    patterns = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "config.json"]
    folder = resolve(name_or_path, DECODERS, patterns)
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if (folder / "tokenizer.json").is_file():
        try:
            tk = Tk.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise NanoaudioError(f"{folder / 'tokenizer.json'}: unreadable ({str(e)[:160]})") from None
    elif config.get("tokenizer_class", "").startswith("Qwen2Tokenizer"):
        tk = qwen2_bpe(folder, config)
    else:
        raise NanoaudioError(f"{folder}: no tokenizer.json (and no Qwen2-style vocab.json + merges.txt)")
    return Tokenizer(tk, config, _family(folder, config, tk))


def _family(folder: Path, config: dict, tk) -> str | None:
    """Which chat template: saved by nanoaudio, else config.json's model_type, else the special tokens."""
    if config.get("nanoaudio_family") in FAMILIES:
        return config["nanoaudio_family"]
    if (folder / "config.json").is_file():
        model_type = read_json(folder / "config.json").get("model_type")
        if model_type in FAMILY_OF_MODEL_TYPE:
            return FAMILY_OF_MODEL_TYPE[model_type]
    if tk.token_to_id("<|eot_id|>") is not None:
        return "llama3"
    if tk.token_to_id("<|im_start|>") is not None:
        return "smollm3" if tk.token_to_id("<|begin_of_text|>") is not None else "qwen3"
    return None
