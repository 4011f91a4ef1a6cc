"""Training checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

    out/last/                    (load.atomic_dir: a crash never leaves a half-written folder)
      config.json, model.safetensors, adapter_*, tokenizer*     the model (ASRModel.save_to)
      optimizer.safetensors      AdamW's moments and the torch (and CUDA) RNG states, as tensors: no pickle
      trainer_state.json         step, elapsed seconds, param groups, Python/NumPy RNG states, data positions,
                                 the two stages' switch step, the run's settings (args)

`save_checkpoint` writes it; `load_trainer_state` puts an optimizer, the RNGs and the data iterators back where
they were; `prepare_out` cleans an output folder before a run (a killed save's temporary folders, log lines
past the checkpoint a resumed run will write again).
"""

import json
import random
from pathlib import Path

import numpy as np
import torch

from nanoaudio import NanoaudioError
from nanoaudio.load import atomic_dir, atomic_file, read_json, remove_stale_tmp


def save_checkpoint(folder, model, optimizer, step, train_batches, log, args=None, extra=None):
    """extra: more entries for trainer_state.json (elapsed seconds, the stages' switch step, the curriculum's data
    position)."""
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        model.save_to(tmp)
        # optimizer tensors go to safetensors (no pickle); the rest is JSON
        opt = optimizer.state_dict()
        tensors, state = {}, {}
        for pid, st in opt["state"].items():
            state[pid] = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
                    state[pid][k] = "tensor"
                else:
                    state[pid][k] = v
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, tmp / "optimizer.safetensors")
        trainer = {
            "step": step, "param_groups": opt["param_groups"], "state": state,
            "rng_python": random.getstate()[1], "rng_numpy": np.random.get_state()[1].tolist(),
            "rng_numpy_pos": int(np.random.get_state()[2]),  # where in the 624-word key numpy's stream is
            "data": train_batches.state_dict(), "log_tail": log[-5:], "args": vars(args) if args else {},
        } | (extra or {})
        (tmp / "trainer_state.json").write_text(json.dumps(trainer))


def read_trainer_state(folder) -> dict:
    """trainer_state.json of a checkpoint, or one line saying why it is not one train.py can resume."""
    state = read_json(Path(folder) / "trainer_state.json")
    need = {"step": int, "param_groups": list, "state": dict, "data": dict}
    bad = [k for k, kind in need.items() if not isinstance(state.get(k) if isinstance(state, dict) else None, kind)]
    if bad:
        raise NanoaudioError(f"{Path(folder) / 'trainer_state.json'}: corrupt (missing or wrong: {', '.join(bad)})")
    return state


def load_trainer_state(folder, optimizer, train_batches, easy_batches=None) -> dict:
    """Restore optimizer, RNG and data positions from a checkpoint -> its trainer_state.json (step, stage2_step...)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    trainer = read_trainer_state(folder)
    path = folder / "optimizer.safetensors"
    if not path.is_file():
        raise NanoaudioError(f"{path}: missing (not a training checkpoint?)")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise NanoaudioError(f"{path}: unreadable, truncated or corrupt ({e})") from None

    def layout(groups):
        return [(len(g["params"]), g.get("encoder", False)) for g in groups]

    saved, ours = layout(trainer["param_groups"]), layout(optimizer.param_groups)
    if saved != ours:
        raise NanoaudioError(f"{folder}: its optimizer state holds parameter groups {saved} (size, encoder?), this "
                             f"model's are {ours}: a checkpoint of another model, or from an older train.py")
    try:
        state = {int(pid): {k: (tensors[f"{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
                 for pid, st in trainer["state"].items()}
        rng_torch = tensors["rng.torch"]
    except KeyError as e:
        raise NanoaudioError(f"{path}: tensor {e} missing: the file does not match trainer_state.json") from None
    optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    torch.set_rng_state(rng_torch)
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate((3, tuple(trainer["rng_python"]), None))
    np.random.set_state(("MT19937", np.array(trainer["rng_numpy"], dtype=np.uint32),
                         trainer.get("rng_numpy_pos", 624), 0, 0.0))
    train_batches.load_state_dict(trainer["data"])
    if easy_batches is not None and trainer.get("easy_data"):
        easy_batches.load_state_dict(trainer["easy_data"])
    return trainer


def prepare_out(out: Path, step: int = 0) -> None:
    """Make the output folder ready for a run that starts (or resumes) at `step`.

    - temporary folders of a save that was killed (`.last.tmp-PID`, up to a whole model's size) are removed;
    - log.jsonl keeps only the records up to `step`: a run killed after its last checkpoint logged steps that the
      resumed run will log again, and the log must read as one run.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    log = out / "log.jsonl"
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # the half line of a process killed while writing it
    with atomic_file(log) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))
