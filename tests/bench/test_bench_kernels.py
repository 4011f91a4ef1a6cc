"""Benchmarks of the Triton kernels against PyTorch: python -m pytest tests/bench/test_bench_kernels.py

Prints four tables (the tables show without -s). Needs a CUDA GPU with compute capability >= 8.0; elsewhere every
benchmark skips with the reason. Timings come from triton.testing.do_bench (median of many runs, L2 flushed);
no timing is asserted, but every kernel is checked against its reference before it is timed (llm.c style).

- RMSNorm, bf16, rows 4096..32768 x hidden 2048/4096/6400/8192: effective GB/s = the bytes the computation must
  move (fwd: read x, write y; bwd: read dy and x, write dx) / time, and that as a fraction of the GPU's HBM
  bandwidth, for the Triton kernel, PyTorch eager (nanoaudio's reference) and torch.compile of the same reference.
  Target on an H100: fwd+bwd >= 85 % of HBM bandwidth.
- Flash attention, bf16, B=4, H=32 (MHA) and 32/8 (GQA), D=128 and 64, T=512..8192, causal and not: TFLOP/s
  (4*B*H*T^2*D for the forward, x2.5 more for the backward, halved when causal) and the fraction of the GPU's dense
  bf16 peak, for the Triton kernel, SDPA's flash backend and eager attention (materialized softmax).
  Target on an H100: forward >= 1.0x SDPA flash at T=8192, D=128, causal.
"""

import functools

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: the kernel benchmarks time GPU kernels", allow_module_level=True)
if torch.cuda.get_device_capability() < (8, 0):
    pytest.skip("GPU older than sm_80: the kernels need bf16 tensor cores", allow_module_level=True)

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import nanoaudio.kernels.flash_attention as fa  # noqa: E402
import nanoaudio.kernels.rmsnorm as rn  # noqa: E402
from nanoaudio import nn  # noqa: E402

# Datasheet peaks: (HBM GB/s, dense bf16 tensor-core TFLOP/s), matched against torch.cuda.get_device_name()
PEAKS = [
    ("H200", (4800, 989)),
    ("H100 PCIe", (2000, 756)),
    ("H100 NVL", (3900, 835)),
    ("H100", (3350, 989)),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-40GB", (1555, 312)),
    ("A100-PCIE-40GB", (1555, 312)),
    ("A100", (2039, 312)),  # 80 GB SXM and PCIe
    ("L40S", (864, 362)),
    ("A10G", (600, 70)),
    ("L4", (300, 121)),
]


def _peaks():
    name = torch.cuda.get_device_name()
    for key, peak in PEAKS:
        if key in name:
            return name, peak
    return name, (None, None)  # unknown GPU: the fraction columns print "-"


def _frac(x, peak):
    return f"{x / peak:6.1%}" if peak else "     -"


def _print_table(title, header, rows):
    name, _ = _peaks()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"\n{title} on {name}, torch {torch.__version__}, triton {triton.__version__}"]
    lines.append("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    print("\n".join(lines))


def _fwd_bwd(f, args, dy):
    f(*args).backward(dy)


def _time_ms(fn, grad_to_none=None):
    try:
        return do_bench(fn, grad_to_none=grad_to_none)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


# -----------------------------------------------------------------------------
# RMSNorm

RMS_ROWS = [4096, 8192, 16384, 32768]
RMS_HIDDEN = [2048, 4096, 6400, 8192]


def _rms_impls():
    eager = nn.rms_norm_reference
    compiled = torch.compile(nn.rms_norm_reference)
    return {"triton": rn.rms_norm, "eager": eager, "compile": compiled}


def _bench_rms_norm(capsys, backward):
    _, (bw, _) = _peaks()
    impls = _rms_impls()
    rows = []
    for M in RMS_ROWS:
        for N in RMS_HIDDEN:
            x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
            w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16).requires_grad_(backward)
            dy = torch.randn_like(x)
            torch.testing.assert_close(rn.rms_norm(x, w, 1e-6), nn.rms_norm_reference(x, w, 1e-6), atol=2e-2, rtol=2e-2)
            # bytes the computation has to move: fwd reads x, writes y; bwd reads dy and x, writes dx (weight ~0)
            nbytes = M * N * 2 * (2 + (3 if backward else 0))
            row = [M, N]
            for f in impls.values():
                if backward:
                    ms = _time_ms(functools.partial(_fwd_bwd, f, (x, w, 1e-6), dy), grad_to_none=[x, w])
                else:
                    ms = _time_ms(functools.partial(f, x, w, 1e-6))
                gbs = nbytes / (ms * 1e-3) / 1e9 if ms is not None else None
                row += [f"{gbs:7.0f}", _frac(gbs, bw)] if gbs is not None else ["OOM", "-"]
            rows.append(row)
            del x, w, dy
    header = ["rows", "hidden"] + [f"{k} {u}" for k in impls for u in ("GB/s", "%HBM")]
    with capsys.disabled():
        _print_table(f"RMSNorm bf16 {'fwd+bwd' if backward else 'fwd'} (HBM peak {bw} GB/s)", header, rows)


