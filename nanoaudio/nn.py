"""The one switch between hand-written Triton kernels and their PyTorch references.

Every RMSNorm and every attention call in nanoaudio goes through this file:
- `rms_norm(x, weight, eps)` and `RMSNorm` (Qwen3/Llama semantics: statistics in fp32, cast back, then scale);
- `attention(q, k, v, causal=..., kv_lens=..., mask=...)` in the SDPA layout (B, H, T, D).

Which path runs is decided here and only here:
- NANOAUDIO_KERNELS=0 forces PyTorch, NANOAUDIO_KERNELS=1 forces the Triton kernels (on CPU that needs
  TRITON_INTERPRET=1 set before triton is imported);
- otherwise the kernels run for CUDA tensors on GPUs that Triton supports (compute capability >= 8.0 for bf16),
  and PyTorch runs everywhere else (SDPA on CPU).
Importing this file never imports triton and never needs a GPU.
"""

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

# -----------------------------------------------------------------------------
# the switch


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_kernels(x: torch.Tensor) -> bool:
    """True when the Triton kernel should handle tensor x."""
    mode = os.environ.get("NANOAUDIO_KERNELS", "auto")
    if mode == "0":
        return False
    if mode == "1":
        return _triton_available()
    # auto: CUDA tensors on Ampere or newer (Triton's flash attention needs sm80 for bf16 tl.dot).
    if not x.is_cuda or not _triton_available():
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 0)


# -----------------------------------------------------------------------------
# RMSNorm


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Hugging Face Qwen3RMSNorm/LlamaRMSNorm, to the bit: normalize in fp32, cast to the input dtype,
    # THEN multiply by the weight (in the weight's dtype). Changing the order changes bf16 results.
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm(x); with a residual (pre-norm decoder blocks) returns (RMSNorm(x + residual), x + residual)."""
    if use_kernels(x):
        from nanoaudio.kernels.rmsnorm import MAX_N
        from nanoaudio.kernels.rmsnorm import rms_norm as rms_norm_triton

        # the kernel keeps a whole row in registers (longer rows fall through), and adds a residual of x's own
        # dtype (under autocast a bf16 branch output can meet an fp32 stream: PyTorch promotes that sum)
        if x.shape[-1] <= MAX_N and (residual is None or residual.dtype == x.dtype):
            return rms_norm_triton(x, weight, eps, residual)
    if residual is not None:
        x = x + residual  # the new residual stream, in the activation dtype
        return rms_norm_reference(x, weight, eps), x
    return rms_norm_reference(x, weight, eps)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight. Parameter name `weight` as in the checkpoints."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return rms_norm(x, self.weight, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# -----------------------------------------------------------------------------
# attention


def attention_mask(Tq: int, Tk: int, causal: bool, kv_lens=None, mask=None, device=None) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, Tq, Tk), True = may attend, or None when nothing is masked.

    causal: query i (of Tq) sits at absolute position Tk - Tq + i, so with a KV cache (Tq < Tk) the causal
    mask is aligned to the bottom right. kv_lens (B,): keys at positions >= kv_lens[b] are padding.
    mask (B, Tk): True for real keys, False for padding (left padding in batched generation).
    """
    allowed = None
    if causal:
        qpos = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1)
        kpos = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        allowed = (kpos <= qpos)[None, None]  # (1, 1, Tq, Tk)
    if kv_lens is not None:
        valid = torch.arange(Tk, device=device)[None, :] < kv_lens.to(device)[:, None]  # (B, Tk)
        valid = valid[:, None, None, :]
        allowed = valid if allowed is None else allowed & valid
    if mask is not None:
        valid = mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = valid if allowed is None else allowed & valid
    return allowed


def attention_reference(q, k, v, causal=True, softmax_scale=None, kv_lens=None, mask=None):
    """PyTorch path: SDPA on the explicit mask. q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
        # Training under CPU bf16 autocast (train.py --precision bf16): PyTorch's CPU SDPA backward is ~3x
        # slower in bf16 than in fp32 (tiny preset, 2 Xeon cores: 33 vs 9 ms a step), so attention runs in fp32
        # (more precise, too) and only its output goes back to bf16. Without autocast, bf16 stays bf16 (as in
        # transformers, which the bf16 tests compare against).
        with torch.autocast("cpu", enabled=False):
            out = attention_reference(q.float(), k.float(), v.float(), causal, softmax_scale, kv_lens, mask)
        return out.to(q.dtype)
    Tq, Tk = q.shape[2], k.shape[2]
    if q.shape[1] != k.shape[1]:
        # grouped-query attention: each group of Hq // Hkv query heads shares one K/V head
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if causal and Tq == Tk and kv_lens is None and mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=softmax_scale)
    allowed = attention_mask(Tq, Tk, causal, kv_lens, mask, device=q.device)
    if allowed is not None:
        # a query row with no allowed key (a fully padded row) would give NaN; let it see everything instead,
        # its output is padding and is ignored by every caller.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=softmax_scale)


def attention(q, k, v, causal=True, softmax_scale=None, kv_lens=None, mask=None):
    """Scaled dot-product attention, q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D).

    The Triton kernel handles causal (bottom-right aligned), GQA and right padding (kv_lens). An arbitrary
    key mask (left padding in batched generation) takes the PyTorch path.
    """
    if mask is None and use_kernels(q):
        from nanoaudio.kernels.flash_attention import flash_attention, supports

        if supports(q, k, v):  # head dims up to 128, fp16/bf16/fp32; anything else falls through to PyTorch
            return flash_attention(q, k, v, causal=causal, softmax_scale=softmax_scale, kv_lens=kv_lens)
    return attention_reference(q, k, v, causal, softmax_scale, kv_lens, mask)
