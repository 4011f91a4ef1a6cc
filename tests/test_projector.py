"""AudioProjector: exact parameter counts, shapes, the forward pass against PyTorch references, and masks.

    python -m pytest -q tests/test_projector.py
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nanoaudio import NanoaudioError
from nanoaudio.config import ProjectorConfig
from nanoaudio.projector import AudioProjector, num_tokens, stack_frames


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def meta_projector(**kw):
    with torch.device("meta"):  # shapes only: a 121M-parameter projector costs no memory
        return AudioProjector(ProjectorConfig(**kw))


# -----------------------------------------------------------------------------
# parameter counts (the course's numbers, where its inputs are right)


def test_linear_count_course_numbers():
    p = meta_projector(kind="linear", stack=5, encoder_dim=1280, decoder_dim=2048)
    assert p.proj.weight.numel() == 13_107_200  # 6400 * 2048, no bias
    assert p.ln_pre.weight.numel() + p.ln_post.weight.numel() == 8_448  # 6400 + 2048
    assert n_params(p) == 13_115_648
    assert p.proj.bias is None


def test_swiglu_count_course_numbers():
    p = meta_projector(kind="swiglu", stack=5, encoder_dim=1280, decoder_dim=2048, hidden=8192)
    assert n_params(p) == 121_643_264  # the course's "Actual (Tiny Audio)" row
    assert [tuple(m.weight.shape) for m in (p.gate_proj, p.up_proj, p.down_proj)] == \
        [(8192, 6400), (8192, 6400), (2048, 8192)]


@pytest.mark.parametrize("kind,k,Ce,Cd,hidden", [
    ("linear", 2, 1024, 4096, 1), ("linear", 8, 1280, 2560, 1), ("swiglu", 8, 1280, 2048, 8192),
    ("swiglu", 2, 1280, 2048, 8192), ("swiglu", 5, 1280, 2048, 4096), ("swiglu", 3, 7, 11, 13)])
def test_counts_match_the_course_formula(kind, k, Ce, Cd, hidden):
    # the course's own formula (Exercise 1, count_projector_params), written out independently of the module;
    # its printed table disagrees with this formula in three rows (see nanoaudio.compare)
    p = meta_projector(kind=kind, stack=k, encoder_dim=Ce, decoder_dim=Cd, hidden=hidden)
    norms = k * Ce + Cd
    expect = norms + (k * Ce * Cd if kind == "linear" else 2 * k * Ce * hidden + hidden * Cd)
    assert n_params(p) == expect
    assert all(t.device.type == "meta" for t in p.parameters())


# -----------------------------------------------------------------------------
# stacking and shapes


@pytest.mark.parametrize("F_,k", [(1, 5), (4, 5), (5, 5), (6, 5), (149, 5), (150, 8), (7, 1), (11, 3)])
def test_stack_frames_against_a_loop(F_, k):
    x = torch.randn(2, F_, 3)
    y = stack_frames(x, k)
    assert y.shape == (2, num_tokens(F_, k), k * 3) and num_tokens(F_, k) == -(-F_ // k)
    for j in range(y.shape[1]):
        frames = [x[:, i] if i < F_ else torch.zeros(2, 3) for i in range(j * k, j * k + k)]
        torch.testing.assert_close(y[:, j], torch.cat(frames, -1), rtol=0, atol=0)


def reference_forward(p, frames):
    """The projector written with PyTorch's own RMSNorm and linear ops (eval mode: no dropout)."""
    c = p.config
    B, F_, Ce = frames.shape
    N = -(-F_ // c.stack)
    x = torch.cat([frames, frames.new_zeros(B, N * c.stack - F_, Ce)], 1).reshape(B, N, c.stack * Ce)
    x = F.rms_norm(x, (c.stack * Ce,), p.ln_pre.weight, c.eps)
    if c.kind == "linear":
        x = F.linear(x, p.proj.weight)
    else:
        x = F.linear(F.silu(F.linear(x, p.gate_proj.weight)) * F.linear(x, p.up_proj.weight), p.down_proj.weight)
    return F.rms_norm(x, (c.decoder_dim,), p.ln_post.weight, c.eps)


@pytest.mark.parametrize("kind", ["linear", "swiglu"])
def test_forward_against_reference(kind):
    torch.manual_seed(0)
    p = AudioProjector(ProjectorConfig(kind=kind, stack=5, encoder_dim=12, decoder_dim=20, hidden=24)).eval()
    with torch.no_grad():  # norm weights that matter
        p.ln_pre.weight.uniform_(0.5, 1.5)
        p.ln_post.weight.uniform_(0.5, 1.5)
    frames = torch.randn(3, 23, 12) * 4
    tokens, mask = p(frames)
    assert tokens.shape == (3, 5, 20) and mask is None
    torch.testing.assert_close(tokens, reference_forward(p, frames))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    p = AudioProjector(ProjectorConfig(stack=2, encoder_dim=8, decoder_dim=64, dropout=0.5))
    x = torch.randn(1, 10, 8)
    assert not torch.equal(p.train()(x)[0], p.train()(x)[0])
    torch.testing.assert_close(p.eval()(x)[0], p.eval()(x)[0], rtol=0, atol=0)


def test_every_parameter_gets_a_gradient():
    for kind in ("linear", "swiglu"):
        p = AudioProjector(ProjectorConfig(kind=kind, stack=3, encoder_dim=8, decoder_dim=16, hidden=8))
        p(torch.randn(2, 7, 8))[0].pow(2).sum().backward()
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p.parameters())


