"""Decoder on CPU vs transformers at the Qwen3-0.6B shape: greedy decode and prefill speed, load time and memory.

    python -m pytest -q -s tests/bench/test_bench_decoder.py

Speed: one set of random weights (fp32) shared by both models, batch 1, a 128-token prompt, 32 new tokens;
prefill tok/s = 128 / time(generate 1 token), decode tok/s = 31 / (time(generate 32) - time(generate 1)),
best of 3, one torch thread (NANOAUDIO_BENCH_THREADS=N to change). Also at a small shape, where per-step
overhead rather than the weight matmuls dominates.
Load: a bf16 checkpoint on disk (model.safetensors) loaded into bf16, in a fresh subprocess each time;
peak RSS = VmHWM of /proc/self/status, also shown minus the peak the process had before loading
(python + torch + the library's imports) and after a first forward pass.
Prints tables; no timed assertions (tests/bench/conftest.py marks this file slow).
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


def build_pair(shape):
    """A transformers Qwen3ForCausalLM with random weights and a nanoaudio Decoder sharing its tensors."""
    from nanoaudio.config import DecoderConfig
    from nanoaudio.decoder import Decoder

    cfg = transformers.Qwen3Config(**shape)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = transformers.Qwen3ForCausalLM(cfg)
    hf.to_empty(device="cpu")  # random weights without transformers' slow init: N(0, 0.02), norms 1
    hf.tie_weights()  # to_empty gave lm_head its own (empty) tensor
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0, 0.02)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(cfg)  # its buffers were left empty by to_empty
    with torch.device("meta"):
        ours = Decoder(DecoderConfig.from_hf_config(cfg.to_dict()))
    ours.load_weights(hf.state_dict(), "transformers model")  # the same tensors: identical weights, no copy
    return hf.eval(), ours.eval()


def speed(hf, ours, vocab):
    ids = torch.randint(0, vocab, (1, PROMPT))
    mask = torch.ones_like(ids)

    def run_hf(n):
        return hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=0, eos_token_id=None)

    def run_ours(n):
        return ours.generate(ids, mask, max_new_tokens=n, eos_token_id=[])

    rows = []
    with torch.inference_mode():
        assert run_ours(8).tolist() == run_hf(8).tolist()  # same weights, same greedy tokens
        for name, run in (("transformers", run_hf), ("nanoaudio", run_ours)):
            t1 = best_time(lambda run=run: run(1))
            tn = best_time(lambda run=run: run(NEW))
            rows.append((name, PROMPT / t1, (NEW - 1) / (tn - t1)))
    return rows


@pytest.mark.skipif(mem_available_gb() < 6, reason="needs ~6 GB of free memory (fp32 0.6B weights, shared)")
def test_bench_decode_and_prefill_vs_transformers():
    # One thread by default: on a shared machine a second OpenMP thread that gets descheduled makes every op
    # wait at a barrier, and the numbers become noise. NANOAUDIO_BENCH_THREADS=0 keeps torch's default.
    threads = int(os.environ.get("NANOAUDIO_BENCH_THREADS", "1"))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    small = {**SHAPE, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
    print(f"\ngreedy generation, fp32, CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
          f"batch 1, prompt {PROMPT} tokens, {NEW} new tokens, best of {REPEATS}")
    print(f"{'shape':22s} {'':14s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for label, shape in (("Qwen3-0.6B", SHAPE), ("small (8 x 256, V 4k)", small)):
        hf, ours = build_pair(shape)
        rows = speed(hf, ours, shape["vocab_size"])
        del hf, ours
        for name, pre, dec in rows:
            print(f"{label:22s} {name:14s} {pre:14.1f} {dec:13.2f}")
        print(f"{label:22s} {'speed-up':14s} {rows[1][1] / rows[0][1]:13.2f}x {rows[1][2] / rows[0][2]:12.2f}x")


# Peak memory: VmHWM (the high-water mark of resident memory) from /proc/self/status. Not ru_maxrss: Linux
# carries a forked parent's maxrss over exec, so a child of a big pytest process would report the parent's.
LOAD = """
import json, sys, time
import torch
{imports}
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
t = time.perf_counter()
m = {load}
dt = time.perf_counter() - t
assert next(m.parameters()).dtype == torch.bfloat16
peak = hwm()
with torch.inference_mode():  # touches every weight: lazily mapped files become resident here
    m(torch.tensor([[1, 2, 3]]))
print(json.dumps({{"s": dt, "peak": peak, "before": before, "used": hwm()}}))
"""
LOAD_OURS = LOAD.format(imports="from nanoaudio.decoder import load_decoder", load="load_decoder(sys.argv[1])")
LOAD_HF = LOAD.format(imports="from transformers import AutoModelForCausalLM",
                      load="AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from Linux's /proc")
@pytest.mark.skipif(mem_available_gb() < 5, reason="needs ~5 GB of free memory")
def test_bench_load_time_and_peak_rss(tmp_path):
    from checkpoints import save_checkpoint

    from nanoaudio.config import DecoderConfig
    from nanoaudio.decoder import Decoder

    cfg = DecoderConfig.from_hf_config({"model_type": "qwen3", **SHAPE, "torch_dtype": "bfloat16"})
    model = Decoder(cfg)  # init_weights: N(0, 0.02)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
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
        rows.append((name, run["s"], run["peak"], run["peak"] - run["before"], run["used"]))
    gb = 1e9
    print(f"\nload a bf16 Qwen3-0.6B-shape checkpoint ({size / gb:.2f} GB model.safetensors) into bf16, CPU")
    print("peak RSS: after loading | minus the peak before loading (python + imports) | after a first forward")
    print(f"{'':14s} {'load s':>7s} {'peak GB':>8s} {'/ file':>7s} {'load-only GB':>13s} {'/ file':>7s} "
          f"{'+forward GB':>12s} {'/ file':>7s}")
    for name, s, peak, delta, used in rows:
        print(f"{name:14s} {s:7.2f} {peak / gb:8.2f} {peak / size:7.2f} {delta / gb:13.2f} {delta / size:7.2f} "
              f"{used / gb:12.2f} {used / size:7.2f}")
    print("(transformers memory-maps the file: its weights become resident only when first used)")
