"""Write a diffusers SD 1.5 pipeline as one checkpoint in the original (LDM/CompVis) layout, like realisticVisionV51.

The key mapping is the inverse of diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_ldm_clip_checkpoint` (diffusers/loaders/single_file_utils.py), so the file exercises the same conversion
that a real single-file checkpoint goes through.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# Real SD 1.5 files carry CLIP's position ids as a tensor next to the weights; the loader must tolerate them.
CLIP_POSITION_IDS = "text_model.embeddings.position_ids"

# UNet modules outside the down/mid/up blocks.
UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers ResnetBlock2D -> LDM ResBlock; in_layers = [norm, SiLU, conv], out_layers = [norm, SiLU, dropout, conv].
UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers VAE mid-block Attention -> LDM AttnBlock, whose q/k/v/proj_out are 1x1 convolutions.
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_CONV_ATTENTION = ("q", "k", "v", "proj_out")
VAE_MID_ATTENTION = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_[qkv]|to_out\.0)\.(.+)")
# VAE keys whose name is the same in both layouts.
VAE_SAME_NAME = re.compile(r"(encoder\.|decoder\.)?(conv_in|conv_out)\.\w+|(post_)?quant_conv\.\w+")


def _unet_resnet(rest: str) -> str:
    name, param = rest.split(".", 1)
    return f"{UNET_RESNET_NAMES[name]}.{param}"


def _unet_layer(kind: str, rest: str) -> str:
    """Inside one LDM sequential block the resnet is module 0 and the spatial transformer module 1."""
    return f"0.{_unet_resnet(rest)}" if kind == "resnets" else f"1.{rest}"


def unet_key_to_ldm(key: str, layers_per_block: int, attention_up_blocks: set[int]) -> str:
    """The LDM name of one diffusers UNet2DConditionModel key (without the `model.diffusion_model.` prefix)."""
    # LDM numbers every (resnet, attention) layer of a level, and its down/upsampler, as one sequential block.
    per_level = layers_per_block + 1
    for name, ldm in UNET_TOP_LEVEL.items():
        if key.startswith(name + "."):
            return ldm + key[len(name) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = 1 + int(m[1]) * per_level + int(m[3])
        return f"input_blocks.{index}.{_unet_layer(m[2], m[4])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per_level + layers_per_block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"  # resnet, attention, resnet
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = int(m[1]) * per_level + int(m[3])
        return f"output_blocks.{index}.{_unet_layer(m[2], m[4])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if block in attention_up_blocks else 1  # the upsampler follows the attention when there is one
        return f"output_blocks.{block * per_level + layers_per_block}.{slot}.conv.{m[2]}"
    raise ValueError(f"no LDM name for UNet key {key!r}")


def vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    """The LDM name of one diffusers AutoencoderKL key (without the `first_stage_model.` prefix)."""
    if VAE_SAME_NAME.fullmatch(key):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    # The LDM decoder numbers its levels from the lowest resolution up, diffusers from the first one run.
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := VAE_MID_ATTENTION.fullmatch(key):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION_NAMES[m[2]]}.{m[3]}"
    raise ValueError(f"no LDM name for VAE key {key!r}")


def clip_key_to_ldm(key: str) -> str:
    """The LDM name of one CLIPTextModel key (transformers >= 5.6 drops the `text_model.` level; LDM keeps it)."""
    return CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)


def ldm_state_dict(diffusers_folder: Path) -> dict[str, torch.Tensor]:
    """UNet, VAE and CLIP text encoder of a diffusers SD 1.5 folder as one state dict with the original key names."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = str(diffusers_folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")

    state: dict[str, torch.Tensor] = {}
    layers_per_block = unet.config.layers_per_block
    attention_up_blocks = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    for key, value in unet.state_dict().items():
        state[UNET_PREFIX + unet_key_to_ldm(key, layers_per_block, attention_up_blocks)] = value
    num_up_blocks = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        name = vae_key_to_ldm(key, num_up_blocks)
        if name.rsplit(".", 2)[-2] in VAE_CONV_ATTENTION and name.endswith(".weight"):
            value = value[:, :, None, None]  # Linear (out, in) -> 1x1 Conv2d (out, in, 1, 1)
        state[VAE_PREFIX + name] = value
    for key, value in text_encoder.state_dict().items():
        state[clip_key_to_ldm(key)] = value
    positions = text_encoder.config.max_position_embeddings
    state[CLIP_PREFIX + CLIP_POSITION_IDS] = torch.arange(positions, dtype=torch.int64)[None]
    sizes = len(unet.state_dict()) + len(vae.state_dict()) + len(text_encoder.state_dict()) + 1
    assert len(state) == sizes, "two diffusers keys were given the same LDM name"
    return state


def write_single_file_checkpoint(diffusers_folder: Path, out: Path) -> Path:
    """Save the pipeline in `diffusers_folder` as one .safetensors with the original SD 1.5 key names."""
    from safetensors.torch import save_file

    state = {key: value.detach().contiguous().clone() for key, value in ldm_state_dict(diffusers_folder).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
