"""Hostile but honest input: every bad value is ONE line naming the flag, file or key; nothing hangs or is left behind.

    python -m pytest -q tests/test_hostile.py

- The command lines (synth, visualize) run in subprocesses: each bad value must exit non-zero before any compute,
  with exactly one `error:` line that names the flag or file, no traceback, and nothing written.
- Files that lie: safetensors headers (a shape larger than its bytes, reversed offsets, a list for an object, a
  string shape, no dtype...), a pytorch_model.bin whose pickle would run a command, checkpoint config.json files
  with wrong types or values (through ASRModel.load on a copy of the bundled tiny model, and through
  load_decoder/load_encoder), audio cut off mid-file.
- Limits: a decoder config allowing 2e7 positions loads in little memory, and a position past the limit is a
  NanoaudioError; a hub that accepts connections and never answers gives up within its timeout.
- Interrupted runs: the folders a killed save leaves are removed (or restored) by remove_stale_tmp, and Ctrl-C
  through run_cli is a quiet exit 130.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from nanoaudio import NanoaudioError
from nanoaudio.cli import float_in, fraction, int_in, non_negative_int, output_file, positive_float, positive_int
from nanoaudio.config import DecoderConfig
from nanoaudio.load import convert_bin_to_safetensors, read_tensors, remove_stale_tmp, require_folder

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "nanoaudio" / "assets" / "tiny-asr"


def run(module, *args, env=None, timeout=300, **kw):
    """`python -m module args...` from the repository root -> CompletedProcess (text)."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=kw.get("cwd", ROOT))


def one_error(r, *names):
    """Non-zero exit, no traceback, exactly one line with `error:`, and it names every one of `names`."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def tone(path: Path, seconds=1.0, sr=16000, subtype="PCM_16", fmt=None):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype=subtype, format=fmt)
    return path


# -----------------------------------------------------------------------------
# the argparse types and the runner


def test_argparse_types_name_the_allowed_range():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_float("0.5") == 0.5
    assert fraction("1") == 1.0 and int_in(80, 450)("80") == 80 and float_in(0, 1, hi_open=True)("0") == 0.0
    for parse, text, words in [(positive_int, "0", ">= 1"), (positive_int, "-2", ">= 1"),
                               (positive_int, "2.5", "integer"), (non_negative_int, "-1", ">= 0"),
                               (positive_float, "0", "> 0"),
                               (positive_float, "nan", "finite"), (positive_float, "inf", "finite"),
                               (positive_float, "x", "number"), (fraction, "1.5", "[0, 1]"),
                               (int_in(0, 100), "101", "[0, 100]"), (float_in(0, 1, hi_open=True), "1", "[0, 1)")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
            parse(text)


def test_output_file_checks_the_folder_and_the_suffix(tmp_path):
    png = output_file(".png", ".pdf")
    assert png(str(tmp_path / "a.PNG")) == str(tmp_path / "a.PNG")
    with pytest.raises(argparse.ArgumentTypeError, match="must end in .png or .pdf"):
        png(str(tmp_path / "a.txt"))
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        png(str(tmp_path / "missing" / "a.png"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        png(str(tmp_path))


RUNNER = """
import sys, time
from nanoaudio import NanoaudioError, run_cli
def main():
    what = sys.argv[1]
    if what == "bad-input":
        raise NanoaudioError("some.wav: not audio")
    if what == "bug":
        raise ZeroDivisionError("a bug keeps its traceback")
    if what == "ctrl-c":
        raise KeyboardInterrupt
    print("ready", flush=True)
    time.sleep(60)
