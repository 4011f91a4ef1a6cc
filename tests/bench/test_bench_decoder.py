"""Decoder on CPU vs transformers at the Qwen3-0.6B shape: greedy decode and prefill speed, load time and memory.

    python -m pytest -q -s tests/bench/test_bench_decoder.py

Speed: one set of random weights (fp32) shared by both models, batch 1, a 128-token prompt, 32 new tokens;
prefill tok/s = 128 / time(generate 1 token), decode tok/s = 31 / (time(generate 32) - time(generate 1)),
best of 3. Load: a bf16 checkpoint on disk (model.safetensors), loaded into bf16 in a fresh subprocess each;
peak RSS from resource.getrusage (ru_maxrss), also shown minus the RSS the process had before loading
(python + torch). Prints tables; no timed assertions (this file is marked slow by tests/bench/conftest.py).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for checkpoints.py

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).parents[2]
SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
             rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)  # Qwen/Qwen3-0.6B
PROMPT, NEW, REPEATS = 128, 32, 3


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def best_time(fn, repeats=REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@pytest.mark.skipif(mem_available_gb() < 8, reason="needs ~8 GB of free memory (two 0.6B models share fp32 weights)")
def test_bench_decode_and_prefill_vs_transformers():
    from nanoaudio.config import DecoderConfig
    from nanoaudio.decoder import Decoder

    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(**SHAPE)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = transformers.Qwen3ForCausalLM(cfg)
    hf.to_empty(device="cpu")  # random weights without transformers' slow init: N(0, 0.02), norms 1
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0, 0.02)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(cfg)  # its buffers were left empty by to_empty
    hf.eval()
    ours_cfg = DecoderConfig.from_hf_config(cfg.to_dict())
    with torch.device("meta"):
        ours = Decoder(ours_cfg)
    ours.load_weights(hf.state_dict(), "transformers model")  # the same tensors: identical weights, no copy
    ours.eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (1, PROMPT))
    mask = torch.ones_like(ids)

    def run_hf(n):
        return hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=0, eos_token_id=None)

    def run_ours(n):
        return ours.generate(ids, mask, max_new_tokens=n, eos_token_id=[])

    with torch.inference_mode():
        assert run_ours(8).tolist() == run_hf(8).tolist()  # same weights, same greedy tokens
        rows = []
        for name, run in (("transformers", run_hf), ("nanoaudio", run_ours)):
            t1 = best_time(lambda: run(1))
            tn = best_time(lambda: run(NEW))
            rows.append((name, PROMPT / t1, (NEW - 1) / (tn - t1)))
    print(f"\nQwen3-0.6B shape, fp32, CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), batch 1, "
          f"prompt {PROMPT}, {NEW} new tokens, best of {REPEATS}")
    print(f"{'':14s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for name, pre, dec in rows:
        print(f"{name:14s} {pre:14.1f} {dec:13.2f}")
    print(f"{'speed-up':14s} {rows[1][1] / rows[0][1]:13.2f}x {rows[1][2] / rows[0][2]:12.2f}x")


LOAD_OURS = """
import json, resource, sys, time
import torch
from nanoaudio.decoder import load_decoder
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
m = load_decoder(sys.argv[1])
dt = time.perf_counter() - t
assert next(m.parameters()).dtype == torch.bfloat16
print(json.dumps({"s": dt, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before": before * 1024}))
"""
LOAD_HF = """
import json, resource, sys, time
import torch, transformers
from transformers import AutoModelForCausalLM
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
dt = time.perf_counter() - t
assert next(m.parameters()).dtype == torch.bfloat16
print(json.dumps({"s": dt, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before": before * 1024}))
"""


@pytest.mark.skipif(mem_available_gb() < 5, reason="needs ~5 GB of free memory")
def test_bench_load_time_and_peak_rss(tmp_path):
    from checkpoints import save_checkpoint

    from nanoaudio.config import DecoderConfig
    from nanoaudio.decoder import Decoder

    cfg = DecoderConfig.from_hf_config({"model_type": "qwen3", **SHAPE, "torch_dtype": "bfloat16"})
    with torch.device("meta"):
        model = Decoder(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    del model
    folder = save_checkpoint(tmp_path / "qwen3-0.6b-shape", state, cfg.to_hf_config())
    del state
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    for name, code in (("transformers", LOAD_HF), ("nanoaudio", LOAD_OURS)):
        runs = []
        for _ in range(2):  # the first run also warms the page cache; keep the faster
            r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env)
            assert r.returncode == 0, r.stderr[-2000:]
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        run = min(runs, key=lambda x: x["s"])
        rows.append((name, run["s"], run["peak"], run["peak"] - run["before"]))
    gb = 1e9
    print(f"\nload a bf16 Qwen3-0.6B-shape checkpoint ({size / gb:.2f} GB model.safetensors) into bf16, CPU")
    print(f"{'':14s} {'load s':>7s} {'peak RSS GB':>12s} {'/ file':>7s} {'peak - start GB':>16s} {'/ file':>7s}")
    for name, s, peak, delta in rows:
        print(f"{name:14s} {s:7.2f} {peak / gb:12.2f} {peak / size:7.2f} {delta / gb:16.2f} {delta / size:7.2f}")
