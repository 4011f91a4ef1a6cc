"""What every nanoaudio command line shares: one runner, and argparse types that check numbers as they are parsed.

- `run_cli(main)`: a NanoaudioError (bad input) becomes one `error: ...` line on stderr and exit status 1;
  Ctrl-C (KeyboardInterrupt) a quiet exit 130, the shell's code for SIGINT; any other exception keeps its
  traceback, because it is a bug and hiding it would be worse.
- `positive_int`, `non_negative_int`, `positive_float`, `non_negative_float`, `fraction`, `int_in(lo, hi)`,
  `float_in(lo, hi)`: pass them as `type=` to add_argument. A bad value makes argparse print
  `error: argument --flag: ...` with the allowed range and exit 2, before any model is loaded.
- `output_file(*suffixes)`: an output path whose folder exists and whose suffix is one of `suffixes`, so a
  command fails before its compute, not after.
"""

import argparse
import math
import sys
from pathlib import Path

from nanoaudio import NanoaudioError


def run_cli(main) -> None:
    """Run a command-line entry point and exit with main()'s return value (None -> 0); see the module docstring."""
    try:
        code = main()
    except NanoaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program
    sys.exit(code)


# -----------------------------------------------------------------------------
# argparse types: each returns the parsed value or raises ArgumentTypeError with the allowed range


def _number(kind, text: str):
    try:
        x = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(x):  # float("nan") and float("inf") parse; no flag wants them
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return x


def int_in(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (None: unbounded on that side)."""

    def parse(text: str) -> int:
        x = _number(int, text)
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise argparse.ArgumentTypeError(f"{x} is out of range: {_range(lo, hi, '[', ']')}")
        return x

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in [lo, hi]; lo_open/hi_open exclude that end ((lo, hi], [lo, hi))."""

    def parse(text: str) -> float:
        x = _number(float, text)
        low = lo is not None and (x <= lo if lo_open else x < lo)
        high = hi is not None and (x >= hi if hi_open else x > hi)
        if low or high:
            allowed = _range(lo, hi, "(" if lo_open else "[", ")" if hi_open else "]")
            raise argparse.ArgumentTypeError(f"{text} is out of range: {allowed}")
        return x

    parse.__name__ = "number"
    return parse


def _range(lo, hi, left, right) -> str:
    lo, hi = (None if v is None else f"{v:g}" for v in (lo, hi))  # 0.0 -> "0", 1e-06 stays short
    if lo is not None and hi is not None:
        return f"must be in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f"must be {'>' if left == '(' else '>='} {lo}"
    return f"must be {'<' if right == ')' else '<='} {hi}"


positive_int = int_in(1)  # sizes, counts, steps
positive_int.__name__ = "positive_int"
non_negative_int = int_in(0)  # seeds, "0 = off" counters
non_negative_int.__name__ = "non_negative_int"
positive_float = float_in(0.0, lo_open=True)  # seconds, learning rates, temperatures
positive_float.__name__ = "positive_float"
non_negative_float = float_in(0.0)  # weights, noise levels
non_negative_float.__name__ = "non_negative_float"
fraction = float_in(0.0, 1.0)  # a share of something, [0, 1]
fraction.__name__ = "fraction"


def output_file(*suffixes: str):
    """An argparse type: a path to write, whose folder exists and (if suffixes are given) whose suffix is one of
    them, case-insensitive: `-o x.txt` for an audio file fails at parse time, not after the compute."""

    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
        if not path.resolve().parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} does not exist")
        if suffixes and path.suffix.lower() not in suffixes:
            allowed = ", ".join(suffixes[:-1]) + " or " * (len(suffixes) > 1) + suffixes[-1]
            raise argparse.ArgumentTypeError(f"{text}: the file name must end in {allowed}")
        return text

    parse.__name__ = "output_file"
    return parse


def check_device(device: str, flag: str = "--device") -> None:
    """`flag` names a device this machine has (cpu, cuda, cuda:N, mps), or one line saying it does not."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NanoaudioError(f"{flag} {device!r}: not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise NanoaudioError(f"{flag} {device}: this machine has {have}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise NanoaudioError(f"{flag} {device}: MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise NanoaudioError(f"{flag} {device}: choose cpu, cuda, cuda:N or mps")
