"""Tiny LoRA files for the tiny test models, written in the diffusers and the kohya/A1111 layouts."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
RANK = 4


def lora_tensors(module: torch.nn.Module, targets, seed: int, rank: int = RANK) -> dict[str, torch.Tensor]:
    """Random peft LoRA tensors ('<module>.lora_A.weight' / 'lora_B') for `targets` in a copy of `module`."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    clone = copy.deepcopy(module)
    clone.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False))
    return {k: v.detach().clone() * 0.5 for k, v in get_peft_model_state_dict(clone).items()}


def te_module_name(key: str) -> str:
    """CLIPTextModel module names as LoRA files spell them (with the 'text_model.' level older layouts have)."""
    return key if key.startswith("text_model.") else "text_model." + key


def diffusers_file(unet_lora: dict, te_lora: dict | None, path: Path) -> Path:
    """The layout diffusers' save_lora_weights writes: 'unet.…lora_A.weight', 'text_encoder.…lora_B.weight'."""
    from safetensors.torch import save_file

    state = {f"unet.{k}": v for k, v in unet_lora.items()}
    state.update({f"text_encoder.{te_module_name(k)}": v for k, v in (te_lora or {}).items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def kohya_file(unet_lora: dict, te_lora: dict | None, path: Path, alpha: float = 2.0) -> Path:
    """The kohya/A1111 layout: 'lora_unet_<module_with_underscores>.lora_down.weight', '.lora_up.weight', '.alpha'."""
    from safetensors.torch import save_file

    state = {}
    for prefix, lora, rename in (("lora_unet_", unet_lora, str), ("lora_te_", te_lora or {}, te_module_name)):
        for key, value in lora.items():
            module, kind = key.rsplit(".lora_", 1)
            name = prefix + rename(module).replace(".", "_")
            state[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = value
            state[f"{name}.alpha"] = torch.tensor(alpha)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def expected_weights(module: torch.nn.Module, lora: dict, scale: float) -> dict[str, torch.Tensor]:
    """Ground truth: W + scale * B @ A for every targeted layer (convolutions as flattened matrices)."""
    params = dict(module.named_parameters())
    out = {}
    for key in lora:
        if ".lora_A." not in key:
            continue
        name = key.split(".lora_A.")[0]
        down, up = lora[key].float(), lora[key.replace("lora_A", "lora_B")].float()
        weight = params[f"{name}.weight"].detach().float()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        out[f"{name}.weight"] = weight + scale * delta
    return out
