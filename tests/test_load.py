"""Checkpoint loading: the raw safetensors reader, and bad input through the command line (one line, exit 1).

    python -m pytest -q tests/test_load.py

Each bad-input case breaks a tiny checkpoint folder in one way and runs
`python -m nanoaudio.decoder FOLDER --prompt ...` in a subprocess: it must exit with status 1 and print ONE line
on stderr that names the file, the key or the shape, never a traceback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint
from safetensors.torch import load_file, save_file

from nanoaudio.config import DecoderConfig
from nanoaudio.decoder import Decoder
from nanoaudio.load import read_tensors
from nanoaudio.tokenizer import load_tokenizer

ROOT = Path(__file__).parents[1]
QWEN3_TOKENIZER = Path(__file__).parent / "fixtures" / "qwen3-tokenizer"


def tiny_config(vocab=64):
    return DecoderConfig(model_type="qwen3", vocab_size=vocab, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=256, tie_word_embeddings=False)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    return save_checkpoint(tmp_path / "ckpt", Decoder(cfg).state_dict(), cfg.to_hf_config())


def cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nanoaudio.decoder", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def assert_one_line_error(r, *needles):
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -----------------------------------------------------------------------------
# the reader


def test_read_tensors_sharded_cast_and_rename(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"layer.{i}.weight": torch.randn(3, i + 1, generator=g) for i in range(5)}
    tensors["steps"] = torch.arange(4)  # an integer tensor keeps its dtype when casting
    save_checkpoint(tmp_path / "one", tensors, {})
    save_checkpoint(tmp_path / "sharded", tensors, {}, shards=3)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) == 3
    for folder in ("one", "sharded"):
        got = read_tensors(tmp_path / folder)
        assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
        half = read_tensors(tmp_path / folder, dtype="bf16")
        assert half["layer.2.weight"].dtype == torch.bfloat16 and half["steps"].dtype == torch.int64
        assert torch.equal(half["layer.2.weight"], tensors["layer.2.weight"].to(torch.bfloat16))
    renamed = read_tensors(tmp_path / "one", rename=lambda k: None if k == "steps" else "x." + k)
    assert set(renamed) == {"x." + k for k in tensors if k != "steps"}
    # the reference reader agrees
    ref = load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.equal(ref[k], tensors[k]) for k in tensors)


# -----------------------------------------------------------------------------
# the command line, happy path: same tokens as transformers


def test_cli_completes_a_prompt_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(QWEN3_TOKENIZER)
    cfg = tiny_config(vocab=tok.vocab_size)
    torch.manual_seed(1)
    model = Decoder(cfg)
    with torch.no_grad():  # peaked logits, so that greedy picks are far from ties
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.fill_(1.0)
    folder = save_checkpoint(tmp_path / "ckpt", model.state_dict(), cfg.to_hf_config(),
                             generation_config={"eos_token_id": [tok.eos_id], "pad_token_id": tok.pad_id})
    tok.save(folder)
    r = cli(folder, "--prompt", "The quick brown fox", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok.encode("The quick brown fox")])
    want = ref.generate(ids, do_sample=False, max_new_tokens=8, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    text = tok.decode(want[0, ids.shape[1]:].tolist())
    assert r.stdout == text + "\n"


# -----------------------------------------------------------------------------
# the command line, bad input: one line naming the problem, exit status 1


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), str(ckpt / "config.json"), "missing")


def test_unknown_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), "config.json", "model_type 'gpt2'", "qwen3")


def _edit_tensors(ckpt, edit):
    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return path


def test_missing_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), str(ckpt), "missing tensor", "model.layers.1.mlp.up_proj.weight")


def test_extra_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.layers.7.mlp.up_proj.weight": torch.zeros(2)}))
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), "model.safetensors", "unexpected tensor",
                          "model.layers.7.mlp.up_proj.weight")


def test_wrong_shape(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 16)}))
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), "model.safetensors", "model.layers.0.self_attn.k_proj.weight",
                          "(16, 16)", "(8, 16)")


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert_one_line_error(cli(ckpt, "--prompt", "hi"), str(path), "truncated")


def test_offline_hub_name(tmp_path):
    # an empty hub cache and no network: the message says what to download and where it goes
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    r = cli("qwen3-0.6b", "--prompt", "hi", env=env)
    assert_one_line_error(r, "qwen3-0.6b", "Qwen/Qwen3-0.6B", "config.json", "https://huggingface.co/Qwen/Qwen3-0.6B")
