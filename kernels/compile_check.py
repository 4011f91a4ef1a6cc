"""Compile every kernel for a GPU architecture without a GPU, and report registers, spills and shared memory.

    python -m nanoaudio.kernels.compile_check                      # sm_90 and sm_80, head dims 64 and 128, every tuning config
    python -m nanoaudio.kernels.compile_check --arch 90 --quick    # one config per kernel (what tests/test_kernels.py runs)

The CPU interpreter (TRITON_INTERPRET=1) proves the kernels' arithmetic but never runs the GPU compiler: layout,
tensor-core (mma/wgmma) lowering, shared-memory and register limits. Triton's wheel ships ptxas, so the whole
pipeline Python -> TTIR -> TTGIR -> LLVM -> PTX -> cubin runs here for any target; cuobjdump then reads the
register count and spill stack of each cubin. A config that spills many bytes will be slow; one that fails to
compile would crash the autotuner on a real GPU. Uses Triton's compiler API (ASTSource, GPUTarget), which is
semi-internal: written against Triton 3.x.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("error: unset TRITON_INTERPRET: the interpreter replaces the kernels the compiler needs")

from nanoaudio.kernels import flash_attention as fa  # noqa: E402
from nanoaudio.kernels import rmsnorm as rn  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
FLOATS = {"qk_scale", "sm_scale", "eps"}
FP32_POINTERS = {"LSE", "DELTA", "RSTD", "DW_PARTIAL"}


def signature(fn, constexprs, dtype):
    """Argument types as the launcher would pass them; pointers and strides get the usual 16-divisibility hint."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name == "KV_LENS":
            sig[name] = "*i32"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name.isupper() and name not in ("M", "N", "D", "Hq", "Hkv", "Tq", "Tk"):
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "i32"
        if sig[name].startswith("*") or name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_one(fn, constexprs, dtype, arch, num_warps, num_stages):
    """-> (registers, spill bytes, shared memory bytes) of the cubin."""
    sig, attrs = signature(fn, constexprs, dtype)
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    options = dict(num_warps=num_warps, num_stages=num_stages)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    regs = spills = None
    if os.path.exists(CUOBJDUMP):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", out)
        regs, spills = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    return regs, spills, k.metadata.shared


def jobs(head_dims, quick):
    """(label, kernel, constexprs, num_warps, num_stages) for every kernel and tuning config."""
    attn = [("fwd", fa._attn_fwd, fa._FWD_CONFIGS), ("dkdv", fa._attn_bwd_dkdv, fa._DKDV_CONFIGS),
            ("dq", fa._attn_bwd_dq, fa._DQ_CONFIGS)]  # fmt: skip
    for D in head_dims:
        # the heaviest variant: GQA with every mask on
        common = dict(GROUP=4, CAUSAL=True, HAS_KV_LENS=True, D=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                      PREC="tf32")  # fmt: skip
        for label, fn, configs in attn:
            for c in [c for c in configs if D <= c.max_head_dim][: 1 if quick else None]:
                yield f"attn {label} D={D} {c.kwargs}", fn, {**common, **c.kwargs}, c.num_warps, c.num_stages
        yield f"attn delta D={D}", fa._attn_bwd_delta, dict(D=D, BLOCK_D=common["BLOCK_D"], BLOCK_M=64), 4, 1
    for N in (128, 4096) if quick else (128, 2048, 4096, 6400, 8192):
        BM, BN, warps_fwd, warps_bwd = rn._launch_config(N)
        yield f"rmsnorm fwd N={N}", rn._rmsnorm_fwd, dict(HAS_RESIDUAL=True, BLOCK_M=BM, BLOCK_N=BN), warps_fwd, 1
        bwd = dict(HAS_DH=True, COMPUTE_DW=True, BLOCK_M=BM, BLOCK_N=BN)
        yield f"rmsnorm bwd N={N}", rn._rmsnorm_bwd, bwd, warps_bwd, 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128], help="attention head dims")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"], help="activation dtype")
    p.add_argument("--quick", action="store_true", help="only the first tuning config of each kernel")
    args = p.parse_args(argv)
    failed = 0
    for arch in args.arch:
        for label, fn, constexprs, warps, stages in jobs(args.head_dim, args.quick):
            try:
                regs, spills, smem = compile_one(fn, constexprs, args.dtype, arch, warps, stages)
                print(f"sm_{arch} {label} w{warps} s{stages}: {regs} regs, {spills} B spilled, {smem} B shared")
            except Exception as e:  # report every failure, then exit non-zero
                failed += 1
                print(f"sm_{arch} {label} w{warps} s{stages}: FAILED {type(e).__name__}: {str(e)[:500]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
