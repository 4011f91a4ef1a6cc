"""nanoaudio: a minimal, readable LLM-based speech recognizer.

raw 16 kHz audio -> HuBERT encoder (frozen) -> AudioProjector -> spliced into a Qwen3-style decoder's prompt.
Read the modules in data-flow order: audio.py, encoder.py, projector.py, model.py, decoder.py, tokenizer.py.
"""


class NanoaudioError(Exception):
    """A problem with the user's input (a file, a key, a shape, a sample rate).

    Command-line entry points print str(error) as one line on stderr and exit with status 1,
    instead of a traceback. The message must name the offending thing.
    """


# run_cli lives with the argparse types the commands share; cli.py needs only NanoaudioError, defined above
from nanoaudio.cli import run_cli  # noqa: E402


# The public API is imported lazily so that `import nanoaudio` stays cheap and never touches a GPU.
_LAZY = {
    "load_decoder": "nanoaudio.decoder",
    "load_tokenizer": "nanoaudio.tokenizer",
    "load_encoder": "nanoaudio.encoder",
    "load_audio": "nanoaudio.audio",
    "log_mel_spectrogram": "nanoaudio.whisper",
    "WhisperEncoder": "nanoaudio.whisper",
    "AudioProjector": "nanoaudio.projector",
    "ASRModel": "nanoaudio.model",
    "apply_lora": "nanoaudio.lora",
    "LoRALinear": "nanoaudio.lora",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanoaudio' has no attribute {name!r}")
