"""Flash attention (FlashAttention-2 schedule), forward and backward, in Triton.

    O = softmax(Q K^T * scale + mask) V        q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D)

Features
- Online softmax in the exp2 domain (scores are pre-multiplied by scale * log2(e)) with a running max and sum;
  the per-row logsumexp (in log2 units) is saved for the backward, which recomputes P instead of storing it.
- One key-limit rule covers every mask: query row i may attend to keys [0, lim_i) with
      lim_i = min(Tk - Tq + i + 1 if causal else Tk, kv_len[b]),
  i.e. causal aligned to the bottom right (a KV cache with Tq < Tk) and right padding (kv_lens). A row with
  lim_i <= 0 (kv_len 0, or the first Tq - Tk rows when causal with Tq > Tk) has no key at all; like
  nanoaudio.nn.attention_reference it then attends to every key (its output is padding, but it is finite).
- Grouped-query attention (Hq a multiple of Hkv) reads each K/V head straight from memory for all its query heads;
  the dK/dV program of a K/V head loops over the group's query heads, so dK/dV are summed in registers.
- Any Tq, Tk (masked tails); any head dim up to 128, padded to the next power of two >= 16 with masked loads
  (hubert-xlarge's 80 runs as 128); fp16/bf16 with fp32 accumulation, and fp32 (full-precision dots) for tests.
- Backward in three kernels: delta = rowsum(dO * O); dK/dV (one program per key block, looping over query
  blocks); dQ (one program per query block, looping over key blocks). No atomics: results are deterministic.
- Every loop is split in an unmasked part (full tiles, no tl.where) and a masked part (the diagonal, the padding
  and the ragged tail), so the causal mask costs only the few tiles it actually cuts.

Memory traffic (why fuse). Eager attention writes S = QK^T and P = softmax(S) to HBM: with B*H = 128, T = 8192
that is 2 * 128 * 8192^2 * 2 B = 34 GB per forward, 32x the 1.07 GB of Q, K, V and O together. Flash
attention keeps each (BLOCK_M, BLOCK_N) tile of S and P in registers and reads K/V once per query block, so traffic is
O(B*H*T*D * T/BLOCK_M) and the kernel is bound by tensor-core FLOPs (4*B*H*Tq*Tk*D forward, x0.5 causal), not HBM.
The backward recomputes P from the saved logsumexp (4 bytes per row) instead of reading a T x T matrix.

References: Dao et al. 2022 "FlashAttention", Dao 2023 "FlashAttention-2"; Triton tutorial 06-fused-attention
(schedule, exp2 trick, preprocess/dkdv/dq split); the mask conventions of nanoaudio/nn.py.
"""

import functools
import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)): exp2 is the hardware's ex2; log2(e) folds into the scale

# -----------------------------------------------------------------------------
# PyTorch reference (explicit, fp32-friendly; the definition the kernels must reproduce)


def key_limits(Tq, Tk, causal, kv_lens=None, B=1, device=None):
    """(B, Tq) int: query row i may attend to keys [0, lim). Fully masked rows (lim <= 0) get all Tk keys."""
    i = torch.arange(Tq, device=device)
    lim = (Tk - Tq + i + 1).clamp(max=Tk) if causal else torch.full((Tq,), Tk, device=device)
    lim = lim[None].expand(B, Tq)
    if kv_lens is not None:
        lim = torch.minimum(lim, kv_lens.to(device).long()[:, None])
    return torch.where(lim <= 0, Tk, lim)


