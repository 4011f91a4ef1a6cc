"""Checkpoints in, modules out: find a checkpoint folder, read its config.json and its raw safetensors.

- `resolve(name_or_path, ...)`: a local folder, a short name (`qwen3-8b`, `hubert-xlarge`, ...) or a hub id.
  Only names and ids are downloaded (`hub_download`: huggingface_hub, only the files we need, every call with a
  timeout); offline, or when the hub does not answer, the error says what to download and where to put it.
- `require_folder(path)`: "no such checkpoint folder", before any file inside it is looked for.
- `read_tensors(folder, ...)`: reads `model.safetensors` or the shards listed in `model.safetensors.index.json`.
  The safetensors format is simple enough to read by hand: 8 bytes of little-endian header length, a JSON
  header {name: {dtype, shape, data_offsets}}, then the raw bytes. Each tensor is read straight into its own
  buffer and cast to the target dtype one tensor at a time, so loading never holds an fp32 copy of the model.
  The header is checked before any byte is trusted (dtypes, shapes, offsets: `_read_header`).
- `convert_bin_to_safetensors(folder)`: the one place a pickle is read, for older hub repos that ship only
  `pytorch_model.bin`, once. It runs torch.load(weights_only=True), a restricted unpickler that builds tensors
  and plain containers and refuses any other object, so a malicious file is a one-line error, not code run.
- `load_state(model, tensors, source)`: strict loading: every tensor used, every parameter filled, every
  shape checked; errors name the file, the key and the shapes.
- `atomic_dir(path)`: a checkpoint folder appears complete or not at all; `remove_stale_tmp(folder)` clears what
  a save killed half-way left behind.
"""

import contextlib
import json
import math
import os
import struct
import sys
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
    # Whisper's encoders (nanoaudio reads only the encoder's tensors): 128 mel bins for large-v3 and turbo
    "whisper-large-v3": "openai/whisper-large-v3",  # 1280-d, 32 layers
    "whisper-large-v3-turbo": "openai/whisper-large-v3-turbo",  # large-v3's encoder shape, a 4-layer decoder
    "whisper-small": "openai/whisper-small",  # 768-d
    "whisper-base": "openai/whisper-base",  # 512-d
    "whisper-tiny": "openai/whisper-tiny",  # 384-d
}

# safetensors dtype strings -> torch dtypes
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("fp32", "bf16", "fp16")  # the names both CLIs take (sample.py --dtype, train.py --precision)


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
    return hub_download(repo, patterns, name=name)


def hub_download(repo: str, patterns: list[str], repo_type: str = "model", name: str | None = None) -> Path:
    """A local snapshot of hub repo `repo`'s files matching `patterns` (fnmatch): the cache's, else downloaded.

    No call waits forever. huggingface_hub's snapshot_download asks for the repo's file list with no timeout, so
    a hub that accepts the connection and never answers hangs it for good; here the list comes from repo_info
    with a timeout of HF_HUB_ETAG_TIMEOUT seconds (huggingface_hub's setting, default 10), and each file from
    hf_hub_download (the same timeout for its metadata, HF_HUB_DOWNLOAD_TIMEOUT between chunks of its bytes).
    With HF_HUB_OFFLINE=1, or when the hub cannot be reached, the cache is used if it holds the files.
    """
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    name = name or repo
    timeout = constants.HF_HUB_ETAG_TIMEOUT

    def cached():
        return Path(snapshot_download(repo, repo_type=repo_type, allow_patterns=patterns, local_files_only=True))

    try:
        if constants.HF_HUB_OFFLINE:
            return cached()
        try:
            info = HfApi().repo_info(repo, repo_type=repo_type, timeout=timeout)
        except Exception as e:
            if not _unreachable(e):
                raise
            try:
                return cached()  # what an earlier run downloaded
            except Exception:
                raise e from None
        files = [f.rfilename for f in info.siblings or [] if any(fnmatch(f.rfilename, p) for p in patterns)]
        if not files:
            raise NanoaudioError(f"{name}: {repo} has no file matching {', '.join(patterns)}")
        for f in files:
            path = hf_hub_download(repo, f, repo_type=repo_type, revision=info.sha, etag_timeout=timeout)
        return Path(path).parents[len(Path(f).parts) - 1]  # .../snapshots/<sha>/<f> -> .../snapshots/<sha>
    except NanoaudioError:
        raise
    except Exception as e:  # offline, gated repo, typo in the id...
        if _unreachable(e) and "Timeout" in _chain_names(e):
            raise NanoaudioError(
                f"{name}: the hub ({constants.ENDPOINT}) did not answer {repo} within {timeout:g} s; set "
                f"HF_HUB_OFFLINE=1 to use the local cache, or download {', '.join(patterns)} from "
                f"https://huggingface.co/{repo} into a folder and pass that folder") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NanoaudioError(
            f"{name}: could not download {repo} ({reason[:160]}); download {', '.join(patterns)} from "
            f"https://huggingface.co/{repo} into a folder and pass that folder instead (or set HF_HUB_OFFLINE=1 "
            f"if it is in the cache)"
        ) from None


def _chain_names(e: BaseException) -> str:
    """The class names of an exception and of those it wraps (huggingface_hub re-raises network errors)."""
    names = []
    while e is not None and len(names) < 8:
        names += [c.__name__ for c in type(e).__mro__]
        e = e.__cause__ or e.__context__
    return " ".join(names)


def _unreachable(e: BaseException) -> bool:
    """A timeout or a connection failure (httpx's, requests', or the builtin ones), not an answer from the hub.
    Matched by class name: huggingface_hub has used requests, httpx and httpx2 across the versions we accept."""
    names = _chain_names(e)
    return any(n in names for n in ("Timeout", "ConnectError", "ConnectionError", "NetworkError"))


