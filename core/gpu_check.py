"""GPU check: the product's GPU paths end to end on random weights of the real shapes, one table out.

    python -m core.gpu_check                       # CUDA, full-size SD 1.5 written to a temp folder
    python -m core.gpu_check --device cpu --tiny   # the same checks on tiny models (the test suite runs this)

scripts/gpu_check.sh installs missing packages from a wheel folder first (a GPU machine without internet).
Checks: default fc and fbc relights in the default dtypes, both with --low-vram, Real-ESRGAN tiled upscaling,
fast mode (LCM), 8 images through the batch command's local engine, and parity of our path in fp32 with the
official recipe (diffusers' own pipelines and their order of random draws) on tiny models, as the largest
difference per 8-bit channel.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.finishing.upscale import WEIGHTS_FILE
from core.models.loading import Variant
from core.models.manager import ModelManager, ModelSettings
from core.models.synthetic import write_base_model, write_full_size_model, write_offsets
from core.params import Matting, Mode, RelightParams, Upscale
from core.service import Relighter

PARITY_TOLERANCE = 2  # 8-bit levels: GPU kernels may round differently from step to step, never by more
BATCH_SIZE = 8
TINY_BATCH_SIZE = 2  # --tiny checks the logic: two rows go through the same engine
ESRGAN_BLOCKS, TINY_ESRGAN_BLOCKS = 23, 2  # Real-ESRGAN x4plus has 23 RRDB blocks
GIB = 1024**3
PROMPT = "portrait, warm sunset light"


@dataclass
class CheckResult:
    """One row of the table."""

    name: str
    ok: bool
    seconds_per_image: float | None = None
    lowres_steps_per_s: float | None = None  # UNet steps per second at the low-res size (512x640 at full size)
    highres_steps_per_s: float | None = None  # likewise at the high-res size (768x960)
    peak_vram_gb: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Setup:
    """Where the models are and at which sizes the checks run."""

    device: str
    base: Path
    models_dir: Path
    width: int
    height: int
    steps: int
    tiny_base: Path  # tiny models for the parity check
    tiny_models_dir: Path
    tiny: bool = False  # the checks themselves run on tiny models (logic check)


class StepClock:
    """A relight callback timing UNet steps per stage (the preview it computes waits for the GPU each step)."""

    def __init__(self) -> None:
        self.last: tuple[str, float] | None = None
        self.times: dict[str, list[float]] = {}

    def __call__(self, info) -> None:
        now = time.perf_counter()
        if self.last is not None and self.last[0] == info.stage:
            self.times.setdefault(info.stage, []).append(now - self.last[1])
        self.last = (info.stage, now)

    def rate(self, stage: str) -> float | None:
        times = sorted(self.times.get(stage, []))
        return 1.0 / times[len(times) // 2] if times else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else None


def _subject(width: int, height: int) -> np.ndarray:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:height, :width]
    disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (min(width, height) / 3) ** 2
    image = np.full((height, width, 3), 127, np.uint8)
    image[disc] = (rng.rand(int(disc.sum()), 3) * 120 + 100).astype(np.uint8)
    return image


def _params(setup: Setup, mode: Mode, **changes) -> RelightParams:
    values = {"width": setup.width, "height": setup.height, "steps": setup.steps, "matting": Matting.NONE}
    if mode is Mode.FBC:
        values["bg_source"] = "left"
    return RelightParams.for_mode(mode, prompt=PROMPT, **{**values, **changes})


def _relighter(setup: Setup, low_vram: bool = False, dtype: str = "auto") -> Relighter:
    settings = ModelSettings(base_model=str(setup.base), models_dir=setup.models_dir, device=setup.device,
                             dtype=dtype, low_vram=low_vram, download=False)  # fmt: skip
    return Relighter(ModelManager(settings))


def _timed_relight(name: str, relighter: Relighter, setup: Setup, params: RelightParams) -> CheckResult:
    if not setup.tiny:  # load and warm up first, so the timing is of the relight alone
        relighter.relight(_subject(64, 64), params.replace(steps=1, width=64, height=64), save=False)
    clock = StepClock()
    _reset_peak(setup.device)
    started = time.perf_counter()
    outcome = relighter.relight(_subject(setup.width, setup.height), params, callback=clock, save=False)
    seconds = (time.perf_counter() - started) / params.num_images
    hr_width, hr_height = params.highres_size
    shapes_ok = all(image.shape == (hr_height, hr_width, 3) for image in outcome.images)
    finite = all(np.ptp(image) > 0 for image in outcome.images)
    note = "" if shapes_ok and finite else f"unexpected output: {[i.shape for i in outcome.images]}, flat={not finite}"
    return CheckResult(name, shapes_ok and finite, seconds, clock.rate("lowres"), clock.rate("highres"),
                       _peak(setup.device), note)  # fmt: skip


def check_relights(setup: Setup, low_vram: bool) -> list[CheckResult]:
    """Default fc and fbc relights (in the default dtypes of the device), optionally with --low-vram."""
    suffix = " --low-vram" if low_vram else ""
    relighter = _relighter(setup, low_vram=low_vram)
    results = [_timed_relight(f"{mode.value}{suffix}", relighter, setup, _params(setup, mode)) for mode in Mode]
    relighter.manager.unload()
    return results


def check_upscale(setup: Setup) -> CheckResult:
    """Real-ESRGAN x4plus (random weights of the real shape) over a high-res result, tiled."""
    from core.finishing.upscale import Upscaler

    _write_esrgan(setup.models_dir / WEIGHTS_FILE, TINY_ESRGAN_BLOCKS if setup.tiny else ESRGAN_BLOCKS)
    upscaler = Upscaler(setup.models_dir, device=setup.device, allow_download=False)
    hr_width, hr_height = _params(setup, Mode.FC).highres_size
    image = _subject(hr_width, hr_height)
    upscaler.upscale(_subject(32, 32), Upscale.X4)  # load + warm-up
    _reset_peak(setup.device)
    started = time.perf_counter()
    result = upscaler.upscale(image, Upscale.X4)
    seconds = time.perf_counter() - started
    ok = result.image.shape == (hr_height * 4, hr_width * 4, 3) and not result.notice
    return CheckResult("upscale x4 (tiled)", ok, seconds, peak_vram_gb=_peak(setup.device), note=result.notice or "")


def _write_esrgan(path: Path, blocks: int) -> None:
    """A random Real-ESRGAN x4plus (64 filters, 23 RRDB blocks at full size) saved as the release is (params_ema)."""
    if path.is_file():
        return
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=blocks, scale=4)
    state = {k: v * 0.1 for k, v in model.state_dict().items()}  # small weights: the 23 blocks stay finite
    torch.save({"params_ema": state}, path)


def check_fast(setup: Setup) -> CheckResult:
    """Fast mode (LCM-LoRA of the real shapes, 4 steps, guidance 1) in the default dtypes."""
    relighter = _relighter(setup)
    params = _params(setup, Mode.FC, fast="lcm", steps=4, cfg=1.0)
    result = _timed_relight("fast mode (lcm)", relighter, setup, params)
    relighter.manager.unload()
    return result


def check_batch(setup: Setup) -> CheckResult:
    """8 images through the batch command's local engine (python -m core batch): one model load, 8 rows, resumable."""
    from PIL import Image

    from core.cli import main as cli_main

    size = TINY_BATCH_SIZE if setup.tiny else BATCH_SIZE
    folder = setup.models_dir.parent / "batch"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    for i in range(size):
        Image.fromarray(np.roll(_subject(setup.width, setup.height), 7 * i, axis=1)).save(folder / "in" / f"{i}.png")
    args = ["batch", "--input", str(folder / "in"), "--out", str(folder / "out"), "--prompt", PROMPT, "--matting",
            "none", "--width", str(setup.width), "--height", str(setup.height), "--steps", str(setup.steps),
            "--base-model", str(setup.base), "--models-dir", str(setup.models_dir), "--device", setup.device,
            "--engine", "local", "--force", "--quiet"]  # fmt: skip
    _reset_peak(setup.device)
    started = time.perf_counter()
    code = cli_main(args)
    seconds = (time.perf_counter() - started) / size
    written = sorted((folder / "out").glob("*.png"))
    ok = code == 0 and len(written) == size
    note = "" if ok else f"exit {code}, {len(written)} of {size} images (see {folder / 'out'})"
    return CheckResult(f"batch of {size} (local engine)", ok, seconds, peak_vram_gb=_peak(setup.device),
                       note=note)  # fmt: skip


