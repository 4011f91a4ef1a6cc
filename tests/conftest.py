"""Shared test setup. Runs before any test module is imported, which matters for one thing: Triton reads
TRITON_INTERPRET when a @triton.jit decorator runs, so on a machine without a GPU it must be set before the
first `import nanoaudio.kernels` anywhere in the session (the kernel tests then run on CPU in the interpreter)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The CPU machines we test on have 2 cores; one thread per process keeps timings and the DDP test predictable.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
