"""The training loop: one Accelerator, the same script on one CPU or many GPUs, resumable at any checkpoint."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import DeviceMemoryError, InvalidParameterError
from core.train import run_dir
from core.train.config import Kind, TrainConfig

logger = logging.getLogger(__name__)

LATENT_SCALE = 8  # pixels per latent cell
SEED_STRIDE = 1_000_003  # separates the random streams of different seeds
BYTES_PER_MB = 1024 * 1024
TRAINABLE_FILE = "trainable.safetensors"  # in a checkpoint: the trained parameters only (LoRA: a few MB)
OOM_HINT = (
    "lower --batch-size (raise --grad-accum to keep the global batch), add --gradient-checkpointing, train LoRA "
    "(--lora-rank 16), use --mixed-precision bf16 (or fp16), or lower --resolution"
)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    steps: int  # optimizer steps done in total
    final_loss: float  # mean loss of the last step
    exported: Path | None  # the exported model (main process, finished runs only)
    finished: bool  # max_steps reached (else stopped by --stop-after: rerun to continue)
    notices: tuple[str, ...]  # fallbacks the user should know about


def make_accelerator(config: TrainConfig):
    """One Accelerator: GPUs when there are any, else CPU processes over gloo (under `accelerate launch` too)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    on_cpu = not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and on_cpu:
        raise InvalidParameterError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    # accelerate keeps one training state per process and refuses another precision; a second run in the same
    # process (the tests, a notebook) starts a fresh one. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=on_cpu)


def train(config: TrainConfig, echo: Callable[[str], None] | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune per `config`; every check that can fail runs before the first step."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader

    from core.recipe.sampling import ConcatConditionedUNet
    from core.train import data as train_data
    from core.train.export import export
    from core.train.model import load_models, make_trainable, noise_scheduler

    echo = echo or (lambda text: print(text, file=sys.stderr))
    # 1. Check the run folder and the dataset before loading any model
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    processes = accelerator.num_processes
    plan = run_dir.plan_run(config)
    with accelerator.main_process_first():  # a Hub dataset is downloaded once, then read from the cache
        rows = train_data.load_rows(config.data)
    rows, bad = train_data.check_rows(rows, config.max_bad_share, config.data)
    notices = [plan.notice] if plan.notice else []
    if bad:
        notices.append(f"skipped {len(bad)} of {len(rows) + len(bad)} rows whose images do not decode: {bad[0]}")

    # 2. Models (the base is checked to be SD 1.5 before its weights load)
    models = load_models(config)
    if models.notice:
        notices.append(models.notice)
    if main:
        for notice in notices:
            echo(f"note: {notice}")
        run_dir.prepare_folder(config, processes)
    accelerator.wait_for_everyone()
    set_seed(config.seed)  # LoRA's random init: the same on every process and in every run of this seed
    params = make_trainable(models.unet, config)
    model = ConcatConditionedUNet(models.unet)
    ema = None
    if config.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
        accelerator.register_for_checkpointing(ema)

    # 3. Optimizer, schedule and data (the stream starts where the checkpoint left it)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # The prepared scheduler steps once per process per optimizer step (accelerate's rule): scale its lengths so the
    # learning rate at step k is the same for any number of processes.
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup * processes,
                                 num_training_steps=config.max_steps * processes)  # fmt: skip
    start = plan.resume_from
    dataset = train_data.StreamDataset(rows, config.resolution, config.seed)
    sampler = train_data.PositionSampler(start.position if start else 0)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=train_data.collate,
                        num_workers=config.workers)  # fmt: skip
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    _checkpoint_trained_parameters_only(accelerator)
    if ema is not None:
        ema.to(accelerator.device)
    if start is not None:
        accelerator.load_state(str(start.path))
        if main:
            run_dir.trim_log(config.out, start.step)
    step = start.step if start else 0
    position = start.position if start else 0
    device = accelerator.device
    frozen_dtype = _frozen_dtype(config, device)
    models.text_encoder.to(device, dtype=frozen_dtype)
    models.vae.to(device, dtype=frozen_dtype)
    scheduler = noise_scheduler()
    empty_text = _encode_text(models, [""], device)
    per_step = config.batch_size * processes * config.grad_accum

    # 4. The loop
    end = config.max_steps if config.stop_after is None else min(config.max_steps, step + config.stop_after)
    bar = _progress_bar(config, step, main and progress)
    loss_value = float("nan")
    batches = iter(loader)
    try:
        while step < end:
            began = time.perf_counter()
            total = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                batch = next(batches)
                sync = contextlib.nullcontext() if micro == config.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss = _loss(batch, model, models, scheduler, config, empty_text, device)
                    accelerator.backward(loss / config.grad_accum)
                total += loss.detach() / config.grad_accum
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            step += 1
            position += per_step
            loss_value = accelerator.gather(total.reshape(1)).mean().item()
            seconds = time.perf_counter() - began
            if main:
                lr = lr_scheduler.get_last_lr()[0]
                run_dir.append_log(config.out, {"step": step, "loss": loss_value, "lr": lr,
                                                "seconds_per_step": round(seconds, 4),
                                                "peak_memory_mb": round(_peak_memory_mb(device), 1)})  # fmt: skip
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
            if step % config.checkpoint_every == 0 or step == end:
                _save_checkpoint(accelerator, config, step, position)
            if config.validate_every and step % config.validate_every == 0 and main:
                from core.train.validation import validate

                validate(config, models, accelerator.unwrap_model(model).unet, step, device)
    except RuntimeError as exc:
        from core.models.devices import is_out_of_memory

        if is_out_of_memory(exc):
            raise DeviceMemoryError(
                f"out of memory training at --resolution {config.resolution} with --batch-size {config.batch_size} "
                f"on {device}: {OOM_HINT}"
            ) from exc
        raise
    finally:
        if bar is not None:
            bar.close()

    # 5. Export the trained weights (the EMA ones when kept) once the run is complete
    finished = step >= config.max_steps
    accelerator.wait_for_everyone()
    exported = None
    if finished:
        if ema is not None:
            ema.copy_to(params)
        exported = export(config, models, accelerator.unwrap_model(model).unet) if main else None
    elif main:
        echo(f"note: stopped at step {step} of {config.max_steps}; run the same command again to continue")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step, loss_value, exported, finished, tuple(notices))


