"""Whole models with the Triton kernels forced on match the PyTorch path (forward and every parameter gradient).

    python -m pytest -q tests/test_kernels_models.py

NANOAUDIO_KERNELS=1 routes every RMSNorm and attention of nanoaudio.nn to nanoaudio.kernels (through the Triton
interpreter on CPU: TRITON_INTERPRET=1 is set below before the kernels are imported), NANOAUDIO_KERNELS=0
to PyTorch. Tiny random fp32 models (decoder, projector, HuBERT encoder); spies check that the kernels ran.
"""

import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when a @triton.jit decorator runs, i.e. at kernel import

import pytest  # noqa: E402

pytest.importorskip("triton")
if not CUDA and os.environ["TRITON_INTERPRET"] != "1":
    pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

import nanoaudio.kernels.flash_attention as fa  # noqa: E402
import nanoaudio.kernels.rmsnorm as rn  # noqa: E402
from nanoaudio.config import DecoderConfig, EncoderConfig, ProjectorConfig  # noqa: E402
from nanoaudio.decoder import Decoder, KVCache  # noqa: E402
from nanoaudio.encoder import HubertEncoder  # noqa: E402
from nanoaudio.projector import AudioProjector  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture
def spies(monkeypatch):
    """Counts the calls that reach the kernels (the switch imports them lazily, so patching the modules works)."""
    monkeypatch.setattr(fa, "AUTOTUNE", False)
    calls = {"rms_norm": 0, "flash_attention": 0}
    for module, name in ((rn, "rms_norm"), (fa, "flash_attention")):
        original = getattr(module, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def _forward_backward(model, monkeypatch, mode, *inputs, **kwargs):
    monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
    model.zero_grad(set_to_none=True)
    out = model(*inputs, **kwargs)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
    (out * target).sum().backward()  # a random cotangent reaches every parameter
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(a, b, what):
    # fp32 round-off only (sums in another order): absolute tolerance on the scale of the tensor
    atol = 1e-5 * max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=lambda m: f"{what}: {m}")


def _tiny_decoder():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                        rope_theta=10000.0)  # Qwen3: q_norm/k_norm over D=16 rows, GQA 4/2
    model = Decoder(cfg).to(DEVICE)
    with torch.no_grad():  # larger than the 0.02 init so that attention is not uniform, weights not all 1
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.3 * torch.randn_like(p))
    return model


def test_decoder_forward_backward_kernels_match_pytorch(monkeypatch, spies):
    model = _tiny_decoder()
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits, grads = _forward_backward(model, monkeypatch, "1", ids)
    # per layer: 2 block norms + q_norm + k_norm, and the final norm; one attention per layer
    assert spies == {"rms_norm": 2 * 4 + 1, "flash_attention": 2}
    logits_ref, grads_ref = _forward_backward(model, monkeypatch, "0", ids)
    assert spies == {"rms_norm": 9, "flash_attention": 2}  # the PyTorch run did not touch the kernels
    _compare(logits, logits_ref, "logits")
    assert grads.keys() == grads_ref.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        _compare(grads[name], grads_ref[name], name)


@torch.no_grad()
def test_decoder_kv_cache_decode_kernels_match_pytorch(monkeypatch, spies):
    # prefill (causal, Tq = Tk) then single-token steps (Tq = 1 < Tk, no mask) through the kernels
    model = _tiny_decoder().eval()
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
        cache = KVCache(model.config, batch_size=2, max_len=16, dtype=torch.float32, device=DEVICE)
        steps = [model(ids[:, :8], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(8, 11)]
        outs[mode] = torch.cat(steps, dim=1)  # (B, 11, V)
    assert spies["flash_attention"] == 4 * 2
    _compare(outs["1"], outs["0"], "logits with the KV cache")


def test_projector_forward_backward_kernels_match_pytorch(monkeypatch, spies):
    # the real ln_pre width: hubert-xlarge's 1280 features x k=5 stacked frames = rows of 6400
    torch.manual_seed(0)
    model = AudioProjector(ProjectorConfig(stack=5, encoder_dim=1280, decoder_dim=64, dropout=0.0)).to(DEVICE)
    with torch.no_grad():
        model.ln_pre.weight.copy_(1 + 0.2 * torch.randn(6400))
        model.ln_post.weight.copy_(1 + 0.2 * torch.randn(64))
    frames = torch.randn(2, 23, 1280, device=DEVICE)
    frame_mask = torch.arange(23, device=DEVICE)[None] < torch.tensor([[23], [14]], device=DEVICE)
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
        model.zero_grad(set_to_none=True)
        x = frames.clone().requires_grad_()
        tokens, _ = model(x, frame_mask)
        target = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        (tokens * target).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        outs[mode] = (tokens.detach(), x.grad, grads)
    assert spies["rms_norm"] == 2
    _compare(outs["1"][0], outs["0"][0], "tokens")
    _compare(outs["1"][1], outs["0"][1], "d frames")
    for name in outs["0"][2]:
        _compare(outs["1"][2][name], outs["0"][2][name], name)


@pytest.mark.parametrize("stable", [True, False], ids=["large-preLN", "base-postLN"])
def test_encoder_forward_backward_kernels_match_pytorch(monkeypatch, spies, stable):
    # a padded batch: the shorter sample's padded frames are masked as keys through kv_lens in both paths
    torch.manual_seed(0)
    cfg = EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        conv_dim=(16,) * 7, conv_bias=True, feat_extract_norm="layer" if stable else "group",
                        do_stable_layer_norm=stable, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, final_dropout=0.0)
    model = HubertEncoder(cfg).to(DEVICE).eval()  # eval: no dropout; gradients still flow
    with torch.no_grad():  # larger attention weights than the 0.02 init, so softmax is far from uniform
        for name, p in model.named_parameters():
            if "attention" in name and name.endswith("weight"):
                p.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(3)
    waveform = torch.randn(2, 5000, generator=g).to(DEVICE)
    attention_mask = (torch.arange(5000)[None] < torch.tensor([[5000], [3100]])).long().to(DEVICE)
    hidden, grads = _forward_backward(model, monkeypatch, "1", waveform, attention_mask)
    assert spies["flash_attention"] == 2 and spies["rms_norm"] == 0  # HuBERT normalizes with LayerNorm
    assert hidden.shape[1] == model.num_frames(5000)
    hidden_ref, grads_ref = _forward_backward(model, monkeypatch, "0", waveform, attention_mask)
    assert spies["flash_attention"] == 2
    _compare(hidden, hidden_ref, "hidden")
    assert grads.keys() == grads_ref.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        if name.endswith("k_proj.bias") or (not stable and name == "feature_extractor.conv_layers.0.conv.bias"):
            # gradients that are exactly 0 in exact arithmetic, so round-off has no scale to compare against:
            # a key bias adds q.b to every score of a query row (softmax cancels it), and the base model's
            # GroupNorm normalizes each channel over time right after the first conv (its bias cancels)
            assert grads[name].abs().max() < 1e-3 and grads_ref[name].abs().max() < 1e-3
            continue
        _compare(grads[name], grads_ref[name], name)
