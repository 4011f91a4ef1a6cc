"""What a fresh machine sees: nanoaudio next to Hugging Face's own `kernels` package.

    python -m pytest -q tests/test_install.py

transformers >= 5.25 imports Hugging Face's `kernels` as soon as a model module loads. Our Triton kernels live in
the top-level folder kernels/ but import only as `nanoaudio.kernels` (pyproject.toml maps the folder, and the
symlink nanoaudio/kernels -> ../kernels serves a source checkout); kernels/ has no __init__.py, so the repository
root shadows nothing. Each check runs in a subprocess, so what this pytest process already imported cannot help.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


HF_KERNELS = """
import kernels
assert hasattr(kernels, "get_kernel") and "site-packages" in kernels.__file__, kernels.__file__
"""


def test_transformers_models_run_in_the_repository_root():
    pytest.importorskip("kernels", reason="Hugging Face's kernels package (a transformers >= 5.25 dependency)")
    code = HF_KERNELS + """
import torch, transformers
import nanoaudio  # first, as a notebook in the repository would
from transformers import HubertConfig, HubertModel, Qwen3Config, Qwen3ForCausalLM
torch.manual_seed(0)
lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()
print(tuple(lm(torch.randint(0, 64, (1, 7))).logits.shape))
hubert = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)).eval()
print(tuple(hubert(torch.randn(1, 1600)).last_hidden_state.shape))
"""
    assert run_python(code, cwd=ROOT).split("\n")[:2] == ["(1, 7, 64)", "(1, 159, 32)"]


def test_triton_rms_norm_from_another_directory(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("kernels", reason="Hugging Face's kernels package (a transformers >= 5.25 dependency)")
    code = HF_KERNELS + """
import sys, torch
from nanoaudio import nn
x, w = torch.randn(3, 5, 96), torch.randn(96)
out = nn.rms_norm(x, w, 1e-6)
assert "nanoaudio.kernels.rmsnorm" in sys.modules, "the Triton kernel did not run"
torch.testing.assert_close(out, nn.rms_norm_reference(x, w, 1e-6), rtol=1e-5, atol=1e-5)
assert sys.modules["kernels"] is kernels, "nanoaudio replaced Hugging Face's kernels"
print("ok", sys.modules["nanoaudio.kernels.rmsnorm"].__name__)
"""
    out = run_python(code, cwd=tmp_path, NANOAUDIO_KERNELS="1", TRITON_INTERPRET="1", PYTHONPATH="")
    assert out.strip() == "ok nanoaudio.kernels.rmsnorm"


def test_the_wheel_installs_no_top_level_kernels(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("nanoaudio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"nanoaudio", wheel.name.split("-py")[0] + ".dist-info"}
    kernel_files = sorted(n for n in names if "kernels" in n)
    assert kernel_files == ["nanoaudio/kernels/compile_check.py", "nanoaudio/kernels/flash_attention.py",
                            "nanoaudio/kernels/rmsnorm.py"]


def test_the_repository_root_has_no_kernels_package():
    # a kernels/__init__.py (or kernels.py) here would be found before site-packages and shadow Hugging Face's
    assert not (ROOT / "kernels" / "__init__.py").exists() and not (ROOT / "kernels.py").exists()
    assert (ROOT / "nanoaudio" / "kernels").resolve() == (ROOT / "kernels").resolve()
