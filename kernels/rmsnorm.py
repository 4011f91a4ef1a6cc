"""Fused RMSNorm (optionally with the residual add in front of it), forward and backward, in Triton.

    h = x + residual                      (only when a residual is given; h is the new residual stream)
    y = weight * (h * rsqrt(mean(h^2) + eps)).to(dtype)

Features
- Hugging Face Qwen3RMSNorm/LlamaRMSNorm semantics to the bit: statistics and normalization in fp32, cast to the
  input dtype, THEN multiply by the weight (the product is rounded once, exactly like PyTorch's mixed-dtype multiply).
- Any row length up to 8192 (1, 77, 128 for Qwen3's per-head q_norm/k_norm, 2048, 4096, 6400 for the projector,
  8192) and any leading dims: the input is viewed as (M rows, N features). Longer rows take the PyTorch path
  (nanoaudio/nn.py checks MAX_N).
- Backward for x (and residual) and weight. dweight is reduced deterministically: every program of the backward
  grid sums dy * x_hat over its own slice of rows into one row of a (G, N) fp32 buffer, then one torch.sum over G
  (fixed order) finishes it. No atomics, so the same input gives bit-identical gradients run after run.
- No autotuning on purpose: block sizes come from a heuristic on N, so the summation order (and therefore every
  bit of the output and of dweight) is the same in every process, not just within one.

Memory traffic (why fuse). The kernel is purely bandwidth-bound: ~4 flops per element against 2 bytes moved per
element per tensor in bf16. Per element, in bytes (bf16 activations):
- PyTorch eager runs x.float(), pow, mean, add+rsqrt, mul, .to(bf16), mul(weight) as separate kernels: about
  2+4 (upcast) +4+4 (pow) +4 (mean) +4+4+4 (mul) +4+2 (downcast) +2+2 (weight) = 44 B read+written.
- This kernel reads x once and writes y once: 4 B (8 B with the residual: read x and residual, write h and y).
  The per-row statistic (rstd, 4 B per row) is saved for the backward so it never re-reduces the forward.
- Backward: reads dy, h and writes dx (6 B; +2 B to read d(new residual) when it is used downstream), plus a
  (G, N) fp32 partial buffer for dweight whose size does not grow with the number of rows.
So the fused forward moves ~10x fewer bytes than eager; the roofline is "time = bytes / HBM bandwidth", which the
benchmark (tests/bench/test_bench_kernels.py) reports as a fraction of the GPU's peak.

References: Zhang & Sennrich 2019 "Root Mean Square Layer Normalization"; Hugging Face modeling_qwen3.py
(Qwen3RMSNorm); Triton tutorial 05-layer-norm (the partial-sum dweight idea, here made atomic-free).
"""

import torch
import triton
import triton.language as tl

MAX_N = 8192  # a whole row lives in one program's registers; at 16384 the backward spills (compile_check)

# -----------------------------------------------------------------------------
# PyTorch reference (the definition the kernel must reproduce)


def rms_norm_reference(x, weight, eps, residual=None):
    if residual is not None:
        x = x + residual
    dtype = x.dtype
    xf = x.float()
    y = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return y if residual is None else (y, x)


# -----------------------------------------------------------------------------
# kernels