def attention_reference(q, k, v, causal=True, softmax_scale=None, kv_lens=None):
    """Materialized softmax attention, q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    k = k.repeat_interleave(Hq // Hkv, dim=1)  # (B, Hkv, Tk, D) -> (B, Hq, Tk, D)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale  # (B, Hq, Tq, Tk)
    lim = key_limits(Tq, Tk, causal, kv_lens, B, q.device)  # (B, Tq)
    allowed = torch.arange(Tk, device=q.device)[None, None, :] < lim[:, :, None]  # (B, Tq, Tk)
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# -----------------------------------------------------------------------------
# kernels: shared pieces


@triton.jit
def _key_limit(rows, Tq, Tk, kv_len, CAUSAL: tl.constexpr):
    # the number of keys each query row may see (module docstring); rows past Tq get a harmless valid value
    lim = tl.full(rows.shape, Tk, tl.int32)
    if CAUSAL:
        lim = tl.minimum(rows + (Tk - Tq + 1), Tk)
    lim = tl.minimum(lim, kv_len)
    return tl.where(lim <= 0, Tk, lim)


@triton.jit
def _kv_len(KV_LENS, b, Tk, HAS_KV_LENS: tl.constexpr):
    if HAS_KV_LENS:
        return tl.minimum(tl.load(KV_LENS + b), Tk)
    return Tk


# -----------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, K, V, offs_n0, offs_d, start_n, stride_kn, stride_vn, Tk, lim, qk_scale,
              MASKED: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    # one (BLOCK_M, BLOCK_N) tile of the online softmax: rescale the running sum/output by exp2(m_old - m_new)
    offs_n = start_n + offs_n0
    # the head-dim mask is constant along each row, so it does not break vectorized loads (and is all-true
    # when D is a power of two); the key mask is only needed on the tiles that cross Tk
    kv_mask = offs_d[None, :] < D
    if MASKED:
        kv_mask = (offs_n[:, None] < Tk) & kv_mask
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (BLOCK_M, BLOCK_N) raw scores
    if MASKED:
        s = tl.where(offs_n[None, :] < lim[:, None], s, float("-inf"))
    # scale inside one fma (the scale is > 0, so the max commutes with it). Every row sees key 0 in its first
    # tile, so m_new is finite and exp2(-inf - m_new) = 0 for masked keys.
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)  # log2 units
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(tl.fma(s, qk_scale, -m_new[:, None]))
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(
    Q, K, V,  # pointers to q (B, Hq, Tq, D), k and v (B, Hkv, Tk, D), last dim contiguous
    O,  # pointer to the output (B, Hq, Tq, D), last dim contiguous
    LSE,  # pointer to the per-row logsumexp in log2 units, (B, Hq, Tq) fp32 contiguous, saved for the backward
    KV_LENS,  # pointer to (B,) int32 valid key counts; unused unless HAS_KV_LENS
    stride_qb, stride_qh, stride_qt,  # element strides of q over batch, head, token
    stride_kb, stride_kh, stride_kt,  # element strides of k
    stride_vb, stride_vh, stride_vt,  # element strides of v
    stride_ob, stride_oh, stride_ot,  # element strides of o
    Hq,  # query heads
    Tq, Tk,  # query and key lengths
    TQ_BUCKET, TK_BUCKET,  # next powers of two of Tq and Tk: the autotuner's cache key (not used in the body)
    qk_scale,  # softmax_scale * log2(e)
    GROUP: tl.constexpr,  # Hq // Hkv query heads per K/V head (1 = plain multi-head attention)
    CAUSAL: tl.constexpr,  # bottom-right aligned causal mask
    HAS_KV_LENS: tl.constexpr,  # keys at positions >= kv_lens[b] are padding
    D: tl.constexpr,  # the true head dim
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16 (tl.dot and tl.arange need it)
    PREC: tl.constexpr,  # tl.dot input precision: "ieee" for fp32 inputs, "tf32" (ignored) for fp16/bf16
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop step
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP  # the K/V head this query head reads: no repeat_interleave in memory
    Q += b.to(tl.int64) * stride_qb + h * stride_qh
    K += b.to(tl.int64) * stride_kb + hk * stride_kh
    V += b.to(tl.int64) * stride_vb + hk * stride_vh
    O += b.to(tl.int64) * stride_ob + h * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)  # (BLOCK_M, D)

    kv_len = _kv_len(KV_LENS, b, Tk, HAS_KV_LENS)
    lim = _key_limit(offs_m, Tq, Tk, kv_len, CAUSAL)  # (BLOCK_M,)
    row_ok = offs_m < Tq
    # keys [0, lo) are visible to every row of this block (full tiles, no mask); keys [lo, hi) need the mask
    lo = (tl.min(tl.where(row_ok, lim, Tk)) // BLOCK_N) * BLOCK_N
    hi = tl.max(tl.where(row_ok, lim, 0))

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running sum of exp2(s - m_i) @ v
    for start_n in range(0, lo, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, offs_n0, offs_d, start_n, stride_kt, stride_vt, Tk, lim,
                                  qk_scale, False, D, PREC)
    for start_n in range(lo, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, offs_n0, offs_d, start_n, stride_kt, stride_vt, Tk, lim,
                                  qk_scale, True, D, PREC)

    acc = acc / l_i[:, None]
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    tl.store(O + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(O.dtype.element_ty), mask=q_mask)


# -----------------------------------------------------------------------------
# backward: delta = rowsum(dO * O), the softmax-Jacobian term shared by dK and dQ


@triton.jit
def _attn_bwd_delta(
    O, DO,  # pointers to o and do (B, Hq, Tq, D), last dim contiguous
    DELTA,  # pointer to the output (B, Hq, Tq) fp32 contiguous
    stride_ob, stride_oh, stride_ot,  # element strides of o
    stride_dob, stride_doh, stride_dot,  # element strides of do
    Hq, Tq,  # query heads and length
    D: tl.constexpr,  # head dim
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two
    BLOCK_M: tl.constexpr,  # rows per program
):
    bh = tl.program_id(1)
    b, h = bh // Hq, bh % Hq
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * Tq + offs_m, delta, mask=offs_m < Tq)


# -----------------------------------------------------------------------------
# backward: dK, dV. One program per (key block, batch, K/V head); loops over the group's query heads and blocks.


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, row_end, offs_n, offs_d, stride_qt, stride_dot,
               Tq, Tk, kv_len, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, D: tl.constexpr,
               PREC: tl.constexpr, BLOCK_M: tl.constexpr):
    # transposed tiles (keys along rows): sT = k q^T, pT = exp2(sT - lse), dV += pT dO, dK += dsT q
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < row_end
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    # rows outside [start of this phase, row_end) load q = dO = delta = 0, so they contribute exactly 0
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=mask, other=0.0)  # (BLOCK_M, D)
    do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :], mask=mask, other=0.0)  # (BLOCK_M, D)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    sT = tl.dot(k, tl.trans(q), input_precision=PREC)  # (BLOCK_N, BLOCK_M)
    pT = tl.math.exp2(tl.fma(sT, qk_scale, -lse[None, :]))
    if MASKED:
        lim = _key_limit(offs_m, Tq, Tk, kv_len, CAUSAL)
        pT = tl.where(offs_n[:, None] < lim[None, :], pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # (BLOCK_N, BLOCK_M)
    dsT = pT * (dpT - delta[None, :])  # softmax Jacobian; the softmax scale is applied once, at the end
    dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO,  # pointers to q, do (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D), last dim contiguous
    DK, DV,  # pointers to the outputs (B, Hkv, Tk, D), last dim contiguous (same strides as each other)
    LSE, DELTA,  # pointers to the saved logsumexp (log2 units) and delta, (B, Hq, Tq) fp32 contiguous
    KV_LENS,  # pointer to (B,) int32 valid key counts; unused unless HAS_KV_LENS
    stride_qb, stride_qh, stride_qt,  # element strides of q
    stride_kb, stride_kh, stride_kt,  # element strides of k
    stride_vb, stride_vh, stride_vt,  # element strides of v
    stride_dob, stride_doh, stride_dot,  # element strides of do
    stride_dkb, stride_dkh, stride_dkt,  # element strides of dk and dv
    Hkv,  # K/V heads
    Tq, Tk,  # query and key lengths
    TQ_BUCKET, TK_BUCKET,  # autotuner cache key (not used in the body)
    qk_scale,  # softmax_scale * log2(e)
    sm_scale,  # softmax_scale: dK = scale * dS^T Q
    GROUP: tl.constexpr,  # query heads per K/V head; their contributions are summed here
    CAUSAL: tl.constexpr,  # bottom-right aligned causal mask
    HAS_KV_LENS: tl.constexpr,  # right padding of the keys
    D: tl.constexpr,  # head dim
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16
    PREC: tl.constexpr,  # tl.dot input precision
    BLOCK_M: tl.constexpr,  # query rows per inner-loop step
    BLOCK_N: tl.constexpr,  # keys per program
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, hk = bh // Hkv, bh % Hkv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=kv_mask, other=0.0)  # (BLOCK_N, D), stays in registers for the whole program
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=kv_mask, other=0.0)
    kv_len = _kv_len(KV_LENS, b, Tk, HAS_KV_LENS)

    # Which query rows see this key block? (lim_i from the module docstring; all bounds are scalars)
    # - fully masked rows [0, fm_end) see every key: all rows when kv_len <= 0, else the first Tq - Tk when causal;
    # - other rows see it from i_start on (causal: Tk - Tq + i + 1 > start_n), and see ALL of it (no mask
    #   needed) from i_full on; a block that crosses kv_len or Tk is masked for every row.
    # Masked tiles cover [m_lo, i_full): i_start, or 0 when there are fully masked rows (rare; the rows between
    # them and i_start then just contribute zeros). Unmasked tiles cover [i_full, Tq).
    fm_end = 0
    if CAUSAL:
        fm_end = tl.minimum(tl.maximum(Tq - Tk, 0), Tq)
    fm_end = tl.where(kv_len <= 0, Tq, fm_end)
    i_start = fm_end
    i_full = fm_end
    if CAUSAL:
        i_start = tl.maximum(fm_end, start_n - (Tk - Tq))
        i_full = tl.maximum(i_start, start_n + BLOCK_N - (Tk - Tq) - 1)
    i_full = tl.where(start_n + BLOCK_N <= kv_len, tl.minimum(i_full, Tq), Tq)
    m_lo = tl.where(fm_end > 0, 0, tl.where(kv_len > start_n, tl.minimum(i_start, Tq), Tq))

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for g in range(GROUP):  # GQA: the query heads that share this K/V head
        h = hk * GROUP + g
        bhq = b * Hkv * GROUP + h  # flat (batch, query head) index into LSE and DELTA
        Qh = Q + b.to(tl.int64) * stride_qb + h * stride_qh
        DOh = DO + b.to(tl.int64) * stride_dob + h * stride_doh
        LSEh = LSE + bhq.to(tl.int64) * Tq
        DELTAh = DELTA + bhq.to(tl.int64) * Tq
        for start_m in range(m_lo, i_full, BLOCK_M):  # the diagonal / padded band: masked tiles
            dk, dv = _dkdv_tile(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, start_m, i_full, offs_n, offs_d, stride_qt,
                                stride_dot, Tq, Tk, kv_len, qk_scale, True, CAUSAL, D, PREC, BLOCK_M)
        for start_m in range(i_full, Tq, BLOCK_M):  # rows that see the whole key block: no mask
            dk, dv = _dkdv_tile(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, start_m, Tq, offs_n, offs_d, stride_qt,
                                stride_dot, Tq, Tk, kv_len, qk_scale, False, CAUSAL, D, PREC, BLOCK_M)

    out = b.to(tl.int64) * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


# -----------------------------------------------------------------------------
# backward: dQ. One program per (query block, batch, query head); loops over key blocks like the forward.


@triton.jit
def _dq_tile(dq, q, do, lse, delta, K, V, offs_n0, offs_d, start_n, stride_kt, stride_vt, Tk, lim, qk_scale,
             MASKED: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    offs_n = start_n + offs_n0
    kv_mask = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
    p = tl.math.exp2(tl.fma(s, qk_scale, -lse[:, None]))
    if MASKED:
        p = tl.where(offs_n[None, :] < lim[:, None], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO,  # pointers to q, do (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D), last dim contiguous
    DQ,  # pointer to the output (B, Hq, Tq, D), last dim contiguous
    LSE, DELTA,  # pointers to the saved logsumexp (log2 units) and delta, (B, Hq, Tq) fp32 contiguous
    KV_LENS,  # pointer to (B,) int32 valid key counts; unused unless HAS_KV_LENS
    stride_qb, stride_qh, stride_qt,  # element strides of q
    stride_kb, stride_kh, stride_kt,  # element strides of k
    stride_vb, stride_vh, stride_vt,  # element strides of v
    stride_dob, stride_doh, stride_dot,  # element strides of do
    stride_dqb, stride_dqh, stride_dqt,  # element strides of dq
    Hq,  # query heads
    Tq, Tk,  # query and key lengths
    TQ_BUCKET, TK_BUCKET,  # autotuner cache key (not used in the body)
    qk_scale,  # softmax_scale * log2(e)
    sm_scale,  # softmax_scale: dQ = scale * dS K
    GROUP: tl.constexpr,  # query heads per K/V head
    CAUSAL: tl.constexpr,  # bottom-right aligned causal mask
    HAS_KV_LENS: tl.constexpr,  # right padding of the keys
    D: tl.constexpr,  # head dim
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16
    PREC: tl.constexpr,  # tl.dot input precision
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop step
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP
    Q += b.to(tl.int64) * stride_qb + h * stride_qh
    DQ += b.to(tl.int64) * stride_dqb + h * stride_dqh
    DO += b.to(tl.int64) * stride_dob + h * stride_doh
    K += b.to(tl.int64) * stride_kb + hk * stride_kh
    V += b.to(tl.int64) * stride_vb + hk * stride_vh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :], mask=mask, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=0.0)

    kv_len = _kv_len(KV_LENS, b, Tk, HAS_KV_LENS)
    lim = _key_limit(offs_m, Tq, Tk, kv_len, CAUSAL)
    lo = (tl.min(tl.where(row_ok, lim, Tk)) // BLOCK_N) * BLOCK_N
    hi = tl.max(tl.where(row_ok, lim, 0))
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start_n in range(0, lo, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, K, V, offs_n0, offs_d, start_n, stride_kt, stride_vt, Tk, lim,
                      qk_scale, False, D, PREC)
    for start_n in range(lo, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, K, V, offs_n0, offs_d, start_n, stride_kt, stride_vt, Tk, lim,
                      qk_scale, True, D, PREC)
    tl.store(DQ + offs_m[:, None] * stride_dqt + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask)


# -----------------------------------------------------------------------------
# launchers: autotuned on CUDA, one small fixed tile shape under the CPU interpreter


def _configs(shapes):
    configs = []
    for m, n, w, s, max_d in shapes:
        c = triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        c.max_head_dim = max_d  # read by _prune: larger head dims spill registers with this tile
        configs.append(c)
    return configs


# (BLOCK_M, BLOCK_N, num_warps, num_stages, largest head dim). The forward wants a tall query tile (K/V stream past
# it), the dK/dV kernel a tall key tile (queries stream past; dK and dV accumulate in registers), the dQ kernel a
# tall query tile again. The lists keep the tiles that compile for sm_80 and sm_90 (D = 64 and 128, GQA, masks)
# with no or only a few bytes of register spills (`python -m nanoaudio.kernels.compile_check` reports them without a GPU).
_FWD_CONFIGS = _configs([(128, 64, 8, 3, 128), (128, 128, 8, 3, 128), (128, 128, 8, 2, 128), (128, 32, 8, 3, 128),
                         (128, 64, 4, 3, 64), (64, 64, 4, 3, 128), (64, 32, 4, 3, 128),
                         (16, 64, 4, 3, 128), (16, 128, 4, 3, 128)])
_DKDV_CONFIGS = _configs([(16, 64, 8, 3, 128), (32, 64, 8, 2, 128), (32, 64, 8, 3, 128), (16, 128, 8, 2, 128),
                          (16, 128, 8, 3, 128), (32, 128, 8, 2, 128), (32, 128, 8, 3, 64), (64, 64, 8, 3, 64),
                          (16, 64, 4, 3, 64)])
_DQ_CONFIGS = _configs([(128, 32, 8, 3, 128), (128, 32, 8, 4, 128), (128, 64, 8, 3, 128), (64, 64, 8, 3, 128),
                        (64, 32, 4, 4, 128), (64, 64, 4, 3, 64), (16, 64, 4, 3, 128), (16, 32, 4, 3, 128)])
# Tq and Tk change every decode step; keying on their power-of-two buckets tunes once per bucket, not per length
_KEY = ["TQ_BUCKET", "TK_BUCKET", "D", "GROUP", "CAUSAL", "HAS_KV_LENS"]


def _prune(configs, named_args, query_tile=True, **kwargs):
    # no tile that spills at this head dim, none much longer than the keys; where BLOCK_M is the program's query
    # tile (forward, dQ), 16-row tiles exactly when there are few queries (decode)
    tq, tk = named_args["TQ_BUCKET"], named_args["TK_BUCKET"]
    d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    keep = []
    for c in configs:
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if d <= c.max_head_dim and n <= max(32, tk) and (not query_tile or (m == 16) == (tq <= 16)):
            keep.append(c)
    return keep or configs[:1]


_attn_fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(_attn_fwd)
_attn_bwd_dkdv_tuned = triton.autotune(
    _DKDV_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": functools.partial(_prune, query_tile=False)}
)(_attn_bwd_dkdv)
_attn_bwd_dq_tuned = triton.autotune(_DQ_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(
    _attn_bwd_dq
)

# Under TRITON_INTERPRET=1 every tile op is a numpy call: small fixed tiles, unequal so that a mix-up of the
# query and key block sizes cannot hide. Also used on GPU when AUTOTUNE is False (quick parity tests: autotuning
# compiles every config for every new shape bucket). Entries are (BLOCK_M, BLOCK_N), each >= 16 for tl.dot.
AUTOTUNE = True
FIXED_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def _launch(tuned, plain, which, grid, args, kwargs, on_gpu):
    if on_gpu and AUTOTUNE:
        tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **kwargs)
    else:
        bm, bn = FIXED_BLOCKS[which]
        plain[grid(bm, bn)](*args, **kwargs, BLOCK_M=bm, BLOCK_N=bn)


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _common(q, k, causal, kv_lens):
    # the constexpr arguments shared by the attention kernels
    D = q.shape[3]
    return {
        "GROUP": q.shape[1] // k.shape[1], "CAUSAL": bool(causal), "HAS_KV_LENS": kv_lens is not None, "D": D,
        "BLOCK_D": max(16, triton.next_power_of_2(D)), "PREC": "ieee" if q.dtype == torch.float32 else "tf32",
    }  # fmt: skip


def _forward(q, k, v, causal, scale, kv_lens):
    B, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, Tq), dtype=torch.float32, device=q.device)
    args = (q, k, v, o, lse, kv_lens if kv_lens is not None else lse, *_strides(q), *_strides(k), *_strides(v),
            *_strides(o), Hq, Tq, Tk, triton.next_power_of_2(Tq), triton.next_power_of_2(Tk), scale * LOG2E)
    _launch(_attn_fwd_tuned, _attn_fwd, "fwd", lambda bm, bn: (triton.cdiv(Tq, bm), B * Hq), args,
            _common(q, k, causal, kv_lens), q.is_cuda)
    return o, lse


def _backward(do, q, k, v, o, lse, causal, scale, kv_lens):
    B, Hq, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    common = _common(q, k, causal, kv_lens)
    kv = kv_lens if kv_lens is not None else lse
    buckets = (triton.next_power_of_2(Tq), triton.next_power_of_2(Tk))
    delta = torch.empty_like(lse)
    _attn_bwd_delta[(triton.cdiv(Tq, 64), B * Hq)](
        o, do, delta, *_strides(o), *_strides(do), Hq, Tq, D=common["D"], BLOCK_D=common["BLOCK_D"], BLOCK_M=64
    )
    dk = torch.empty_like(k)
    dv = torch.empty_like(dk)  # same strides as dk: the kernel stores both with one set of strides
    args = (q, k, v, do, dk, dv, lse, delta, kv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dk), Hkv, Tq, Tk, *buckets, scale * LOG2E, scale)
    _launch(_attn_bwd_dkdv_tuned, _attn_bwd_dkdv, "dkdv", lambda bm, bn: (triton.cdiv(Tk, bn), B * Hkv), args,
            common, q.is_cuda)
    dq = torch.empty_like(q)
    args = (q, k, v, do, dq, lse, delta, kv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), Hq, Tq, Tk, *buckets, scale * LOG2E, scale)
    _launch(_attn_bwd_dq_tuned, _attn_bwd_dq, "dq", lambda bm, bn: (triton.cdiv(Tq, bm), B * Hq), args,
            common, q.is_cuda)
    return dq, dk, dv


def supports(q, k, v) -> bool:
    """Shapes and dtypes the kernels handle; nanoaudio.nn falls back to PyTorch for anything else."""
    return (
        q.dim() == 4 and k.dim() == 4 and k.shape == v.shape
        and q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3] and q.shape[1] % k.shape[1] == 0
        and q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and q.device == k.device == v.device and 1 <= q.shape[3] <= 128 and k.shape[2] >= 1
    )  # fmt: skip


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale, kv_lens):
        q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
        scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if not scale > 0:
            raise ValueError(f"flash_attention: softmax_scale must be > 0, got {scale}")
        if kv_lens is not None:
            kv_lens = kv_lens.to(device=q.device, dtype=torch.int32).contiguous()
        o, lse = _forward(q, k, v, causal, scale, kv_lens)
        ctx.save_for_backward(q, k, v, o, lse, kv_lens)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kv_lens = ctx.saved_tensors
        dq, dk, dv = _backward(_last_dim_contiguous(do), q, k, v, o, lse, ctx.causal, ctx.scale, kv_lens)
        return dq, dk, dv, None, None, None


def flash_attention(q, k, v, causal=True, softmax_scale=None, kv_lens=None):
    """Softmax attention, q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D); see the module docstring."""
    if not supports(q, k, v):
        raise ValueError(
            f"flash_attention: unsupported q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "(need Hq % Hkv == 0, 1 <= D <= 128, Tk >= 1, one dtype among fp16/bf16/fp32, one device)"
        )
    if kv_lens is not None and kv_lens.shape != (q.shape[0],):
        raise ValueError(f"flash_attention: kv_lens {tuple(kv_lens.shape)} must be ({q.shape[0]},)")
    if q.numel() == 0:  # no queries: nothing to launch (clone keeps the autograd graph connected)
        return q.clone()
    return FlashAttentionFunction.apply(q, k, v, causal, softmax_scale, kv_lens)
