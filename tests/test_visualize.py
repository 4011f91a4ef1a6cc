"""nanoaudio.visualize: the numbers come from the model, the command writes a real PNG, bad input is one line.

    python -m pytest -q tests/test_visualize.py

The model is the tiny preset, randomly initialised (train.build_model) and saved as a checkpoint; the audio is
1.37 s of a modulated tone written with soundfile, so F = 68 frames is not a multiple of k = 5 (a partial
last audio token, zero-padded by the stacking).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import train
from nanoaudio.audio import batch_audio, load_audio
from nanoaudio.config import ProjectorConfig
from nanoaudio.model import ASRModel
from nanoaudio.projector import AudioProjector
from nanoaudio.visualize import STAGES, main, projection_stats

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 1.37


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = train.build_model(train.parse_args(["--preset", "tiny"]), torch.device("cpu"))
    with torch.no_grad():  # ln_post's weight is 1 at init: give it a spread so the token norms tell stages apart
        model.projector.ln_post.weight.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("viz") / "ckpt"
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def wav_path(tmp_path_factory):
    t = np.arange(int(SECONDS * 16000)) / 16000
    rng = np.random.default_rng(0)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(len(t))
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return ASRModel.load(ckpt)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nanoaudio.visualize", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def brute_force_nearest(tokens, model, top_k):
    """Cosine of every audio token with every ordinary text token, one pair at a time in a loop over ids."""
    tok = model.tokenizer
    special = set(tok.tk.get_added_tokens_decoder())
    emb = model.decoder.model.embed_tokens.weight.detach()
    ids = [i for i in range(tok.vocab_size) if i not in special]  # rows past vocab_size are padding
    cos = torch.stack([F.cosine_similarity(tokens, emb[i][None], dim=-1) for i in ids], 1)  # (N, V')
    best = cos.topk(top_k, dim=-1)
    return torch.tensor(ids)[best.indices], best.values, emb[ids].norm(dim=-1)


# -----------------------------------------------------------------------------
# the numbers


def test_norms_are_those_of_the_models_own_tensors(model, wav_path):
    wave = load_audio(wav_path)
    stats = projection_stats(model, wave, top_k=3)
    wav, mask = batch_audio([wave])
    with torch.no_grad():
        tokens, token_mask, frames, _ = model.encode_audio(wav, mask)
    F_, Ce = frames.shape[1:]
    k = model.projector.config.stack
    N = math.ceil(F_ / k)
    assert F_ == 68 and tokens.shape[1] == N == 14 and int(token_mask.sum()) == N
    assert stats["shapes"] == {"frames": (F_, Ce), "stacked": (N, k * Ce), "ln_pre": (N, k * Ce),
                               "proj": (N, tokens.shape[2]), "tokens": (N, tokens.shape[2])}
    torch.testing.assert_close(stats["norms"]["frames"], frames[0].norm(dim=-1))
    torch.testing.assert_close(stats["norms"]["tokens"], tokens[0].norm(dim=-1))
    # stacking by hand: zero-pad to N*k frames, then token j = frames j*k .. j*k+k-1 side by side
    padded = torch.cat([frames[0], torch.zeros(N * k - F_, Ce)])
    stacked = torch.stack([padded[j * k:(j + 1) * k].flatten() for j in range(N)])  # (N, k*Ce)
    torch.testing.assert_close(stats["norms"]["stacked"], stacked.norm(dim=-1))
    p = model.projector
    normed = stacked / stacked.pow(2).mean(-1, keepdim=True).add(p.config.eps).sqrt() * p.ln_pre.weight
    torch.testing.assert_close(stats["norms"]["ln_pre"], normed.norm(dim=-1))
    with torch.no_grad():
        torch.testing.assert_close(stats["norms"]["proj"], (normed @ p.proj.weight.T).norm(dim=-1))
    # what the picture is about: ln_pre fixes the scale, ln_post's weight sets it, the tail token is shorter
    assert stats["norms"]["stacked"][-1] < 0.9 * stats["norms"]["stacked"][:-1].min()
    torch.testing.assert_close(stats["norms"]["ln_pre"], torch.full((N,), math.sqrt(k * Ce)), rtol=1e-4, atol=0)
    assert stats["hop"]["frames"] == pytest.approx(0.02) and stats["hop"]["tokens"] == pytest.approx(0.1)


def test_nearest_tokens_match_a_brute_force_search(model, wav_path):
    wave = load_audio(wav_path)
    stats = projection_stats(model, wave, top_k=3)
    with torch.no_grad():
        tokens = model.encode_audio(*batch_audio([wave]))[0][0]  # (N, Cd)
    ids, cos, text_norms = brute_force_nearest(tokens, model, 3)
    assert torch.equal(stats["nearest_ids"], ids)
    torch.testing.assert_close(stats["nearest_cosine"], cos, rtol=1e-5, atol=1e-5)
    assert stats["nearest_tokens"] == [[model.tokenizer.tk.id_to_token(i) if "\ufffd" in model.tokenizer.decode([i])
                                        else model.tokenizer.decode([i]) for i in row] for row in ids.tolist()]
    p5, p50, p95 = np.percentile(text_norms.numpy(), [5, 50, 95])
    t = stats["text_norm"]
    assert t["count"] == len(text_norms) == model.tokenizer.vocab_size - 5  # the 5 chat tokens are skipped
    assert (t["p5"], t["p50"], t["p95"]) == pytest.approx((p5, p50, p95), rel=1e-5)
    assert t["mean"] == pytest.approx(text_norms.mean().item(), rel=1e-5)


def test_special_tokens_are_never_neighbours(model, wav_path):
    # make <|im_end|> (and the padding rows past the tokenizer) point exactly along the first audio token:
    # they would win every search they were allowed into
    wave = load_audio(wav_path)
    with torch.no_grad():
        tokens = model.encode_audio(*batch_audio([wave]))[0][0]
    emb = model.decoder.model.embed_tokens.weight
    saved = emb.detach().clone()
    eot, V = model.tokenizer.eot_id, model.tokenizer.vocab_size
    try:
        with torch.no_grad():
            emb[eot] = tokens[0]
            emb[V:] = tokens[0]
        stats = projection_stats(model, wave, top_k=5)
    finally:
        with torch.no_grad():
            emb.copy_(saved)
    ids = stats["nearest_ids"]
    assert not ((ids == eot) | (ids >= V)).any()
    assert stats["nearest_cosine"][0, 0] < 0.99


def test_swiglu_projector_stages(model, wav_path):
    # the swiglu branch of the recomputed stages must also reproduce AudioProjector.forward
    p = model.projector
    cfg = ProjectorConfig(kind="swiglu", stack=3, encoder_dim=p.config.encoder_dim,
                          decoder_dim=p.config.decoder_dim, hidden=48)
    torch.manual_seed(1)
    model.projector = AudioProjector(cfg).eval()
    try:
        wave = load_audio(wav_path)
        stats = projection_stats(model, wave, top_k=2)
        with torch.no_grad():
            tokens = model.encode_audio(*batch_audio([wave]))[0][0]
    finally:
        model.projector = p
    assert stats["shapes"]["stacked"] == (math.ceil(68 / 3), 3 * cfg.encoder_dim)
    torch.testing.assert_close(stats["norms"]["tokens"], tokens.norm(dim=-1))
    assert stats["nearest_ids"].shape == (23, 2) and stats["hop"]["tokens"] == pytest.approx(0.06)


# -----------------------------------------------------------------------------
# the command


def test_cli_writes_a_png_and_a_summary(ckpt, wav_path, tmp_path):
    out = tmp_path / "projection.png"
    r = run_cli(wav_path, "--checkpoint", ckpt, "-o", out, "--top-k", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 300 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # something was drawn
    lines = r.stdout.splitlines()
    for _, label, _ in STAGES:  # one line per stage, with its shape
        assert sum(line.startswith(label) for line in lines) == 1, (label, r.stdout)
    assert "(68, 192)" in r.stdout and "(14, 960)" in r.stdout and "(14, 256)" in r.stdout


def test_bad_audio_is_one_line_and_exit_1(ckpt, tmp_path, capsys):
    # a missing file through the real command line (python -m), ...
    missing = tmp_path / "missing.wav"
    r = run_cli(missing, "--checkpoint", ckpt, "-o", tmp_path / "x.png")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0], r.stderr
    # ... and a file that is not audio through main() (the same code path, without a second interpreter)
    text = tmp_path / "not_audio.wav"
    text.write_text("hello")
    assert main([str(text), "--checkpoint", str(ckpt), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(text) in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_is_a_clear_error(monkeypatch, capsys, ckpt, wav_path, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert main([str(wav_path), "--checkpoint", str(ckpt), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nanoaudio[viz]" in err[0]