@triton.jit
def _rmsnorm_fwd(
    X,  # pointer to the input, (M, N), rows `stride_x` elements apart, columns contiguous
    R,  # pointer to the residual (M, N) (same layout rules as X); unused unless HAS_RESIDUAL
    W,  # pointer to the weight, (N,)
    Y,  # pointer to the output, (M, N) contiguous, dtype = promote(x.dtype, weight.dtype)
    H,  # pointer to the new residual stream x + residual, (M, N) contiguous; unused unless HAS_RESIDUAL
    RSTD,  # pointer to the per-row 1/rms in fp32, (M,), saved for the backward
    stride_x,  # elements between consecutive rows of X
    stride_r,  # elements between consecutive rows of R
    M,  # number of rows
    N,  # number of features per row
    eps,  # added to mean(x^2) before the rsqrt
    HAS_RESIDUAL: tl.constexpr,  # fuse h = x + residual in front of the norm (and store h)
    BLOCK_M: tl.constexpr,  # rows per program (several short rows share a program so tiles stay ~4K elements)
    BLOCK_N: tl.constexpr,  # next power of two >= N; the whole row lives in registers
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask = (rows[:, None] < M) & (cols[None, :] < N)  # (BLOCK_M, BLOCK_N)
    rows64 = rows.to(tl.int64)  # row * stride overflows int32 past 2^31 elements
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # round the sum to the activation dtype first: the next layer sees (and the reference computes) that value
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(H + rows64[:, None] * N + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    # padded columns are 0, so they add nothing to the sum; divide by the true N
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / N + eps)  # (BLOCK_M,)
    tl.store(RSTD + rows, rstd, mask=rows < M)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)  # (BLOCK_N,)
    # HF order: normalize in fp32, round to the input dtype, then one (exact in fp32) product with the weight
    x_hat = (xf * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
    y = x_hat * w[None, :]
    tl.store(Y + rows64[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd(
    DY,  # pointer to the gradient of y, (M, N), rows `stride_dy` apart
    DH,  # pointer to the gradient of the new residual h, (M, N) contiguous; unused unless HAS_DH
    X,  # pointer to the normalized input (h when a residual was fused), (M, N), rows `stride_x` apart
    W,  # pointer to the weight, (N,)
    RSTD,  # pointer to the per-row 1/rms saved by the forward, (M,) fp32
    DX,  # pointer to the gradient of x (= of residual too), (M, N) contiguous, in x's dtype
    DW_PARTIAL,  # pointer to a (G, N) fp32 buffer: row g = sum of dy * x_hat over program g's rows
    stride_dy,  # elements between consecutive rows of DY
    stride_x,  # elements between consecutive rows of X
    M,  # number of rows
    N,  # number of features per row
    rows_per_program,  # program g handles rows [g * rows_per_program, (g + 1) * rows_per_program), a BLOCK_M multiple
    HAS_DH: tl.constexpr,  # add the gradient flowing straight down the residual stream
    COMPUTE_DW: tl.constexpr,  # False when the weight is frozen (LoRA fine-tuning): skip the partial sums
    BLOCK_M: tl.constexpr,  # rows per inner step
    BLOCK_N: tl.constexpr,  # next power of two >= N
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # summed over rows once, at the end
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < row_end) & (cols[None, :] < N)
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rows < row_end, other=0.0)
        x_hat = x * rstd[:, None]
        if COMPUTE_DW:
            # the forward multiplied the weight by x_hat rounded to the input dtype; PyTorch's autograd uses that value
            dw += dy * x_hat.to(X.dtype.element_ty).to(tl.float32)
        # y = w * x_hat (the rounding to the input dtype passes the gradient straight through), x_hat = x * rstd:
        # dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * w, all in fp32
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)  # re-read from L1/L2: frees registers
        g = dy * w[None, :]
        c = tl.sum(g * x_hat, axis=1) / N  # (BLOCK_M,)
        dx = rstd[:, None] * (g - x_hat * c[:, None])
        if HAS_DH:
            dx += tl.load(DH + rows64[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows64[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + pid * N + cols, tl.sum(dw, axis=0), mask=cols < N)


# -----------------------------------------------------------------------------
# launcher


def _launch_config(N: int):
    """Deterministic tile shape for rows of length N: (BLOCK_M, BLOCK_N, forward warps, backward warps)."""
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = max(1, 4096 // BLOCK_N)  # short rows (q_norm's 128) share a program: tiles of ~4K elements
    tile = BLOCK_M * BLOCK_N
    # forward: ~16 elements per thread (8192 -> 16 warps, 4096 -> 8). The backward keeps ~6 fp32 values live per
    # element, so it gets twice the threads (8 elements each); compiled for sm_90 that stays under 128 registers
    # without spills up to N = 8192 (a few bytes spill with the fused residual gradient).
    return BLOCK_M, BLOCK_N, min(max(tile // 512, 1), 16), min(max(tile // 256, 1), 16)


def _num_programs_bwd(device: torch.device) -> int:
    # a fixed count per device (never per run), so the dweight summation order is reproducible
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the CPU interpreter: few programs, many rows each


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, residual):
        N = x.shape[-1]
        if N > MAX_N or weight.shape != (N,):
            raise ValueError(f"rms_norm: rows of {N} features need a ({N},) weight and N <= {MAX_N}")
        x2 = x.reshape(-1, N)  # (..., N) -> (M, N), a view when possible
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        M = x2.shape[0]
        ctx.shape = x.shape
        y = torch.empty((M, N), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        if residual is not None:
            r2 = residual.reshape(-1, N)
            if r2.stride(-1) != 1:
                r2 = r2.contiguous()
            h = torch.empty((M, N), dtype=x.dtype, device=x.device)
        else:
            r2, h = x2, x2  # placeholders, never touched
        BLOCK_M, BLOCK_N, num_warps, _ = _launch_config(N)
        weight = weight.contiguous()
        _rmsnorm_fwd[(triton.cdiv(M, BLOCK_M),)](
            x2, r2, weight, y, h, rstd, x2.stride(0), r2.stride(0), M, N, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )  # fmt: skip
        ctx.save_for_backward(h, weight, rstd)
        ctx.has_residual = residual is not None
        ctx.set_materialize_grads(False)
        y = y.view(x.shape)
        return (y, h.view(x.shape)) if residual is not None else y

    @staticmethod
    def backward(ctx, dy, dh=None):
        h, weight, rstd = ctx.saved_tensors
        M, N = h.shape
        if dy is None:
            dy = torch.zeros((M, N), dtype=h.dtype, device=h.device)
        dy = dy.reshape(M, N)
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        if dh is not None:
            dh = dh.reshape(M, N).contiguous()
        dx = torch.empty((M, N), dtype=h.dtype, device=h.device)
        BLOCK_M, BLOCK_N, _, num_warps = _launch_config(N)
        G = max(1, min(_num_programs_bwd(h.device), triton.cdiv(M, BLOCK_M)))
        rows_per_program = triton.cdiv(triton.cdiv(M, G), BLOCK_M) * BLOCK_M
        G = triton.cdiv(M, rows_per_program)
        compute_dw = ctx.needs_input_grad[1]
        dw_partial = torch.empty((G, N) if compute_dw else (1,), dtype=torch.float32, device=h.device)
        _rmsnorm_bwd[(G,)](
            dy, dh if dh is not None else dy, h, weight, rstd, dx, dw_partial,
            dy.stride(0), h.stride(0), M, N, rows_per_program,
            HAS_DH=dh is not None, COMPUTE_DW=compute_dw, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )  # fmt: skip
        # (G, N) -> (N,): torch.sum over a fixed G reduces in a fixed order, so dweight is bit-reproducible
        dw = dw_partial.sum(0).to(weight.dtype) if compute_dw else None
        dx = dx.view(ctx.shape)
        return dx, dw, None, dx if ctx.has_residual else None


def rms_norm(x, weight, eps, residual=None):
    """y = RMSNorm(x) or, with a residual, (RMSNorm(x + residual), x + residual). x (..., N), weight (N,)."""
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rms_norm: residual {tuple(residual.shape)} {residual.dtype} must have the shape and dtype "
                         f"of x {tuple(x.shape)} {x.dtype}")
    if x.numel() == 0:  # no rows: nothing to launch
        return rms_norm_reference(x, weight, eps, residual)
    return RMSNormFunction.apply(x, weight, eps, residual)
