"""Tokenizer and chat prompts against transformers and the real Qwen3 chat template (rendered with jinja2).

    python -m pytest -q tests/test_tokenizer.py

The Qwen3 files in tests/fixtures/qwen3-tokenizer/ are vocab.json + merges.txt + tokenizer_config.json (no
tokenizer.json), so this also proves the byte-level BPE that nanoaudio assembles from them.
"""

import json
from pathlib import Path

import pytest

from nanoaudio import NanoaudioError
from nanoaudio.tokenizer import Tokenizer, chat_prompt, load_tokenizer

QWEN3 = Path(__file__).parent / "fixtures" / "qwen3-tokenizer"

# a varied sample: ASCII, contractions, digits, punctuation runs, whitespace runs, tabs, newlines, accents,
# CJK, emoji, NFC-sensitive text (e + combining acute), special tokens written in the text, and a <think> block
SAMPLES = [
    "Hello, world!",
    "I'm sure they'll say it's fine; we've done it, haven't we? DON'T SHOUT.",
    "3.14159 is pi; 1,000,000 people; 2024-07-26T12:00:00Z; x^2 + y_1 = 42",
    "  leading spaces,   inner runs\tand\t\ttabs\n\nand blank lines\r\nwindows too   \n",
    "Ça va très bien, naïve façade, Straße, Ελληνικά, русский текст",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "emoji 🎉🚀 and symbols ™ © ≤ ≥ → ∑",
    "cafe\u0301 vs café",
    "<|im_start|>user\nTranscribe the speech to text<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "",
]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(QWEN3)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(QWEN3)  # Qwen2Tokenizer from the same three files


def test_encode_decode_match_transformers(ours, reference):
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert ours.vocab_size == len(reference)
    assert ours.eos_id == reference.eos_token_id == ours.token_to_id("<|im_end|>")
    assert ours.pad_id == reference.pad_token_id == ours.token_to_id("<|endoftext|>")
    assert ours.eot_id == ours.eos_id and ours.family == "qwen3"
    assert ours.token_to_id("</think>") == reference.convert_tokens_to_ids("</think>")


def test_qwen3_chat_prompt_equals_the_real_template(ours, reference):
    jinja2 = pytest.importorskip("jinja2")
    template = json.loads((QWEN3 / "tokenizer_config.json").read_text())["chat_template"]
    # transformers renders chat templates with trim_blocks and lstrip_blocks
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    render = env.from_string(template).render
    user, answer = "<audio>\nTranscribe the speech to text", "HELLO WORLD"
    turn = [{"role": "user", "content": user}]
    # inference: the generation prompt of the non-thinking mode
    want = render(messages=turn, add_generation_prompt=True, enable_thinking=False)
    assert chat_prompt("qwen3", user) == want
    # training: user turn + assistant turn
    want = render(messages=turn + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
    assert chat_prompt("qwen3", user, answer) == want
    assert ours.chat_prompt(None, user, answer) == want  # the tokenizer knows its family
    # with a system message
    sys_turn = [{"role": "system", "content": "S"}] + turn
    assert chat_prompt("qwen3", user, system="S") == render(messages=sys_turn, add_generation_prompt=True,
                                                            enable_thinking=False)
    # and the token ids equal transformers' apply_chat_template
    ids = reference.apply_chat_template(turn + [{"role": "assistant", "content": answer}], tokenize=True,
                                        return_dict=False)
    assert ours.encode(chat_prompt("qwen3", user, answer)) == list(ids)


def test_other_families_follow_their_documented_templates():
    # The SmolLM3 and Llama 3 templates are not in the fixtures; these facts are recorded from several public
    # renderings (see nanoaudio/tokenizer.py): header, user turn, empty think block, end-of-turn tokens.
    s = chat_prompt("smollm3", "hi", "ok")
    assert s.startswith("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: ")
    assert "Reasoning Mode: /no_think\n\n## Custom Instructions\n\n" in s
    assert s.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\nok<|im_end|>\n")
    assert chat_prompt("smollm3", "hi").endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert "## Custom Instructions\n\nBe brief.\n\n<|im_start|>user" in chat_prompt("smollm3", "hi", system="Be brief.")
    s = chat_prompt("llama3", "hi")
    assert s.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: ")
    assert s.endswith("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert chat_prompt("llama3", "hi", "ok").endswith("<|end_header_id|>\n\nok<|eot_id|>")
    # the user text goes in verbatim, so a caller can split the prompt around a marker
    for family in ("qwen3", "smollm3", "llama3"):
        _, right = chat_prompt(family, "\x00A\x00\nTranscribe").split("\x00A\x00")
        assert right.startswith("\nTranscribe")
    with pytest.raises(NanoaudioError, match="unknown chat family 'gpt2'"):
        chat_prompt("gpt2", "hi")


def test_save_and_reload(ours, tmp_path):
    ours.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = load_tokenizer(tmp_path)  # now from tokenizer.json
    assert isinstance(again, Tokenizer) and again.family == "qwen3"
    for text in SAMPLES:
        assert again.encode(text) == ours.encode(text)
    assert (again.eos_id, again.pad_id, again.eot_id) == (ours.eos_id, ours.pad_id, ours.eot_id)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(NanoaudioError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}')
    with pytest.raises(NanoaudioError, match="vocab.json: missing"):
        load_tokenizer(tmp_path)