def test_init_weights():
    p = AudioProjector(ProjectorConfig(stack=5, encoder_dim=16, decoder_dim=8))
    assert torch.equal(p.ln_pre.weight, torch.ones(80)) and torch.equal(p.ln_post.weight, torch.ones(8))
    bound = 1 / 80 ** 0.5  # Kaiming-uniform(a=sqrt 5): U(-1/sqrt(in), 1/sqrt(in))
    assert p.proj.weight.abs().max() <= bound and p.proj.weight.abs().max() > 0.9 * bound


# -----------------------------------------------------------------------------
# masks


def test_mask_gives_ceil_of_valid_frames_and_matches_single_samples():
    torch.manual_seed(0)
    k = 5
    p = AudioProjector(ProjectorConfig(stack=k, encoder_dim=6, decoder_dim=10)).eval()
    lengths = [23, 20, 1, 9]
    F_ = max(lengths)
    frames = torch.randn(len(lengths), F_, 6) * 3  # the padded frames hold garbage, as an encoder gives
    frame_mask = torch.arange(F_)[None] < torch.tensor(lengths)[:, None]
    tokens, token_mask = p(frames, frame_mask)
    assert tokens.shape == (4, num_tokens(F_, k), 10) and token_mask.dtype == torch.bool
    assert token_mask.sum(1).tolist() == [num_tokens(n, k) for n in lengths]  # 5, 4, 1, 2
    for b, n in enumerate(lengths):
        alone, none = p(frames[b:b + 1, :n])
        assert none is None
        assert token_mask[b].tolist() == [True] * num_tokens(n, k) + [False] * (tokens.shape[1] - num_tokens(n, k))
        # valid tokens equal the sample run alone, including the partial last token
        torch.testing.assert_close(tokens[b, :num_tokens(n, k)], alone[0], rtol=1e-6, atol=1e-6)


def test_mask_accepts_integer_masks():
    p = AudioProjector(ProjectorConfig(stack=2, encoder_dim=4, decoder_dim=4)).eval()
    x = torch.randn(1, 5, 4)
    _, m = p(x, torch.tensor([[1, 1, 1, 0, 0]]))
    assert m.tolist() == [[True, True, False]]


# -----------------------------------------------------------------------------
# config


@pytest.mark.parametrize("bad", [dict(kind="mlp2"), dict(stack=0), dict(decoder_dim=0), dict(dropout=1.0)])
def test_bad_config(bad):
    with pytest.raises(NanoaudioError):
        ProjectorConfig(**bad)


def test_config_round_trips_through_a_dict():
    c = ProjectorConfig(kind="swiglu", stack=4, encoder_dim=1024, decoder_dim=2560, hidden=4096)
    assert ProjectorConfig(**dataclasses.asdict(c)) == c
