"""Test helpers: write real Hugging Face checkpoint folders from tensors or from transformers models.

A folder gets what the hub would serve: config.json, model.safetensors (or N shards
model-0000i-of-0000N.safetensors + model.safetensors.index.json) and, optionally, generation_config.json.
Tensors that share storage (tied embeddings) are written once, under the first name, like save_pretrained.

    from checkpoints import save_checkpoint, save_transformers_model  # tests/ is on sys.path under pytest
    save_transformers_model(hf_model, tmp_path / "ckpt", shards=3, generation_config={"eos_token_id": [5, 6]})
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_checkpoint(folder, tensors: dict, config: dict, generation_config: dict | None = None, shards: int = 1,
                    dtype=None) -> Path:
    """Write `tensors` ({name: tensor}) and `config` (config.json dict) as a checkpoint folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue  # a tied copy (lm_head.weight aliasing embed_tokens.weight): not stored
        seen.add(key)
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().clone()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    names = list(out)
    if shards <= 1:
        save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    # round-robin names over the shards, so every shard holds a mix, like a real split by size
    weight_map, total = {}, 0
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: out[n] for n in names[i::shards]}
        save_file(part, folder / fname, metadata={"format": "pt"})
        weight_map |= {n: fname for n in part}
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_transformers_model(model, folder, generation_config: dict | None = None, shards: int = 1,
                            dtype=None, drop_config_keys=()) -> Path:
    """A transformers PreTrainedModel -> checkpoint folder (its config.to_dict() as config.json).

    drop_config_keys: remove keys from config.json, e.g. ("tie_word_embeddings",) to test a family default.
    """
    config = model.config.to_dict()
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        config.pop("dtype", None)
    for k in drop_config_keys:
        config.pop(k, None)
    return save_checkpoint(folder, model.state_dict(), config, generation_config, shards, dtype)


def randomize_(model, std: float = 0.08, seed: int = 0):
    """Re-draw every parameter in place: weights ~ N(0, std), norm weights ~ 1 + N(0, 0.1).

    transformers' own init (std 0.02, norms exactly 1) gives near-uniform logits and norm weights that a
    bug could ignore; this gives peaked logits (stable argmax) and norms that matter.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(std * noise)
    return model
