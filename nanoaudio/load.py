"""Checkpoints in, modules out: find a checkpoint folder, read its config.json and its raw safetensors.

- `resolve(name_or_path, ...)`: a local folder, a short name (`qwen3-8b`, `hubert-xlarge`, ...) or a hub id.
  Only names and ids are downloaded (huggingface_hub, only the files we need); offline, the error says what to
  download and where to put it.
- `read_tensors(folder, ...)`: reads `model.safetensors` or the shards listed in `model.safetensors.index.json`.
  The safetensors format is simple enough to read by hand: 8 bytes of little-endian header length, a JSON
  header {name: {dtype, shape, data_offsets}}, then the raw bytes. Each tensor is read straight into its own
  buffer and cast to the target dtype one tensor at a time, so loading never holds an fp32 copy of the model.
  Nothing is ever unpickled.
- `load_state(model, tensors, source)`: strict loading: every tensor used, every parameter filled, every
  shape checked; errors name the file, the key and the shapes.
"""

import json
import os
import struct
from pathlib import Path

import torch
from torch import nn

from nanoaudio import NanoaudioError

# Short names users type. Chat/instruct checkpoints, because the ASR prompt is a chat turn.
DECODERS = {
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",  # the course's default decoder
    "smollm3-3b": "HuggingFaceTB/SmolLM3-3B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
}
ENCODERS = {
    "hubert-xlarge": "facebook/hubert-xlarge-ls960-ft",  # 1280-d, the course's encoder
    "hubert-large": "facebook/hubert-large-ls960-ft",  # 1024-d
}

# safetensors dtype strings -> torch dtypes
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype, or one of 'float32'/'fp32'/'float16'/'fp16'/'bfloat16'/'bf16'."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise NanoaudioError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# -----------------------------------------------------------------------------
# finding a checkpoint


def resolve(name_or_path, short_names: dict, patterns: list[str]) -> Path:
    """Local folder -> itself; short name or hub id -> a local snapshot holding the files matching `patterns`."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    repo = short_names.get(name.lower(), name)
    # (a hub id may contain dots, "Qwen/Qwen3-0.6B", so a file suffix says nothing; a short name is always one)
    looks_like_id = name.lower() in short_names or (
        repo.count("/") == 1 and not repo.startswith((".", "/", "~")) and not path.exists())
    if not looks_like_id:
        known = ", ".join(short_names)
        raise NanoaudioError(f"{name}: no such folder, and not a known name ({known}) or a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # offline, gated repo, typo in the id...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NanoaudioError(
            f"{name}: could not download {repo} ({reason[:160]}); download {', '.join(patterns)} from "
            f"https://huggingface.co/{repo} into a folder and pass that folder instead"
        ) from None


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NanoaudioError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NanoaudioError(f"{path}: not valid JSON ({e})") from None


# -----------------------------------------------------------------------------
# raw safetensors


def _read_header(path: Path) -> tuple[dict, int]:
    """-> ({name: {dtype, shape, data_offsets}}, byte offset where tensor data starts). Validates sizes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise NanoaudioError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise NanoaudioError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NanoaudioError(f"{path}: not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    start = 8 + n
    for key, info in header.items():
        begin, end = info["data_offsets"]
        if start + end > size:
            raise NanoaudioError(f"{path}: truncated safetensors file (tensor {key!r} ends at byte "
                                 f"{start + end}, file has {size})")
        if info["dtype"] not in _DTYPES:
            raise NanoaudioError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    return header, start


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: one model.safetensors, or the shards of model.safetensors.index.json."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        files = sorted({folder / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise NanoaudioError(f"{f}: missing (listed in {index})")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if (folder / "pytorch_model.bin").is_file():
        raise NanoaudioError(f"{folder}: has only pytorch_model.bin; nanoaudio reads safetensors "
                             f"(convert it, e.g. with nanoaudio.load.convert_bin_to_safetensors)")
    raise NanoaudioError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def read_tensors(folder, dtype=None, device="cpu", rename=None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `folder`, floating ones cast to `dtype` (None keeps the file's).

    rename(key) -> new key, or None to drop the tensor on purpose (callers list those explicitly).
    Each tensor is read into a buffer of its own dtype and cast right away: peak memory is the model in the
    target dtype plus one tensor.
    """
    dtype = parse_dtype(dtype)
    out = {}
    for path in safetensors_files(folder):
        header, start = _read_header(path)
        with open(path, "rb") as f:
            for key, info in header.items():
                name = rename(key) if rename else key
                if name is None:
                    continue
                begin, end = info["data_offsets"]
                f.seek(start + begin)
                buf = bytearray(end - begin)
                f.readinto(buf)
                src = _DTYPES[info["dtype"]]
                t = torch.frombuffer(buf, dtype=src) if buf else torch.empty(0, dtype=src)
                t = t.reshape(info["shape"])
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                out[name] = t.to(device)
                out[name].source = f"{path}:{key}"  # for error messages in load_state
    return out


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Strictly assign `tensors` to `model`'s parameters and persistent buffers (no copy: assign=True).

    Works on a model built on the meta device, so the weights exist in memory once.
    """
    expected = model.state_dict(keep_vars=True)
    for name, t in tensors.items():
        where = getattr(t, "source", f"{source}:{name}")
        if name not in expected:
            raise NanoaudioError(f"{where}: unexpected tensor (the model has no parameter {name!r})")
        if tuple(t.shape) != tuple(expected[name].shape):
            raise NanoaudioError(f"{where}: shape {tuple(t.shape)} but the model expects "
                                 f"{tuple(expected[name].shape)} for {name!r}")
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise NanoaudioError(f"{source}: missing tensor(s) {', '.join(missing[:3])}{more}")
    model.load_state_dict(tensors, strict=True, assign=True)


def convert_bin_to_safetensors(folder: Path) -> Path:
    """Convert pytorch_model.bin to model.safetensors beside it, once. weights_only=True: no arbitrary unpickling."""
    from safetensors.torch import save_file

    folder = Path(folder)
    out = folder / "model.safetensors"
    print(f"nanoaudio: converting {folder / 'pytorch_model.bin'} to {out} (once)")
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, out)
    return out


# -----------------------------------------------------------------------------
# atomic folders: a crash never leaves a half-written checkpoint


class atomic_dir:
    """`with atomic_dir(path) as tmp:` write everything into tmp; on success tmp replaces path in one rename.

    An existing `path` is moved aside first and deleted only after the new folder is in place, so at every
    instant either the old or the new complete checkpoint exists. On an exception tmp is removed.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        import shutil

        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return False