def _loss(batch, model, models, scheduler, config: TrainConfig, empty_text, device) -> torch.Tensor:
    """The noise-prediction loss of one micro-batch; every random draw is keyed to the sample's stream position."""
    import torch.nn.functional as F

    vae = models.vae
    size = config.resolution // LATENT_SCALE
    draws = [_draws(config.seed, p, size, scheduler.config.num_train_timesteps) for p in batch["position"]]
    timesteps, dropout, noise, vae_noise = (torch.stack(d).to(device) for d in zip(*draws, strict=True))
    ip2p = config.kind is Kind.IP2P
    with torch.no_grad():
        target = vae.encode(_pixels(batch["edited"], ip2p).to(device, vae.dtype)).latent_dist
        latents = (target.mean + target.std * vae_noise.to(target.mean.dtype)).float() * vae.config.scaling_factor
        condition = vae.encode(_pixels(batch["input"], ip2p).to(device, vae.dtype)).latent_dist.mode().float()
        if not ip2p:  # IC-Light scales its condition latents; InstructPix2Pix feeds them unscaled
            condition = condition * vae.config.scaling_factor
        text = _encode_text(models, batch["prompt"], device).float()
    p = config.conditioning_dropout
    drop_text = (dropout < 2 * p) if ip2p else (dropout < p)
    text = torch.where(drop_text[:, None, None], empty_text.float().expand_as(text), text)
    if ip2p:  # InstructPix2Pix: text alone dropped for u < p, both for p <= u < 2p, image alone for 2p <= u < 3p
        keep_image = ~((dropout >= p) & (dropout < 3 * p))
        condition = condition * keep_image[:, None, None, None]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = model(noisy, timesteps, text, condition)
    return F.mse_loss(prediction.float(), noise.float())


def _draws(seed: int, position: int, size: int, num_timesteps: int) -> tuple[torch.Tensor, ...]:
    """(timestep, dropout draw, noise, VAE sampling noise) of one sample: the same on any number of processes."""
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + position)
    timestep = torch.randint(0, num_timesteps, (), generator=generator)
    dropout = torch.rand((), generator=generator)
    noise = torch.randn((4, size, size), generator=generator)
    vae_noise = torch.randn((4, size, size), generator=generator)
    return timestep, dropout, noise, vae_noise


def _pixels(images: torch.Tensor, ip2p: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 to (B, 3, H, W) in [-1, 1]: IC-Light maps 127 to exactly 0, diffusers 127.5."""
    x = images.float()
    x = x / 127.5 - 1.0 if ip2p else x / 127.0 - 1.0
    return x.movedim(-1, 1)


@torch.no_grad()
def _encode_text(models, prompts: list[str], device) -> torch.Tensor:
    tokenizer = models.tokenizer
    ids = tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    return models.text_encoder(ids.to(device))[0]


def _frozen_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """The VAE and text encoder run in the mixed precision on GPUs (half the memory); fp32 elsewhere."""
    if device.type == "cpu" or config.mixed_precision == "no":
        return torch.float32
    return torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16


def _save_checkpoint(accelerator, config: TrainConfig, step: int, position: int) -> None:
    """accelerator.save_state into a partial folder; the main process publishes it once every process is done."""
    partial = run_dir.partial_path(config.out, step)
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.finish_checkpoint(config.out, step, position, config.keep_checkpoints)
    accelerator.wait_for_everyone()


def _checkpoint_trained_parameters_only(accelerator) -> None:
    """Checkpoints hold the parameters being trained, not the frozen rest (a LoRA checkpoint is MBs, not GBs)."""
    from safetensors.torch import load_file, save_file

    def save(models, weights, output_dir) -> None:
        weights.clear()  # only the main process fills it; our file replaces accelerate's model file
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(models[0])
            state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(state, str(Path(output_dir) / TRAINABLE_FILE))

    def load(models, input_dir) -> None:
        model = accelerator.unwrap_model(models.pop())
        path = Path(input_dir) / TRAINABLE_FILE
        if not path.is_file():
            raise InvalidParameterError(f"{input_dir} is not a checkpoint of this trainer (no {TRAINABLE_FILE})")
        state = load_file(str(path), device=str(accelerator.device))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise InvalidParameterError(
                f"{path} does not fit this run: {len(expected - set(state))} trained parameter(s) missing, "
                f"{len(set(state) - expected)} unexpected (was it written with another --kind or --lora-rank?)"
            )
        model.load_state_dict(state, strict=False)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress_bar(config: TrainConfig, step: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=config.max_steps, initial=step, unit="step", desc="train", file=sys.stderr)