def require_folder(path, what: str = "checkpoint") -> Path:
    """Path(path) if it is a folder, else one line that says so: "no such checkpoint folder", not the
    "config.json: missing" that reading the first file inside it would say."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise NanoaudioError(f"{path}: is a file, not a {what} folder")
    raise NanoaudioError(f"{path}: no such {what} folder")


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


# bytes per element of each safetensors dtype
_ITEMSIZE = {name: torch.empty(0, dtype=dt).element_size() for name, dt in _DTYPES.items()}


def _read_header(path: Path) -> tuple[dict, int]:
    """-> ({name: {dtype, shape, data_offsets}}, byte offset where tensor data starts).

    Nothing in the header is trusted: it is a JSON object of objects, each dtype known, each shape a list of
    non-negative ints whose product times the dtype's size is exactly its byte span, and the spans lie inside
    the file, back to back, without overlap or gap (the format's own rules, as the safetensors library checks).
    """
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
    if not isinstance(header, dict):
        raise NanoaudioError(f"{path}: not a safetensors file (the header is a JSON {type(header).__name__}, "
                             f"not an object)")
    header.pop("__metadata__", None)
    start = 8 + n
    end_of_previous = 0
    for key, info in sorted(header.items(), key=lambda kv: _span(kv[1])):
        where = f"{path}: tensor {key!r}"
        if not isinstance(info, dict):
            raise NanoaudioError(f"{where}: its header entry is a JSON {type(info).__name__}, not an object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise NanoaudioError(f"{where}: no {field!r} in its header entry")
        if info["dtype"] not in _DTYPES:
            raise NanoaudioError(f"{where}: unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise NanoaudioError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise NanoaudioError(f"{where}: data_offsets {offsets!r} is not [begin, end] in bytes")
        begin, end = offsets
        if end < begin:
            raise NanoaudioError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
        if begin != end_of_previous:  # the format packs the tensors back to back
            what = "overlap" if begin < end_of_previous else "leave a gap after"
            raise NanoaudioError(f"{where}: data_offsets [{begin}, {end}] {what} the previous tensor's bytes "
                                 f"(which end at {end_of_previous})")
        if start + end > size:
            raise NanoaudioError(f"{path}: truncated safetensors file (tensor {key!r} ends at byte "
                                 f"{start + end}, file has {size})")
        want = math.prod(shape) * _ITEMSIZE[info["dtype"]]
        if want != end - begin:
            raise NanoaudioError(f"{where}: shape {shape} of {info['dtype']} needs {want} bytes but its "
                                 f"data_offsets [{begin}, {end}] hold {end - begin}")
        end_of_previous = end
    return header, start


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0  # JSON true would pass isinstance(x, int)


def _span(info) -> tuple[int, int]:
    """Sort key: a header entry's (begin, end) in bytes, so an empty tensor sorts before the one starting at its
    offset; entries too broken to say sort first, to be reported."""
    try:
        begin, end = info["data_offsets"]
        return (begin, end) if _is_count(begin) and _is_count(end) else (-1, -1)
    except (TypeError, KeyError, ValueError):
        return (-1, -1)


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: one model.safetensors, or the shards of model.safetensors.index.json."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise NanoaudioError(f"{index}: no \"weight_map\" object of tensor name -> file name")
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
    """Convert pytorch_model.bin to model.safetensors beside it, once.

    torch.load(weights_only=True) is a restricted unpickler: it rebuilds tensors and dicts/lists of them and
    refuses every other global a pickle names (os.system, ...), which is what a malicious .bin would call.
    """
    import pickle
    import warnings

    from safetensors.torch import save_file

    folder = Path(folder)
    src, out = folder / "pytorch_model.bin", folder / "model.safetensors"
    print(f"nanoaudio: converting {src} to {out} (once)", file=sys.stderr)
    try:
        with warnings.catch_warnings():  # a damaged file's pickle-protocol warning would be a second line
            warnings.simplefilter("ignore")
            state = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        # the refusal's message runs to twenty lines of advice; its first line says what was refused
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NanoaudioError(f"{src}: refused by torch.load(weights_only=True), not loaded ({reason[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NanoaudioError(f"{src}: not a state dict of tensors (a {type(state).__name__})")
    with atomic_file(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    return out


# -----------------------------------------------------------------------------
# atomic writes: a crash never leaves a half-written file or checkpoint (the project's one way to write them)


@contextlib.contextmanager
def atomic_file(path):
    """`with atomic_file(path) as tmp:` write the file tmp; on success it replaces path in one rename, so a reader
    (another DDP rank, a later run) sees the old file or the whole new one. On an exception tmp is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def remove_stale_tmp(folder) -> list[Path]:
    """Clean up after atomic_dir runs that were killed (kill -9, power loss) inside `folder` -> the paths handled.

    `.NAME.tmp-PID`: a half-written folder; removed. `.NAME.old-PID`: the previous checkpoint, moved aside; removed
    when NAME exists, else renamed back to NAME (the process died between its two renames, and this is the last
    complete checkpoint). Folders of a process that is still running (another run saving right now) are left
    alone; this process's own pid counts as dead, since it calls this before it saves anything.
    """
    import re
    import shutil

    folder = Path(folder)
    handled = []
    if not folder.is_dir():
        return handled
    for p in sorted(folder.iterdir()):
        m = re.fullmatch(r"\.(.+)\.(tmp|old)-(\d+)", p.name)
        if not m or not p.is_dir() or _alive(int(m.group(3))):
            continue
        target = folder / m.group(1)
        if m.group(2) == "old" and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
        handled.append(p)
    return handled


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    if os.name == "nt":
        return True  # Windows' os.kill would terminate the process, not probe it: keep the folder
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only the check that the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep it)
    return True