def test_bench_rms_norm_forward(capsys):
    _bench_rms_norm(capsys, backward=False)


def test_bench_rms_norm_forward_backward(capsys):
    _bench_rms_norm(capsys, backward=True)


# -----------------------------------------------------------------------------
# flash attention

ATTN_B = 4
ATTN_HEADS = [(32, 32), (32, 8)]  # (Hq, Hkv): MHA and GQA
ATTN_D = [128, 64]
ATTN_T = [512, 1024, 2048, 4096, 8192]
EAGER_MAX_T = 4096  # eager attention keeps B*H*T^2 scores and probabilities: 17 GB each at T=8192


def _sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        if q.shape[1] != k.shape[1]:
            try:
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            except (RuntimeError, TypeError):  # older flash backends lack GQA: repeat K/V (its cost is counted)
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _eager(q, k, v, causal):
    return fa.attention_reference(q, k, v, causal)  # explicit softmax(QK^T) V, S and P in HBM


def _bench_attention(capsys, backward):
    _, (_, peak) = _peaks()
    impls = {"triton": lambda q, k, v, c: fa.flash_attention(q, k, v, causal=c), "sdpa-flash": _sdpa_flash,
             "eager": _eager}  # fmt: skip
    rows = []
    for Hq, Hkv in ATTN_HEADS:
        for D in ATTN_D:
            for causal in (True, False):
                for T in ATTN_T:
                    q, k, v = (torch.randn(ATTN_B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                               for H in (Hq, Hkv, Hkv))
                    do = torch.randn_like(q)
                    if T <= 1024:  # validate before timing (small T keeps the fp32 reference cheap)
                        ref = nn.attention_reference(q.float(), k.float(), v.float(), causal=causal)
                        torch.testing.assert_close(fa.flash_attention(q, k, v, causal=causal).float(), ref,
                                                   atol=2e-2, rtol=2e-2)
                    flops = 4 * ATTN_B * Hq * T * T * D * (0.5 if causal else 1.0) * (3.5 if backward else 1.0)
                    row = [f"{Hq}/{Hkv}", D, "causal" if causal else "full", T]
                    for name, f in impls.items():
                        if name == "eager" and T > EAGER_MAX_T:
                            row += ["skip", "-"]
                            continue
                        if backward:
                            ms = _time_ms(functools.partial(_fwd_bwd, f, (q, k, v, causal), do), grad_to_none=[q, k, v])
                        else:
                            ms = _time_ms(functools.partial(f, q, k, v, causal))
                        tfs = flops / (ms * 1e-3) / 1e12 if ms is not None else None
                        row += [f"{tfs:6.1f}", _frac(tfs, peak)] if tfs is not None else ["OOM", "-"]
                    rows.append(row)
                    del q, k, v, do
    header = ["Hq/Hkv", "D", "mask", "T"] + [f"{k} {u}" for k in impls for u in ("TFLOP/s", "%peak")]
    title = f"flash attention bf16 B={ATTN_B} {'fwd+bwd' if backward else 'fwd'} (dense bf16 peak {peak} TFLOP/s)"
    with capsys.disabled():
        _print_table(title, header, rows)


def test_bench_flash_attention_forward(capsys):
    _bench_attention(capsys, backward=False)


def test_bench_flash_attention_forward_backward(capsys):
    _bench_attention(capsys, backward=True)

