"""Hand-written Triton kernels, each with its PyTorch reference in the same file.

Importing this package never imports triton; each kernel module does so itself, so CPU-only machines
can import nanoaudio and fall back to the PyTorch paths (see nanoaudio/nn.py, the one switch).
"""
