"""The CPU acceleration layer behind one door: `install` once at load time, `sampling_context` around sampling.

Nothing outside this package knows the CPU tricks. `install` routes the UNet's attention through a native kernel
(`attention`), rewrites the UNet and VAE for oneDNN with packed weights and fused epilogues (`fusion`), runs their
norms in a native kernel (`norms`) and lets the fused UNet compute classifier-free guidance's shared prefix once;
`sampling_context` keeps the UNet's big tensors in glibc's heap while it samples (`heap`). Off CPU both leave the
models as they are; an fp32 CPU placement only gets channels_last memory. `ICLIGHT_CPU_ATTENTION`,
`ICLIGHT_CPU_FUSION`, `ICLIGHT_CPU_OPS` and `ICLIGHT_CPU_ALLOCATOR` switch the parts off one by one
(docs/cpu-kernels.md).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from core.accel import attention, fusion, heap, norms
from core.accel.heap import release_cpu_memory
from core.models.devices import CPU, Placement

__all__ = ["AccelStatus", "install", "plain_layers", "release_cpu_memory", "sampling_context"]


@dataclass(frozen=True)
class AccelStatus:
    """What `install` set up, for the status line, and the VAE to use."""

    vae: nn.Module  # the VAE to run: the one given, or its fused copy when the caller's module must stay as it is
    attention: str = "SDPA"  # the UNet's attention: "AMX kernel (...)", "AVX512-BF16 kernel (...)" or "SDPA (why)"
    unet_ops: str = "eager"  # how the UNet's layers run ("fused oneDNN (...)" or "eager (why)")
    vae_ops: str = "eager"  # how the VAE's layers run, likewise


def install(unet: nn.Module, vae: nn.Module, placement: Placement, vae_owned: bool = True) -> AccelStatus:
    """Set up the CPU path for a placed diffusers UNet and VAE (fully on bf16 CPU placements; nothing off CPU).

    `vae_owned=False` marks a caller's VAE: when it would be rewritten, a copy is rewritten and returned instead.
    Running it again on the same models changes nothing; after their weights changed inside `plain_layers` the
    models are already repacked. Ends by handing the load's freed heap back to the OS, on every device.
    """
    attention_used, unet_ops, vae_ops = "SDPA", "eager", "eager"
    if placement.cpu_attention:
        attention_used = attention.install(unet).reason
    if placement.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if placement.cpu_fusion:  # after channels_last: the packed weights are opaque to .to()
        kernel = attention.load_kernel()[0] if placement.cpu_attention else None
        ops, ops_reason = norms.load_ops() if placement.unet_dtype == torch.bfloat16 else (None, "")
        status = fusion.install(unet, kernel, ops)
        unet_ops = status.reason
        if status.applied:
            fusion.share_identical_batches(unet)  # classifier-free guidance's shared prefix, computed once
            if ops_reason:
                unet_ops += f", norms {ops_reason}"
            # Its resnets, upsamplers and convolutions the same way; a caller's module is never modified.
            vae = vae if vae_owned else copy.deepcopy(vae)
            vae_ops = fusion.install(vae, None, ops).reason
    release_cpu_memory()
    return AccelStatus(vae=vae, attention=attention_used, unet_ops=unet_ops, vae_ops=vae_ops)


@contextlib.contextmanager
def sampling_context(placement: Placement) -> Iterator[None]:
    """Around a denoising loop: on CPU the UNet's big tensors stay in the heap, handed back on exit; else nothing.

    The exit also leaves the VAE decode that follows (the memory peak) a trimmed heap."""
    if placement.torch_device.type != CPU:
        yield
        return
    try:
        with heap.kept_heap():
            yield
    finally:
        release_cpu_memory()


@contextlib.contextmanager
def plain_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: `model` with diffusers' own layers and exact weights, to change them (merging LoRA weights, say);
    on exit a fused model is packed again from the new weights, as `install` left it. Unfused models stay as they
    are throughout."""
    with torch.no_grad():
        fused = fusion.unfuse_model(model)
    try:
        yield model
    finally:
        if fused is not None:
            kernel, ops = fused
            with torch.no_grad():
                fusion.fuse_model(model, kernel, ops)
            release_cpu_memory()