run_cli(main)
"""


@pytest.mark.parametrize("what, code", [("bad-input", 1), ("ctrl-c", 130), ("bug", 1)])
def test_run_cli_maps_errors_to_exit_codes(what, code):
    r = subprocess.run([sys.executable, "-c", RUNNER, what], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == code, r.stderr
    if what == "bad-input":
        assert r.stderr == "error: some.wav: not audio\n"
    elif what == "ctrl-c":
        assert r.stderr == ""  # quiet: no traceback, no message
    else:
        assert "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr  # a bug is not hidden


def test_a_real_sigint_is_a_quiet_exit_130():
    p = subprocess.Popen([sys.executable, "-c", RUNNER, "wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err == "", err


# -----------------------------------------------------------------------------
# synth: bad values fail at parse time, nothing written


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "a_file.txt").write_text("not a folder")
    (tmp_path / "my_stuff").mkdir()
    (tmp_path / "my_stuff" / "thesis.tex").write_text("precious")
    return tmp_path


SYNTH_CASES = {  # id: (arguments, what the error line must name); "{d}" is the test's temporary folder
    "dataset-is-a-file": (["--dataset", "{d}/a_file.txt"], ["--dataset", "a_file.txt"]),
    "dataset-is-someone-elses-folder": (["--dataset", "{d}/my_stuff"], ["--dataset", "my_stuff"]),
    "out-into-missing-folder": (["seven", "-o", "{d}/missing/x.wav"], ["-o", "missing"]),
    "out-not-audio": (["seven", "-o", "{d}/x.txt"], ["-o", "x.txt", ".wav"]),
    "n-zero": (["--dataset", "{d}/ds", "-n", "0"], ["-n", ">= 1"]),
    "n-negative": (["--dataset", "{d}/ds", "-n", "-3"], ["-n"]),
    "n-not-a-number": (["--dataset", "{d}/ds", "-n", "ten"], ["-n", "ten"]),
    "seed-negative": (["--dataset", "{d}/ds", "--seed", "-1"], ["--seed"]),
    "pauses-above-1": (["--dataset", "{d}/ds", "--pauses", "1.5"], ["--pauses", "[0, 1]"]),
    "sentences-negative": (["--dataset", "{d}/ds", "--sentences", "-0.1"], ["--sentences"]),
    "rate-zero": (["seven", "-o", "{d}/x.wav", "--rate", "0"], ["--rate", "[80, 450]"]),
    "pitch-above-100": (["seven", "-o", "{d}/x.wav", "--pitch", "101"], ["--pitch", "[0, 100]"]),
    "exclude-missing": (["--dataset", "{d}/ds", "--exclude", "{d}/missing.jsonl"], ["--exclude", "missing.jsonl"]),
}


@pytest.mark.parametrize("case", list(SYNTH_CASES))
def test_synth_bad_values_are_one_line(case, workdir):
    args, names = SYNTH_CASES[case]
    before = files_under(workdir)
    r = run("nanoaudio.synth", *[a.format(d=workdir) for a in args], timeout=120)
    one_error(r, *names)
    assert files_under(workdir) == before  # nothing written, nothing deleted
    assert (workdir / "my_stuff" / "thesis.tex").read_text() == "precious"


# -----------------------------------------------------------------------------
# visualize: -o, numbers and the checkpoint are checked before any compute


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return tone(tmp_path_factory.mktemp("audio") / "tone.wav")


VISUALIZE_CASES = {
    "out-not-an-image": (["{a}", "-o", "{d}/v.txt"], ["-o", "v.txt", ".png"]),
    "out-into-missing-folder": (["{a}", "-o", "{d}/missing/v.png"], ["-o", "missing"]),
    "top-k-zero": (["{a}", "-o", "{d}/v.png", "--top-k", "0"], ["--top-k", ">= 1"]),
    "dtype-unknown": (["{a}", "-o", "{d}/v.png", "--dtype", "int8"], ["--dtype", "int8"]),
    "audio-missing": (["{d}/missing.wav", "-o", "{d}/v.png"], ["missing.wav", "no such file"]),
    "audio-not-audio": (["{d}/a_file.txt", "-o", "{d}/v.png"], ["a_file.txt"]),
    "checkpoint-missing": (["{a}", "-o", "{d}/v.png", "--checkpoint", "{d}/nonexistent"],
                           ["nonexistent", "no such checkpoint folder"]),
    "device-absent": (["{a}", "-o", "{d}/v.png", "--device", "cuda:7"], ["--device", "cuda:7"]),
}


@pytest.mark.parametrize("case", list(VISUALIZE_CASES))
def test_visualize_bad_values_are_one_line(case, workdir, audio):
    if case == "device-absent" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    pytest.importorskip("matplotlib")
    args, names = VISUALIZE_CASES[case]
    before = files_under(workdir)
    r = run("nanoaudio.visualize", *[a.format(d=workdir, a=audio) for a in args], timeout=120)
    one_error(r, *names)
    assert files_under(workdir) == before


# -----------------------------------------------------------------------------
# safetensors headers that lie


def write_safetensors(path: Path, header, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture
def honest(tmp_path):
    """A real two-tensor model.safetensors -> (its folder, its header dict, its data bytes)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)},
              folder / "model.safetensors")
    blob = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return folder, json.loads(blob[8:8 + n]), blob[8 + n:]


