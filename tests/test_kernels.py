"""The Triton kernels against their PyTorch references, and the nanoaudio.nn switch that calls them.

    python -m pytest -q tests/test_kernels.py              # CPU: the Triton interpreter, ~1 min
    python -m pytest -q tests/test_kernels.py -m slow      # the wider shape grid (a few more minutes on CPU)

Without a GPU the kernels run under TRITON_INTERPRET=1 (set below, before the kernel modules are imported) in
fp32 and fp16 (bf16 tl.dot is broken in the interpreter). With a GPU the same cases run on CUDA, plus the
GPU-only cases: bf16, head dim 128, long and odd sequence lengths, the autotuned launch path.
References are computed in fp32 from the same (rounded) inputs; tolerances depend on the kernel's dtype.
"""

import os
import subprocess
import sys

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
from nanoaudio import nn  # noqa: E402


DEVICE = "cuda" if CUDA else "cpu"
gpu_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bf16 tl.dot and long sequences)")

# (atol, rtol) against an fp32 reference, for outputs and for gradients
TOL = {
    torch.float32: ((2e-5, 1e-4), (5e-5, 1e-4)),
    torch.float16: ((5e-3, 5e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((2e-2, 2e-2), (5e-2, 5e-2)),
}


@pytest.fixture(autouse=True)
def _fixed_tiles_on_gpu(monkeypatch):
    # small parity shapes: skip autotuning (it compiles every config for every new shape); GPU-only tests opt back in
    monkeypatch.setattr(fa, "AUTOTUNE", False)


def _close(actual, expected, tol, what):
    atol, rtol = tol
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# -----------------------------------------------------------------------------
# RMSNorm


def _check_rms_norm(lead, N, dtype, residual, weight_dtype=None):
    g = torch.Generator().manual_seed(N)
    x = torch.randn(*lead, N, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(N, generator=g)).to(DEVICE, weight_dtype or dtype).requires_grad_()
    r = torch.randn(*lead, N, generator=g).to(DEVICE, dtype).requires_grad_() if residual else None
    out = rn.rms_norm(x, w, 1e-6, r)
    y, h = out if residual else (out, None)
    # fp32 reference from the same rounded inputs (h in the activation dtype, as the kernel and HF round it)
    h_ref = (x.float() + r.float()).to(dtype).float() if residual else x.float()
    y_ref = rn.rms_norm_reference(h_ref, w.float(), 1e-6)
    assert y.dtype == torch.promote_types(dtype, w.dtype) and y.shape == x.shape
    fwd_tol, bwd_tol = TOL[dtype]
    _close(y, y_ref, fwd_tol, "y")
    if residual:
        assert h.dtype == dtype
        _close(h, h_ref, (0, 0), "new residual")
    # gradients: a random cotangent for y (and for h: the residual stream also flows on to the next layer)
    dy = torch.randn(y.shape, generator=g).to(DEVICE, y.dtype)
    dh = torch.randn(y.shape, generator=g).to(DEVICE, dtype) if residual else None
    inputs = (x, w, r) if residual else (x, w)
    loss = (y.float() * dy.float()).sum() + ((h.float() * dh.float()).sum() if residual else 0)
    grads = torch.autograd.grad(loss, inputs)
    x32 = x.detach().float().requires_grad_()
    r32 = r.detach().float().requires_grad_() if residual else None
    w32 = w.detach().float().requires_grad_()
    h32 = x32 + r32 if residual else x32
    loss_ref = (rn.rms_norm_reference(h32, w32, 1e-6) * dy.float()).sum()
    loss_ref = loss_ref + ((h32 * dh.float()).sum() if residual else 0)
    refs = torch.autograd.grad(loss_ref, (x32, w32, r32) if residual else (x32, w32))
    for name, a, b in zip(("dx", "dweight", "dresidual"), grads, refs):
        assert a.dtype == inputs[0].dtype if name != "dweight" else a.dtype == w.dtype
        # dweight sums over all rows: scale the tolerance with its magnitude
        tol = bwd_tol if name != "dweight" else (bwd_tol[0] * max(1.0, b.abs().max().item()), bwd_tol[1])
        _close(a, b, tol, name)


@pytest.mark.parametrize("N", [1, 77, 128, 6400])
@pytest.mark.parametrize("lead", [(3, 5), (7,)], ids=["3x5", "7"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_rms_norm_matches_reference(N, lead, dtype, residual):
    _check_rms_norm(lead, N, dtype, residual)


def test_rms_norm_hf_semantics_bitwise():
    # same-dtype comparison with the HF formula: normalize in fp32, round to fp16, then multiply by the weight.
    # Only the order of the fp32 sum of squares differs, which flips a rounding (by one ulp of x_hat) on a few
    # elements in a million; any other order of operations would differ on a large fraction of them.
    x = torch.randn(6, 77, 4096).to(DEVICE, torch.float16)
    w = (1 + torch.randn(4096)).to(DEVICE, torch.float16)
    y, y_ref = rn.rms_norm(x, w, 1e-6), nn.rms_norm_reference(x, w, 1e-6)
    assert (y != y_ref).float().mean().item() < 1e-4
    torch.testing.assert_close(y, y_ref, atol=0, rtol=2**-9)


def test_rms_norm_mixed_dtypes_and_frozen_weight():
    # fp32 weight on fp16 activations gives an fp32 output (PyTorch promotion, as in HF); a frozen weight
    # (LoRA fine-tuning) skips the dweight partial sums and still gives the right dx
    _check_rms_norm((4, 3), 128, torch.float16, residual=False, weight_dtype=torch.float32)
    x = torch.randn(5, 130).to(DEVICE).requires_grad_()
    w = (1 + torch.randn(130)).to(DEVICE)
    (dx,) = torch.autograd.grad(rn.rms_norm(x, w, 1e-5).square().sum(), x)
    x32 = x.detach().requires_grad_()
    (dx_ref,) = torch.autograd.grad(rn.rms_norm_reference(x32, w, 1e-5).square().sum(), x32)
    _close(dx, dx_ref, TOL[torch.float32][1], "dx")


def test_rms_norm_dweight_is_bit_reproducible():
    # many rows per backward program (partial sums, then a fixed-order reduction): identical bits every run
    x = torch.randn(3, 301, 128).to(DEVICE).requires_grad_()
    w = (1 + torch.randn(128)).to(DEVICE).requires_grad_()
    dy = torch.randn(3, 301, 128).to(DEVICE)
    runs = [torch.autograd.grad(rn.rms_norm(x, w, 1e-6), (x, w), dy) for _ in range(3)]
    for dx, dw in runs[1:]:
        assert torch.equal(dx, runs[0][0]) and torch.equal(dw, runs[0][1])
    x32 = x.detach().requires_grad_()
    w32 = w.detach().requires_grad_()
    ref = torch.autograd.grad(rn.rms_norm_reference(x32, w32, 1e-6), (x32, w32), dy)
    _close(runs[0][1], ref[1], (1e-3, 1e-4), "dweight")


def test_rms_norm_rejects_mismatched_residual():
    with pytest.raises(ValueError, match="residual"):
        rn.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6, torch.randn(1, 8))


# -----------------------------------------------------------------------------
# flash attention


def _check_attention(B, Hq, Hkv, Tq, Tk, D, causal, kv_lens, dtype, scale=None, transposed=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def make(H, T):
        if transposed:  # the (B, T, H, D) layout of a projection, viewed as (B, H, T, D): strided, not contiguous
            return torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype).transpose(1, 2).requires_grad_()
        return torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype).requires_grad_()

    q, k, v = make(Hq, Tq), make(Hkv, Tk), make(Hkv, Tk)
    lens = torch.tensor(kv_lens, device=DEVICE) if kv_lens is not None else None
    o = fa.flash_attention(q, k, v, causal=causal, softmax_scale=scale, kv_lens=lens)
    assert o.shape == q.shape and o.dtype == dtype
    # the reference is the PyTorch path of the switch (SDPA on an explicit mask), in fp32 on the rounded inputs
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    o_ref = nn.attention_reference(q32, k32, v32, causal=causal, softmax_scale=scale, kv_lens=lens)
    fwd_tol, bwd_tol = TOL[dtype]
    _close(o, o_ref, fwd_tol, "o")
    do = torch.randn(o.shape, generator=g).to(DEVICE, dtype)
    grads = torch.autograd.grad(o, (q, k, v), do)
    refs = torch.autograd.grad(o_ref, (q32, k32, v32), do.float())
    for name, a, b in zip(("dq", "dk", "dv"), grads, refs):
        assert a.shape == b.shape and a.dtype == dtype
        _close(a, b, (bwd_tol[0] * max(1.0, b.abs().max().item()), bwd_tol[1]), name)


# (B, Hq, Hkv, Tq, Tk, D, causal, kv_lens): lengths that are not block multiples, decode (Tq=1 < Tk),
# bottom-right causal (Tq < Tk), Tq > Tk (its first rows see no key: they attend to all keys, like the reference),
# GQA groups 1/2/4, right padding including a length-0 row
CASES = [
    (1, 2, 2, 37, 37, 16, True, None),
    (2, 4, 1, 37, 37, 64, False, None),
    (1, 4, 2, 1, 257, 16, True, None),
    (2, 2, 1, 37, 130, 16, True, [130, 41]),
    (2, 4, 4, 130, 37, 16, True, [0, 20]),
    (2, 2, 2, 130, 130, 16, False, [77, 130]),
    (1, 2, 1, 257, 257, 16, True, None),
    (1, 4, 1, 130, 130, 64, True, [100]),
]
SLOW_CASES = [
    (2, 4, 2, 257, 257, 64, True, [257, 200]),
    (1, 4, 4, 257, 130, 64, False, None),
    (2, 8, 2, 130, 257, 16, True, [1, 257]),
    (1, 4, 1, 1, 37, 64, False, [30]),
    (1, 2, 2, 37, 1, 16, True, None),
    (1, 2, 1, 257, 37, 64, False, [36]),
]


def _case_id(c):
    B, Hq, Hkv, Tq, Tk, D, causal, lens = c
    return f"B{B}-H{Hq}/{Hkv}-T{Tq}x{Tk}-D{D}-{'causal' if causal else 'full'}" + ("-lens" if lens else "")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_flash_attention_matches_reference(case, dtype):
    _check_attention(*case, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=[_case_id(c) for c in SLOW_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_flash_attention_matches_reference_more_shapes(case, dtype):
    _check_attention(*case, dtype)


def test_flash_attention_strided_inputs_custom_scale_odd_head_dim():
    # q/k/v as transposed views of (B, T, H, D) projections, a non-default scale, D = 24 (padded to 32 inside)
    _check_attention(2, 4, 2, 37, 50, 24, True, [50, 9], torch.float32, scale=0.3, transposed=True)


@pytest.mark.parametrize("blocks", [(16, 16), (64, 32)])
def test_flash_attention_other_tile_shapes(monkeypatch, blocks):
    # the masked/unmasked loop split must not depend on the tile sizes (square, and BLOCK_M > BLOCK_N)
    monkeypatch.setattr(fa, "FIXED_BLOCKS", {"fwd": blocks, "dkdv": blocks[::-1], "dq": blocks})
    _check_attention(2, 2, 1, 70, 100, 16, True, [100, 45], torch.float32, seed=1)


def test_flash_attention_reference_agrees_with_switch_reference():
    # the file's explicit-softmax reference and nanoaudio.nn's SDPA path define the same masks, fully masked rows too
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    for causal in (True, False):
        for lens in (None, torch.tensor([0, 4])):
            torch.testing.assert_close(
                fa.attention_reference(q, k, v, causal, None, lens), nn.attention_reference(q, k, v, causal, None, lens)
            )


def test_flash_attention_rejects_unsupported_shapes():
    q = torch.randn(1, 3, 4, 16, device=DEVICE)
    k = torch.randn(1, 2, 4, 16, device=DEVICE)
    assert not fa.supports(q, k, k)
    with pytest.raises(ValueError, match="Hq % Hkv"):
        fa.flash_attention(q, k, k)
    assert not fa.supports(torch.randn(1, 2, 4, 512), torch.randn(1, 2, 4, 512), torch.randn(1, 2, 4, 512))


# -----------------------------------------------------------------------------
# the switch in nanoaudio/nn.py


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("mode", ["0", "1"])
def test_switch_routes_rms_norm(monkeypatch, mode):
    monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
    calls = _spy(monkeypatch, rn, "rms_norm")
    norm = nn.RMSNorm(77, eps=1e-5).to(DEVICE)
    x, r = torch.randn(2, 3, 77, device=DEVICE), torch.randn(2, 3, 77, device=DEVICE)
    y, h = norm(x, residual=r)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(y, nn.rms_norm_reference(x + r, norm.weight, 1e-5))
    torch.testing.assert_close(norm(x), nn.rms_norm_reference(x, norm.weight, 1e-5))
    assert len(calls) == (2 if mode == "1" else 0)
    # rows longer than the kernel's limit always take the PyTorch path
    long = torch.randn(2, rn.MAX_N + 8, device=DEVICE)
    torch.testing.assert_close(nn.rms_norm(long, torch.ones(rn.MAX_N + 8, device=DEVICE), 1e-6),
                               nn.rms_norm_reference(long, torch.ones(rn.MAX_N + 8, device=DEVICE), 1e-6))
    assert len(calls) == (2 if mode == "1" else 0)


@pytest.mark.parametrize("mode", ["0", "1"])
def test_switch_routes_attention(monkeypatch, mode):
    monkeypatch.setenv("NANOAUDIO_KERNELS", mode)
    calls = _spy(monkeypatch, fa, "flash_attention")
    q = torch.randn(2, 4, 5, 16, device=DEVICE)
    k, v = torch.randn(2, 2, 7, 16, device=DEVICE), torch.randn(2, 2, 7, 16, device=DEVICE)
    lens = torch.tensor([7, 3], device=DEVICE)
    out = nn.attention(q, k, v, causal=True, kv_lens=lens)
    assert len(calls) == (1 if mode == "1" else 0)
    torch.testing.assert_close(out, nn.attention_reference(q, k, v, causal=True, kv_lens=lens), atol=2e-5, rtol=1e-4)
    # an arbitrary key mask (left padding) and an unsupported head dim always take the PyTorch path
    nn.attention(q, k, v, mask=torch.ones(2, 7, dtype=torch.bool, device=DEVICE))
    big = torch.randn(1, 1, 3, 160, device=DEVICE)
    nn.attention(big, big, big)
    assert len(calls) == (1 if mode == "1" else 0)


def test_cpu_bf16_autocast_attention_runs_in_fp32(monkeypatch):
    # train.py --precision bf16 on CPU: attention upcasts (faster backward there, more precise); its output,
    # and its gradients, are those of fp32 attention on the same bf16 inputs
    monkeypatch.setenv("NANOAUDIO_KERNELS", "0")
    q, k, v = (torch.randn(2, 4, 9, 16).bfloat16().requires_grad_() for _ in range(3))
    lens = torch.tensor([9, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nn.attention(q, k, v, causal=False, kv_lens=lens)
    out.float().sum().backward()
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = nn.attention_reference(q32, k32, v32, causal=False, kv_lens=lens)
    ref.bfloat16().float().sum().backward()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())
    for t, t32 in ((q, q32), (k, k32), (v, v32)):
        torch.testing.assert_close(t.grad, t32.grad.bfloat16(), rtol=0, atol=0)
    # without autocast, bf16 stays bf16 (the models' bf16 comparisons with transformers)
    plain = nn.attention(q.detach(), k.detach(), v.detach(), causal=False, kv_lens=lens)
    assert not torch.equal(plain, ref.bfloat16())


def test_importing_nanoaudio_does_not_import_triton():
    code = "import sys, nanoaudio, nanoaudio.nn, nanoaudio.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "NANOAUDIO_KERNELS": "auto"})


def test_kernels_compile_for_hopper():
    # the GPU compiler (tensor-core lowering, register and shared-memory limits) never runs under the interpreter:
    # compile one config of every kernel for sm_90 with the ptxas bundled in Triton's wheel (no GPU needed)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "nanoaudio.kernels.compile_check", "--arch", "90", "--head-dim", "128", "--quick"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("regs") == 8, result.stdout  # 4 attention kernels, RMSNorm fwd/bwd at N=128, 4096


# -----------------------------------------------------------------------------
# GPU only: bf16, head dim 128, long odd lengths, the autotuned launch


@gpu_only
@pytest.mark.parametrize("N", [2048, 4096, 6400, 8192])
def test_rms_norm_bf16_gpu(N):
    _check_rms_norm((8, 1021), N, torch.bfloat16, residual=True)


@gpu_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", [(2, 8, 2, 1500, 1500, 128, [1500, 749]), (2, 8, 8, 749, 1500, 64, None),
                                  (1, 16, 4, 1, 4097, 128, None), (1, 4, 4, 4096, 4096, 128, None)])
def test_flash_attention_bf16_gpu(monkeypatch, case, causal):
    monkeypatch.setattr(fa, "AUTOTUNE", True)
    B, Hq, Hkv, Tq, Tk, D, lens = case
    _check_attention(B, Hq, Hkv, Tq, Tk, D, causal, lens, torch.bfloat16)