def check_parity(setup: Setup) -> CheckResult:
    """Tiny models in fp32: our relight against diffusers' pipelines driven as the official fc demo drives them."""
    from core.recipe.pipeline import relight

    settings = ModelSettings(base_model=str(setup.tiny_base), models_dir=setup.tiny_models_dir, device=setup.device,
                             dtype="fp32", download=False)  # fmt: skip
    models = ModelManager(settings).get(Variant.FC)
    fg = _subject(80, 96)
    params = RelightParams.for_mode("fc", prompt="a cat", width=64, height=64, steps=3, seed=99)
    ours = relight(models, fg, params).images
    theirs = official_fc(models, fg, params)
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ours, theirs, strict=True))
    return CheckResult("parity fp32 vs official", worst <= PARITY_TOLERANCE, note=f"max diff {worst}/255")


@torch.inference_mode()
def official_fc(models, fg: np.ndarray, params: RelightParams) -> list[np.ndarray]:
    """The official fc demo's process() without a light: diffusers' txt2img then img2img pipelines over a UNet whose
    forward concatenates the condition (as the demo hooks it), one generator on the model's device."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from core.imaging.convert import numpy2pytorch, pytorch2numpy, resize_and_center_crop, resize_without_crop
    from core.recipe.prompt_encoding import encode_prompt_pair

    unet = copy.deepcopy(models.unet.unet)
    unet.register_to_config(in_channels=4)  # the demo swaps conv_in and leaves the config at 4 channels
    forward = unet.forward

    def concat_forward(sample, timestep, encoder_hidden_states, **kwargs):
        cond = kwargs.pop("cross_attention_kwargs")["concat_conds"].to(sample)
        cond = torch.cat([cond] * (sample.shape[0] // cond.shape[0]), dim=0)
        return forward(torch.cat([sample, cond], dim=1), timestep, encoder_hidden_states, **kwargs)

    unet.forward = concat_forward
    vae, device = models.vae, models.device
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, algorithm_type="sde-dpmsolver++",
        use_karras_sigmas=True, steps_offset=1,
    )  # fmt: skip
    parts = dict(
        vae=vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    t2i, i2i = StableDiffusionPipeline(**parts), StableDiffusionImg2ImgPipeline(**parts)
    for pipe in (t2i, i2i):
        pipe.set_progress_bar_config(disable=True)

    def encode(images):
        pixels = numpy2pytorch(images).to(device=device, dtype=vae.dtype)
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor

    w, h, n = params.width, params.height, params.num_images
    rng = torch.Generator(device=device).manual_seed(params.seed)
    conds, unconds = encode_prompt_pair(models.tokenizer, models.text_encoder, params.positive_prompt,
                                        params.negative_prompt, device)  # fmt: skip
    common = dict(prompt_embeds=conds, negative_prompt_embeds=unconds, num_images_per_prompt=n, generator=rng,
                  output_type="latent", guidance_scale=params.cfg)  # fmt: skip
    concat = encode([resize_and_center_crop(fg, w, h)])
    latents = t2i(width=w, height=h, num_inference_steps=params.steps, cross_attention_kwargs={"concat_conds": concat},
                  **common).images  # fmt: skip
    pixels = pytorch2numpy(vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample)
    tw, th = params.highres_size
    latents = encode([resize_without_crop(p, tw, th) for p in pixels]).to(dtype=unet.dtype)
    h, w = latents.shape[2] * 8, latents.shape[3] * 8
    concat = encode([resize_and_center_crop(fg, w, h)])
    latents = i2i(image=latents, strength=params.highres_denoise, width=w, height=h,
                  num_inference_steps=int(round(params.steps / params.highres_denoise)),
                  cross_attention_kwargs={"concat_conds": concat}, **common).images  # fmt: skip
    return pytorch2numpy(vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample)


def prepare(work: Path, device: str, tiny: bool) -> Setup:
    """Write the models the checks load (random weights in the real layouts)."""
    from diffusers import UNet2DConditionModel

    from core.models.synthetic import FULL_LORA_FILE, random_lora

    tiny_base = work / "tiny" / "base"
    if not (tiny_base / "model_index.json").is_file():
        write_base_model(tiny_base)
    tiny_unet = UNet2DConditionModel.from_pretrained(str(tiny_base), subfolder="unet")
    write_offsets(tiny_unet, work / "tiny" / "models")
    if tiny:
        from safetensors.torch import save_file

        (work / "tiny" / "models" / "loras").mkdir(exist_ok=True)
        lora = random_lora(tiny_unet, ("to_q", "to_k", "conv1"), rank=4)
        save_file(lora, str(work / "tiny" / "models" / "loras" / FULL_LORA_FILE))
        models = work / "tiny" / "models"
        return Setup(device, tiny_base, models, 64, 64, 2, tiny_base, models, tiny=True)
    full = write_full_size_model(work / "full", variants=(Variant.FC, Variant.FBC), lora=True)
    return Setup(device, full / "base", full / "models", 512, 640, 25, tiny_base, work / "tiny" / "models")


CHECKS: dict[str, Callable[[Setup], list[CheckResult] | CheckResult]] = {
    "relight": lambda s: check_relights(s, low_vram=False),
    "low-vram": lambda s: check_relights(s, low_vram=True),
    "upscale": check_upscale,
    "fast": check_fast,
    "batch": check_batch,
    "parity": check_parity,
}


def run_checks(setup: Setup, names: list[str]) -> list[CheckResult]:
    """Run the named checks; a check that raises becomes a failed row with the error's last line."""
    results: list[CheckResult] = []
    for name in names:
        try:
            got = CHECKS[name](setup)
            results.extend(got if isinstance(got, list) else [got])
        except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
            traceback.print_exc(file=sys.stderr)
            results.append(CheckResult(name, False, note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"))
    return results


def format_table(results: list[CheckResult], header: str) -> str:
    """One table: check, result, seconds per image, UNet steps/s (low-res, high-res), peak VRAM, note."""

    def num(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    columns = ("check", "result", "s/image", "UNet steps/s low-res", "UNet steps/s high-res", "peak VRAM GiB", "note")
    lines = [header, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = [r.name, "pass" if r.ok else "FAIL", num(r.seconds_per_image), num(r.lowres_steps_per_s),
                 num(r.highres_steps_per_s), num(r.peak_vram_gb), r.note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"{torch.cuda.get_device_name(index)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{device}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny models at 64 px (logic check, any device)")
    parser.add_argument("--work", type=Path, help="folder for the random models (default: a temp folder, removed)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch; run on a GPU machine or pass --device cpu", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="iclight-gpu-check-"))
    try:
        setup = prepare(work, args.device, args.tiny)
        results = run_checks(setup, names)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    size = f"{setup.width}x{setup.height}, {setup.steps} steps" + (" (tiny models)" if args.tiny else "")
    date = time.strftime("%Y-%m-%d")
    print(format_table(results, f"GPU check on {describe_device(args.device)}, {date}, {size}"))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