def lie(header, case):
    h = json.loads(json.dumps(header))
    a = h["a"]
    if case == "shape-larger-than-data":
        a["shape"] = [200, 300]
    elif case == "reversed-offsets":
        a["data_offsets"] = a["data_offsets"][::-1]
    elif case == "overlapping-offsets":
        h["b"]["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + 8]
    elif case == "offsets-past-the-file":
        h["b"]["data_offsets"] = [h["b"]["data_offsets"][0], 10**9]
        h["b"]["shape"] = [(10**9 - h["b"]["data_offsets"][0]) // 2]
    elif case == "list-instead-of-object":
        return [h]
    elif case == "entry-is-a-list":
        h["a"] = [a["dtype"], a["shape"], a["data_offsets"]]
    elif case == "string-shape":
        a["shape"] = "2,3"
    elif case == "negative-shape":
        a["shape"] = [-2, -3]
    elif case == "bool-in-shape":
        a["shape"] = [True, 6]
    elif case == "missing-dtype":
        del a["dtype"]
    elif case == "unknown-dtype":
        a["dtype"] = "F128"
    elif case == "one-offset":
        a["data_offsets"] = [0]
    return h


HEADER_LIES = {  # case: words the message must contain (besides the file's path)
    "shape-larger-than-data": ["'a'", "needs 240000 bytes"],
    "reversed-offsets": ["'a'", "end before they begin"],
    "overlapping-offsets": ["overlap", "tensor '"],
    "offsets-past-the-file": ["'b'", "truncated"],
    "list-instead-of-object": ["not an object"],
    "entry-is-a-list": ["'a'", "not an object"],
    "string-shape": ["'a'", "shape"],
    "negative-shape": ["'a'", "non-negative"],
    "bool-in-shape": ["'a'", "shape"],
    "missing-dtype": ["'a'", "'dtype'"],
    "unknown-dtype": ["'a'", "F128"],
    "one-offset": ["'a'", "data_offsets"],
}


@pytest.mark.parametrize("case", list(HEADER_LIES))
def test_safetensors_headers_that_lie_are_one_line(honest, case):
    folder, header, data = honest
    assert set(read_tensors(folder)) == {"a", "b"}  # the honest file reads
    write_safetensors(folder / "model.safetensors", lie(header, case), data)
    with pytest.raises(NanoaudioError) as e:
        read_tensors(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder / "model.safetensors") in msg
    for words in HEADER_LIES[case]:
        assert words in msg, msg


@pytest.mark.parametrize("index", [[], {}, {"weight_map": ["model.safetensors"]}, {"weight_map": {"a": 5}}])
def test_a_shard_index_that_is_not_a_weight_map_is_one_line(tmp_path, index):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(NanoaudioError, match="index.json: no \"weight_map\" object"):
        read_tensors(tmp_path)


# -----------------------------------------------------------------------------
# a malicious pytorch_model.bin


class Evil:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_bin_is_refused_in_one_line_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "payload": Evil(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(NanoaudioError) as e:
        convert_bin_to_safetensors(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "pytorch_model.bin") in msg and "weights_only" in msg
    assert not marker.exists() and not (tmp_path / "model.safetensors").exists()
    # an honest .bin converts, and the one-time notice goes to stderr (stdout carries the program's output)
    torch.save({"weight": torch.arange(3.0)}, tmp_path / "pytorch_model.bin")
    capsys.readouterr()
    convert_bin_to_safetensors(tmp_path)
    out = capsys.readouterr()
    assert out.out == "" and "converting" in out.err
    assert torch.equal(read_tensors(tmp_path)["weight"], torch.arange(3.0))


def test_a_bin_that_is_not_a_state_dict_is_one_line(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(NanoaudioError, match="pytorch_model.bin: refused"):
        convert_bin_to_safetensors(tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(NanoaudioError, match="not a state dict"):
        convert_bin_to_safetensors(tmp_path)


# -----------------------------------------------------------------------------
# checkpoint configs with wrong types or values


def edit(raw, path, value):
    """Set (or with value DELETE, remove) raw[path[0]][path[1]]...; path () replaces the whole object."""
    if not path:
        return value
    d = raw
    for key in path[:-1]:
        d = d[key]
    if value is DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return raw


DELETE = object()
CONFIG_CASES = {  # id: (where, new value, words the message must contain)
    "top-level-null": ((), None, ["not a nanoaudio checkpoint config", "null"]),
    "top-level-list": ((), [], ["not a nanoaudio checkpoint config", "array"]),
    "missing-encoder": (("encoder",), DELETE, ["'encoder'"]),
    "unknown-key": (("temperature",), 0.7, ["unknown key", "'temperature'"]),
    "encoder-config-is-a-string": (("encoder", "config"), "hubert", ["encoder.config", "string"]),
    "encoder-is-a-string": (("encoder",), "facebook/hubert-large-ls960-ft", ["encoder", "not an object"]),
    "layers-four": (("decoder", "config", "num_hidden_layers"), "four",
                    ["decoder.config", 'num_hidden_layers: "four" is not an integer']),
    "layers-bool": (("decoder", "config", "num_hidden_layers"), True, ["num_hidden_layers: true"]),
    "hidden-size-zero": (("decoder", "config", "hidden_size"), 0, ["hidden_size: 0", "> 0"]),
    "max-positions-negative": (("decoder", "config", "max_position_embeddings"), -5,
                               ["max_position_embeddings: -5", "> 0"]),
    "rope-theta-negative": (("decoder", "config", "rope_theta"), -1.0, ["rope_theta"]),
    "eos-a-string": (("decoder", "config", "eos_token_id"), "eos", ["eos_token_id"]),
    "head-dim-odd": (("decoder", "config", "head_dim"), 31, ["head_dim 31", "even"]),
    "tie-a-string": (("decoder", "config", "tie_word_embeddings"), "false", ["tie_word_embeddings", "true or false"]),
    "conv-stride-string-item": (("encoder", "config", "conv_stride"), [20, "4", 4], ["encoder.config", "conv_stride"]),
    "encoder-dropout-2": (("encoder", "config", "hidden_dropout"), 2.0, ["hidden_dropout", "[0, 1)"]),
    "encoder-unknown-type": (("encoder", "config"), {"model_type": "wav2vec2"}, ["encoder.config", "wav2vec2"]),
    "whisper-width-four": (("encoder", "config"), {"model_type": "whisper", "d_model": "four"},
                           ['encoder.config: d_model: "four" is not an integer']),
    "projector-stack-zero": (("projector", "stack"), 0, ["projector.stack: 0"]),
    "projector-unknown-key": (("projector", "layers"), 3, ["projector", "'layers'"]),
    "projector-kind-number": (("projector", "kind"), 5, ["projector.kind"]),
    "lora-a-string": (("lora",), "yes", ['lora: "yes" is not an object or null']),
    "lora-rank-zero": (("lora",), {"r": 0}, ["lora.r"]),
    "from-scratch-string": (("from_scratch",), "true", ["from_scratch", "true or false"]),
    "ctc-weight-negative": (("ctc_weight",), -1, ["ctc_weight: -1", ">= 0"]),
    "window-zero": (("window_seconds",), 0, ["window_seconds: 0", "> 0"]),
    "instruction-null": (("instruction",), None, ["instruction: null"]),
    "decoder-name-a-number": (("decoder", "name"), 5, ["decoder.name"]),
    "decoder-without-config": (("decoder", "config"), DELETE, ["decoder"]),
}


@pytest.fixture(scope="module")
def bundled_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundled") / "tiny-asr"
    shutil.copytree(BUNDLED, folder)
    return folder


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_checkpoint_configs_are_one_line(bundled_copy, case):
    from nanoaudio.model import ASRModel

    where, value, words = CONFIG_CASES[case]
    raw = edit(json.loads((BUNDLED / "config.json").read_text()), where, value)
    path = bundled_copy / "config.json"
    path.write_text(json.dumps(raw))
    try:
        with pytest.raises(NanoaudioError) as e:
            ASRModel.load(bundled_copy)
    finally:
        shutil.copy(BUNDLED / "config.json", path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def test_the_bundled_config_still_loads_and_a_missing_folder_says_so(bundled_copy, tmp_path):
    from nanoaudio.model import ASRModel

    ASRModel.load(bundled_copy)
    with pytest.raises(NanoaudioError, match=r"nonexistent: no such checkpoint folder$"):
        ASRModel.load(tmp_path / "nonexistent")
    (tmp_path / "file").write_text("")
    with pytest.raises(NanoaudioError, match="is a file, not a checkpoint folder"):
        require_folder(tmp_path / "file")


def test_max_position_embeddings_too_small_for_the_input_is_a_clear_error(bundled_copy):
    """max_position_embeddings 10 is a valid config (>= 1), but a 20-token input needs more: a NanoaudioError
    at inference, not an IndexError."""
    from nanoaudio.model import ASRModel

    raw = json.loads((BUNDLED / "config.json").read_text())
    raw["decoder"]["config"]["max_position_embeddings"] = 10
    (bundled_copy / "config.json").write_text(json.dumps(raw))
    try:
        model = ASRModel.load(bundled_copy)
    finally:
        shutil.copy(BUNDLED / "config.json", bundled_copy / "config.json")
    model.decoder(torch.zeros(1, 10, dtype=torch.long))  # 10 positions: fine
    with pytest.raises(NanoaudioError, match="position 19, beyond its max_position_embeddings 10"):
        model.decoder(torch.zeros(1, 20, dtype=torch.long))


def test_bad_hf_configs_through_load_decoder_and_load_encoder(tmp_path):
    from nanoaudio.decoder import load_decoder
    from nanoaudio.encoder import load_encoder

    decoder = {"model_type": "qwen3", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": "four", "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    cases = [(load_decoder, decoder, 'num_hidden_layers: "four" is not an integer'),
             (load_decoder, decoder | {"num_hidden_layers": 2, "max_position_embeddings": -5},
              "max_position_embeddings: -5: must be > 0"),
             (load_decoder, decoder | {"num_hidden_layers": 2, "rope_scaling": "llama3"}, "rope_scaling"),
             (load_decoder, None, "the file is a JSON null, not an object"),
             (load_encoder, {"model_type": "hubert", "conv_dim": "512"}, "conv_dim"),
             (load_encoder, {"model_type": "hubert", "num_attention_heads": 0}, "num_attention_heads: 0"),
             (load_encoder, {"model_type": "hubert", "conv_kernel": []}, "conv_kernel")]
    for i, (load, config, words) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
        with pytest.raises(NanoaudioError) as e:
            load(folder)
        assert str(folder / "config.json") in str(e.value) and words in str(e.value), str(e.value)


# -----------------------------------------------------------------------------
# the rotary table: built for the positions used


def tiny_decoder(max_positions):
    from nanoaudio.decoder import Decoder

    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return Decoder(cfg).eval()


def test_a_huge_max_position_embeddings_costs_nothing_until_used(monkeypatch):
    import nanoaudio.decoder as decoder

    small, huge = tiny_decoder(4096), tiny_decoder(20_000_000)  # the same weights: same seed
    assert huge.rope_cos.shape[0] <= decoder.ROPE_ROWS  # not 2e7 rows (2e7 x 4 x 2 x 4 bytes = 640 MB here)
    ids = torch.randint(0, 64, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = small(ids)
        assert torch.equal(huge(ids), want)
        # a table that starts tiny and grows on demand gives the same bits as a full one
        monkeypatch.setattr(decoder, "ROPE_ROWS", 3)
        grown = tiny_decoder(4096)
        assert grown.rope_cos.shape[0] == 3
        assert torch.equal(grown(ids), want) and grown.rope_cos.shape[0] == 37


def test_a_2e7_position_decoder_loads_in_little_memory(tmp_path):
    """Through load_decoder, in a fresh process: its peak memory stays far below the 640 MB a full table takes."""
    from nanoaudio.decoder import Decoder

    torch.manual_seed(0)
    model = tiny_decoder(20_000_000)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_config()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              folder / "model.safetensors")
    assert isinstance(model, Decoder)
    code = ("import resource, sys, torch\nfrom nanoaudio.decoder import load_decoder\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "m = load_decoder(sys.argv[1])\nm(torch.zeros(1, 5, dtype=torch.long))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 100  # MB more than the bare imports took


# -----------------------------------------------------------------------------
# the hub: a server that accepts connections and never answers


def test_a_silent_hub_times_out_with_one_line(tmp_path):
    timeout = 2
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}", "HF_HUB_ETAG_TIMEOUT": str(timeout),
                "HF_HUB_DOWNLOAD_TIMEOUT": str(timeout), "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
        code = ("import sys, time\nfrom nanoaudio import run_cli\nfrom nanoaudio.decoder import load_decoder\n"
                "t = time.time()\ntry:\n    run_cli(lambda: load_decoder('someone/tiny-model'))\n"
                "finally:\n    print(f'{time.time() - t:.1f}')\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.close()
    line = one_error(r, "someone/tiny-model", "HF_HUB_OFFLINE=1", f"within {timeout} s")
    assert r.returncode == 1, line
    seconds = float(r.stdout.split()[-1])
    assert seconds < timeout + 6, seconds  # the timeout plus the hub client's one-time setup (~1-3 s here)


@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_silent_hub_or_offline_mode_uses_what_the_cache_holds(tmp_path, offline):
    sha = "a" * 40  # a cache laid out as huggingface_hub writes it: refs/main -> snapshots/<sha>/<files>
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-model"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}", "HF_HUB_ETAG_TIMEOUT": "2",
                "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": offline, "PYTHONPATH": str(ROOT)}
        code = "from nanoaudio.load import hub_download\nprint(hub_download('someone/tiny-model', ['*.json']))"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == repo / "snapshots" / sha


# -----------------------------------------------------------------------------
# audio cut off mid-file, unreadable audio


@pytest.mark.parametrize("fmt, subtype, suffix", [("WAV", "PCM_16", ".wav"), ("WAV", "FLOAT", ".wav"),
                                                  ("MP3", "MPEG_LAYER_III", ".mp3")])
def test_a_truncated_file_warns_with_both_lengths_and_returns_what_decoded(tmp_path, capsys, fmt, subtype, suffix):
    from nanoaudio.audio import load_audio

    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    whole = tone(tmp_path / f"whole{suffix}", seconds=2.0, subtype=subtype, fmt=fmt)
    assert len(load_audio(whole)) == 32000 and "warning" not in capsys.readouterr().err  # healthy: no warning
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    wav = load_audio(cut)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and str(cut) in err[0] and "32000" in err[0] and str(len(wav)) in err[0], err
    assert 8000 < len(wav) < 20000


def test_stream_errors_name_the_source_not_a_python_object():
    from nanoaudio.audio import load_audio

    with pytest.raises(NanoaudioError) as e:
        load_audio(b"this is not audio at all, just text", name="<stdin>")
    assert str(e.value).startswith("<stdin>: ") and "BytesIO" not in str(e.value) and "0x" not in str(e.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_names_the_cause(tmp_path):
    from nanoaudio.audio import load_audio

    path = tone(tmp_path / "locked.wav")
    path.chmod(0)
    with pytest.raises(NanoaudioError, match="Permission denied"):
        load_audio(path)


# -----------------------------------------------------------------------------
# interrupted saves: remove_stale_tmp


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_remove_stale_tmp_cleans_up_after_a_killed_save(tmp_path):
    run_dir = tmp_path / "run"
    # a save really killed in the middle (kill -9): atomic_dir leaves its .last.tmp-PID folder behind
    code = ("import os, signal, sys\nfrom nanoaudio.load import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(run_dir / "last")], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == -signal.SIGKILL
    killed = [p.name for p in run_dir.iterdir()]
    assert len(killed) == 1 and killed[0].startswith(".last.tmp-")

    dead = dead_pid()
    (run_dir / "best").mkdir()
    (run_dir / f".best.old-{dead}").mkdir()  # killed after the new best was in place: the old one goes
    (run_dir / f".step100.old-{dead}").mkdir()  # killed between the two renames: this IS the checkpoint
    (run_dir / f".step100.old-{dead}" / "config.json").write_text("{}")
    (run_dir / f".mine.tmp-{os.getpid()}").mkdir()  # this process's own: it has not started saving yet
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / f".other.tmp-{alive.pid}").mkdir()  # a run saving right now: left alone
        (run_dir / "notes.tmp-1").write_text("not ours")  # not atomic_dir's naming: left alone
        handled = remove_stale_tmp(run_dir)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in handled) == sorted([killed[0], f".best.old-{dead}", f".step100.old-{dead}",
                                                      f".mine.tmp-{os.getpid()}"])
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["best", "step100", f".other.tmp-{alive.pid}",
                                                                "notes.tmp-1"])
    assert (run_dir / "step100" / "config.json").read_text() == "{}"  # restored, not deleted
    assert remove_stale_tmp(tmp_path / "no-such-run") == []
