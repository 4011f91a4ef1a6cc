r"""LoRA: adapt a frozen decoder by training a low-rank update next to some of its linears.

                 y = W x  +  (alpha / r) * B A dropout(x)
        ┌─────────────────┐        ╭───────────╮
        │   base_layer    │         \  lora_B  /     B: (out, r), zeros at init, so at step 0 the model is
        │  W (out, in)    │          ╰─────────╯        exactly the pretrained one
        │    frozen       │          ╭─────────╮
        │                 │         /  lora_A   \    A: (r, in), Kaiming-uniform (a = sqrt 5), as PEFT
        └─────────────────┘        ╰─────────────╯
                 ▲                        ▲            trainable: r * (in + out) per linear, versus in * out
                 └────────── x ───────────┘

- `apply_lora(decoder, targets, r, alpha, dropout)` swaps the named nn.Linear modules (by default the course's
  attention projections q/k/v/o; the MLP's gate/up/down are selectable too) for LoRALinear, and freezes every
  other parameter of the decoder.
- merge()/unmerge(): fold B A into W for inference at no extra cost (and back); `merge_lora(model)` folds every
  adapter and puts the plain nn.Linear back, so the decoder saves as an ordinary checkpoint again.
- Adapters are saved in PEFT's layout: adapter_config.json + adapter_model.safetensors with PEFT's key names
  (`base_model.model.` + our parameter name, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight),
  so `peft.PeftModel.from_pretrained(transformers_model, folder)` loads what nanoaudio trained, and back.
References: LoRA (arXiv:2106.09685); peft/tuners/lora/layer.py (init, scaling, key names); litgpt lora.py.
"""

import json
import math
from pathlib import Path

import torch
from torch import nn

from nanoaudio import NanoaudioError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the decoder's linears
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # the course's: the attention projections
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model: two wrappers' names


class LoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)  # the pretrained W, never updated
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # so changing r does not change the update's scale at a fixed lr
        self.merged = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """A ~ Kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)) and B = 0, exactly PEFT's default (B A = 0 at start)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B A: the (out, in) update, in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., in) -> (..., out)
        if self.merged:
            return y  # W already holds W + scaling * B A
        x = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):
            # fp32 LoRA weights next to a bf16 base (train.py) without autocast: run the branch in their dtype.
            # Under autocast the matmuls already run in bf16, and an fp32 copy of x would only cost memory.
            x = x.to(self.lora_A.weight.dtype)
        a = self.lora_A(x)  # (..., in) -> (..., r)
        return y + (self.lora_B(a) * self.scaling).to(y.dtype)  # (..., r) -> (..., out)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() + self.delta_weight()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:  # exact in fp32; in bf16 the round trip loses the low bits of W
            w = self.base_layer.weight
            w.copy_((w.float() - self.delta_weight()).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, targets=DEFAULT_TARGETS, r: int = 8, alpha: float = 16,
               dropout: float = 0.05) -> nn.Module:
    """Wrap every nn.Linear whose attribute name is in `targets` in a LoRALinear; freeze everything else."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise NanoaudioError(f"LoRA targets {unknown or list(targets)} are not decoder linears; choose from {TARGETS}")
    if r < 1:
        raise NanoaudioError(f"LoRA rank r must be >= 1, got {r}")
    if lora_layers(model):
        raise NanoaudioError("apply_lora: the model already has LoRA layers")
    model.requires_grad_(False)  # the whole pretrained decoder is frozen; only A and B will train
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if name in targets and isinstance(child, nn.Linear)]
    if not swaps:
        raise NanoaudioError(f"apply_lora: no nn.Linear named {targets} in {type(model).__name__}")
    for parent, name, child in swaps:
        setattr(parent, name, LoRALinear(child, r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain nn.Linear back (a regular model again)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                child.merge()
                setattr(parent, name, child.base_layer)
    return model


# -----------------------------------------------------------------------------
# adapters on disk, in the PEFT layout


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{our parameter name: tensor} of every LoRA weight (e.g. model.layers.0.self_attn.q_proj.lora_A.weight)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def save_adapter(model: nn.Module, folder, base_model_name: str | None = None) -> None:
    """Write adapter_config.json + adapter_model.safetensors (PEFT's names and fields) into folder."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise NanoaudioError("save_adapter: the model has no LoRA layers (call apply_lora first)")
    first = next(iter(layers.values()))
    if any(m.merged for m in layers.values()):
        raise NanoaudioError("save_adapter: unmerge() the LoRA layers first (merged weights are not an adapter)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {  # the LoraConfig fields PEFT needs; everything else takes PEFT's defaults
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name,
        "r": first.r, "lora_alpha": first.alpha,
        "lora_dropout": getattr(first.lora_dropout, "p", 0.0),
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in layers}),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tensors = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Load a PEFT-layout adapter (ours or one PEFT saved) into model, strictly; applies LoRA first if needed."""
    from safetensors import safe_open

    from nanoaudio.load import read_json

    folder = Path(folder)
    config = read_json(folder / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise NanoaudioError(f"{folder / 'adapter_config.json'}: only plain LoRA adapters are supported")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if not lora_layers(model):
        apply_lora(model, targets, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise NanoaudioError(f"{path}: missing (a PEFT adapter folder holds adapter_model.safetensors)")
    with safe_open(path, framework="pt") as f:
        tensors = {k.removeprefix(PEFT_PREFIX): f.get_tensor(k) for k in f.keys()}
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise NanoaudioError(f"{path}: adapter does not match the model (missing {missing[:2]}, unexpected "
                             f"{unexpected[:2]}; r/targets in adapter_config.json: {config['r']}/{targets})")
    for name, m in lora_layers(model).items():
        if m.r != config["r"] or m.alpha != config["lora_alpha"]:
            raise NanoaudioError(f"{folder / 'adapter_config.json'}: r={config['r']}, lora_alpha="
                                 f"{config['lora_alpha']} but {name} has r={m.r}, alpha={m.alpha}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, t in tensors.items():
            if t.shape != params[k].shape:
                raise NanoaudioError(f"{path}: {k} has shape {tuple(t.shape)}, the model expects "
                                     f"{tuple(params[k].shape)}")
            params[k].copy_(t)
    return model
