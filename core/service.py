"""The whole relight job around the sampler: matting, sampling, restoration, upscaling, saving.

CLI and both apps call this one object, so they never fork logic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ICLightError, InvalidParameterError
from core.finishing.matting import NORMAL_SIGMA, Matter, MattingResult
from core.imaging.inputs import LoadedImage, load_image
from core.imaging.outputs import outputs_problem
from core.lighting.lights import Light
from core.models.devices import explain_out_of_memory
from core.models.loading import Variant
from core.models.manager import ModelManager
from core.params import Matting, Mode, RelightParams, Upscale
from core.recipe.fast import active_loras
from core.recipe.sampling import StepCallback

logger = logging.getLogger(__name__)


@dataclass
class RelightOutcome:
    """What a user gets back from one relight."""

    images: list[np.ndarray]  # final uint8 RGB results (restored / upscaled as asked)
    foreground: np.ndarray  # the preprocessed foreground the model was conditioned on (input size)
    matte: np.ndarray  # float HxW in [0, 1]
    params: RelightParams
    paths: list[Path] = field(default_factory=list)  # saved PNGs, when an outputs folder is set
    notices: list[str] = field(default_factory=list)  # fallbacks the user should know about
    seconds: float = 0.0


def as_loaded(
    image: LoadedImage | np.ndarray | str | Path | bytes | None, what: str, required: bool = False
) -> LoadedImage | None:
    """Accept a LoadedImage, an array, a path or bytes; validate through the shared image loader."""
    if image is None and required:
        raise InvalidParameterError(f"no {what} image was given; upload (or paste) one first")
    if image is None or isinstance(image, LoadedImage):
        return image
    try:
        return load_image(image)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{what}: {exc}") from exc


def _memory_task(verb: str, params: RelightParams) -> str:
    """What a run was doing, for an out-of-memory message: '<verb> 2 image(s) at 512x640 (high-res 768x960)'."""
    hr_width, hr_height = params.highres_size
    size = f"{params.width}x{params.height} (high-res {hr_width}x{hr_height})"
    return f"{verb} {params.num_images} image(s) at {size}"


class Relighter:
    """One object per app/CLI run: owns the model manager, the matting models and the upscaler."""

    def __init__(
        self,
        manager: ModelManager,
        outputs_dir: Path | None = None,
        matter: Matter | None = None,
        upscaler=None,
        fc_variant: Variant = Variant.FC,
    ) -> None:
        self.manager = manager
        self.outputs_dir = Path(outputs_dir) if outputs_dir else None
        self._matter = matter
        self._upscaler = upscaler
        self.fc_variant = Variant(fc_variant)
        self._lock = threading.Lock()  # one sampling job at a time per process and model set

    def _aux_device(self) -> str:
        """Matting and upscaling run where the UNet runs (decided on first use, never at construction)."""
        return self.manager.placement.device

    @property
    def matter(self) -> Matter:
        if self._matter is None:
            self._matter = Matter(self.manager.settings.models_dir, device=self._aux_device())
        return self._matter

    @property
    def upscaler(self):
        if self._upscaler is None:
            from core.finishing.upscale import Upscaler
            from core.models.loading import offline_mode

            allow = self.manager.settings.download and not offline_mode()
            self._upscaler = Upscaler(
                self.manager.settings.models_dir, device=self._aux_device(), allow_download=allow
            )
        return self._upscaler

    def variant_for(self, mode: Mode) -> Variant:
        return Variant.FBC if Mode(mode) is Mode.FBC else self.fc_variant

    def extract(self, foreground: LoadedImage, params: RelightParams, sigma: float = 0.0) -> MattingResult:
        """Cut the subject out onto neutral grey (or keep its background) as the parameters say."""
        return self.matter.extract(foreground, params.matting, sigma=sigma, keep_background=params.keep_background)

    def relight(
        self,
        foreground,
        params: RelightParams,
        background=None,
        light_map=None,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        save: bool = True,
    ) -> RelightOutcome:
        """Run a full relight: matting, IC-Light sampling, optional restoration and upscaling, saving."""
        from core.recipe.pipeline import relight

        started = time.perf_counter()
        # 1. Validate and load inputs
        fg = as_loaded(foreground, "foreground", required=True)
        bg = as_loaded(background, "background")
        lmap = as_loaded(light_map, "light map")
        if save and (problem := outputs_problem(self.outputs_dir)):
            raise ICLightError(f"{problem}; nothing was run (free space or fix the folder's permissions)")
        # 2. Foreground extraction
        matting = self.extract(fg, params)
        notices = [matting.notice] if matting.notice else []
        if matting.method is not params.matting:
            # The results and their metadata name the method that ran (GrabCut after a fallback, the alpha channel
            # of a cut-out), so loading the settings from a result reproduces it.
            params = params.replace(matting=matting.method)
        # 3. Sampling
        with explain_out_of_memory(_memory_task("relighting", params), self.manager.placement.device):
            models = self.manager.get(self.variant_for(params.mode), loras=active_loras(params))
            with self._lock:
                result = relight(
                    models,
                    matting.foreground,
                    params,
                    background=None if bg is None else bg.rgb,
                    light_map=None if lmap is None else lmap.rgb,
                    callback=callback,
                    cancel=cancel,
                )
        # 4. Finishing
        images = [self.finish(image, fg.rgb, matting.matte, params, notices) for image in result.images]
        outcome = RelightOutcome(images, matting.foreground, matting.matte, params, notices=notices)
        # 5. Saving: a disk that fills up during the run still leaves the user the images
        if save and self.outputs_dir is not None:
            try:
                outcome.paths = self.save(images, params)
            except OSError as error:
                notices.append(f"the results could not be saved ({error.strerror or error}); download them here")
        outcome.seconds = time.perf_counter() - started
        return outcome

    def finish(
        self, image: np.ndarray, original: np.ndarray, matte: np.ndarray, params: RelightParams, notices: list[str]
    ) -> np.ndarray:
        """Detail restoration, colour preservation and upscaling, in that order."""
        from core.finishing.restore import preserve_color, restore_details

        if params.restore_details:
            image = restore_details(image, original, matte, radius=params.detail_radius)
        if params.preserve_color > 0:
            image = preserve_color(image, original, matte, strength=params.preserve_color)
        if params.upscale is not Upscale.OFF:
            up = self.upscaler.upscale(image, params.upscale)
            if up.notice and up.notice not in notices:
                notices.append(up.notice)
            image = up.image
        return image

    def save(
        self, images: list[np.ndarray], params: RelightParams, stem: str = "iclight", with_model: bool = True
    ) -> list[Path]:
        """Write each image as a PNG with its parameters (and the model that made it); never overwrites."""
        from core.imaging.outputs import MODEL_KEY, public_model_name, save_result

        assert self.outputs_dir is not None
        name, extra = f"{stem}_{params.mode.value}", {}
        if with_model:
            variant = self.variant_for(params.mode)
            placement = self.manager.placement.describe()
            model = {
                "variant": variant.value,
                "base_model": public_model_name(self.manager.settings.base_model),
                "placement": placement,
            }
            name, extra = f"{stem}_{variant.value}", {MODEL_KEY: json.dumps(model)}
        return [save_result(image, params, self.outputs_dir, stem=name, extra_text=extra) for image in images]

    def preview(
        self, foreground, light: Light, params: RelightParams | None = None, background=None
    ) -> tuple[np.ndarray, MattingResult]:
        """The instant classical relight (no weights) of the matted subject under `light`."""
        from core.lighting.preview import preview_relight

        params = params or RelightParams(matting=Matting.RMBG)
        fg = as_loaded(foreground, "foreground", required=True)
        matting = self.matter.extract(fg, params.matting, keep_background=True)
        bg = as_loaded(background, "background")
        bg_rgb = None
        if bg is not None:
            from core.imaging.convert import resize_and_center_crop

            h, w = fg.rgb.shape[:2]
            bg_rgb = resize_and_center_crop(bg.rgb, w, h)
        return preview_relight(fg.rgb, matting.matte, light, background=bg_rgb), matting

    def normals(
        self,
        foreground,
        params: RelightParams,
        background=None,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[list[np.ndarray], MattingResult]:
        """The official fbc "Compute Normal": four relights (left, right, bottom, top) turned into a normal map.

        Returns the gallery [normal map, 4 ratio images, 4 relights] as uint8 images, and the matting used.
        """
        from dataclasses import replace

        from core.finishing.normals import NORMAL_LIGHTS, compute_normals
        from core.recipe.pipeline import planned_steps, relight

        fg = as_loaded(foreground, "foreground", required=True)
        bg = as_loaded(background, "background")
        matting = self.extract(fg, params, sigma=NORMAL_SIGMA)
        per_run = sum(planned_steps(params, has_initial_image=False))
        relights = []
        task = _memory_task("computing normals for", params.replace(num_images=1))
        with explain_out_of_memory(task, self.manager.placement.device), self._lock:
            models = self.manager.get(Variant.FBC, loras=active_loras(params))
            for k, source in enumerate(NORMAL_LIGHTS):
                run_params = params.replace(mode=Mode.FBC, bg_source=source, num_images=1)
                shifted = None
                if callback is not None:
                    offset = k * per_run

                    def shifted(info, offset=offset):
                        callback(replace(info, overall_step=info.overall_step + offset,
                                         overall_total=per_run * len(NORMAL_LIGHTS)))  # fmt: skip

                bg_rgb = None if bg is None else bg.rgb
                result = relight(models, matting.foreground, run_params, bg_rgb, callback=shifted, cancel=cancel,
                                 keep_floats=True)  # fmt: skip
                relights.append(result.floats[0])  # unrounded, as the official process_normal uses them
        return compute_normals(*relights, matte=matting.matte).images(), matting
