"""Training options: one frozen dataclass with a comment per field, validated in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError
from core.models.loading import DEFAULT_BASE_MODEL, default_models_dir

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
EXPORT_DTYPES = ("fp16", "fp32")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048
RESOLUTION_MULTIPLE = 8  # the VAE downsamples by 8
DEFAULT_MAX_BAD_SHARE = 0.05  # above 5 % undecodable rows the dataset is probably broken, not a few bad files
# Fields that define a run: a folder holding a run with other values is another run. Step counts, checkpoint and
# validation cadence may change when a run is resumed.
RUN_IDENTITY = (
    "data",
    "kind",
    "base_model",
    "init",
    "resolution",
    "batch_size",
    "grad_accum",
    "lr",
    "lr_scheduler",
    "warmup",
    "mixed_precision",
    "ema",
    "lora_rank",
    "conditioning_dropout",
    "seed",
)


class Kind(str, Enum):
    """What is trained: IC-Light fc (text + foreground) or InstructPix2Pix (text instruction + image)."""

    ICLIGHT_FC = "iclight-fc"
    IP2P = "ip2p"


class Init(str, Enum):
    """iclight-fc starting weights: the IC-Light fc model (base + offset) or the base with a zero-widened conv_in."""

    AUTO = "auto"  # iclight when its weights can be had, else base with a notice
    ICLIGHT = "iclight"
    BASE = "base"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run."""

    data: str  # local imagefolder dataset (metadata.jsonl) or a Hugging Face Hub dataset id
    out: Path  # run folder: checkpoints, train_log.jsonl, validation/, the exported model
    kind: Kind = Kind.ICLIGHT_FC
    base_model: str = DEFAULT_BASE_MODEL  # SD 1.5: Hub id, diffusers folder or single .safetensors file
    init: Init = Init.AUTO  # iclight-fc only
    models_dir: Path = dataclasses.field(default_factory=default_models_dir)  # holds iclight_sd15_fc.safetensors
    download: bool = True  # fetch the IC-Light fc weights from the Hub when missing (and not offline)
    resolution: int = 512  # square training size in pixels (resize to cover, centre crop)
    batch_size: int = 1  # per process; the global batch is batch_size * processes * grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # AdamW learning rate
    lr_scheduler: str = "constant"  # diffusers.optimization.get_scheduler name
    warmup: int = 0  # learning-rate warmup in optimizer steps
    max_steps: int = 1000  # optimizer steps of the whole run (a resumed run continues up to this)
    stop_after: int | None = None  # end this invocation after N more steps with a checkpoint (job time limits)
    mixed_precision: str = "no"  # no, fp16 (GPU) or bf16: autocast; trained weights stay fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass: less memory, ~30 % slower
    ema: bool = False  # keep an exponential moving average of the weights and export it
    ema_decay: float = 0.9999  # EMA decay per optimizer step
    lora_rank: int = 0  # 0: full fine-tuning; R > 0: LoRA of rank R on the attention layers (+ conv_in for fc)
    conditioning_dropout: float = 0.05  # share of samples trained without text (fc) or text/image (ip2p)
    max_grad_norm: float = 1.0  # gradient clipping
    weight_decay: float = 1e-2  # AdamW weight decay
    checkpoint_every: int = 500  # optimizer steps between checkpoints (accelerator.save_state)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted
    resume: str | None = None  # "latest" or a checkpoint folder; None: a fresh run (or resume the same run)
    overwrite: bool = False  # replace a different run found in `out`
    validate_every: int = 0  # optimizer steps between validation images (0: never)
    validation_image: Path | None = None  # input image for validation
    validation_prompt: str = ""  # prompt / instruction for validation
    validation_steps: int = 20  # sampling steps of a validation image
    seed: int = 0  # data order, noise, timesteps and dropout all derive from it
    max_bad_share: float = DEFAULT_MAX_BAD_SHARE  # undecodable rows are skipped up to this share, fatal above
    workers: int = 0  # data-loading worker processes per training process
    export_dtype: str = "fp16"  # dtype of the exported fc offset (the official files are fp16)

    def __post_init__(self) -> None:
        for name, enum in (("kind", Kind), ("init", Init)):
            value = getattr(self, name)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, name, enum(value))
                except ValueError:
                    choices = ", ".join(e.value for e in enum)
                    raise InvalidParameterError(f"--{name} should be one of {choices} but is {value!r}") from None
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "models_dir", Path(self.models_dir))
        self.validate()

    def validate(self) -> None:
        """Raise InvalidParameterError naming the first bad value (flag names as on the command line)."""
        if not isinstance(self.data, str) or not self.data.strip():
            raise InvalidParameterError(f"--data should be a dataset folder or Hub id but is {self.data!r}")
        res = self.resolution
        if _not_int(res) or res % RESOLUTION_MULTIPLE or not MIN_RESOLUTION <= res <= MAX_RESOLUTION:
            raise InvalidParameterError(
                f"--resolution should be a multiple of {RESOLUTION_MULTIPLE} in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]"
                f" but is {res!r}"
            )
        for name, low in (("batch_size", 1), ("grad_accum", 1), ("max_steps", 1), ("checkpoint_every", 1),
                          ("keep_checkpoints", 1), ("warmup", 0), ("lora_rank", 0), ("validate_every", 0),
                          ("validation_steps", 1), ("seed", 0), ("workers", 0)):  # fmt: skip
            value = getattr(self, name)
            if _not_int(value) or value < low:
                raise InvalidParameterError(f"--{_flag(name)} should be an integer >= {low} but is {value!r}")
        ranges = (("lr", 0.0, 1.0), ("conditioning_dropout", 0.0, 1 / 3), ("max_grad_norm", 0.0, 1e6),
                  ("weight_decay", 0.0, 1.0), ("ema_decay", 0.0, 1.0), ("max_bad_share", 0.0, 1.0))  # fmt: skip
        for name, low, high in ranges:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InvalidParameterError(f"--{_flag(name)} should be in [{low:g}, {high:g}] but is {value!r}")
        if self.stop_after is not None and (_not_int(self.stop_after) or self.stop_after < 1):
            raise InvalidParameterError(f"--stop-after should be an integer >= 1 but is {self.stop_after!r}")
        if self.lr <= 0:
            raise InvalidParameterError(f"--lr should be > 0 but is {self.lr!r}")
        if self.lr_scheduler not in SCHEDULERS:
            raise InvalidParameterError(f"--lr-scheduler should be one of {', '.join(SCHEDULERS)} but is "
                                        f"{self.lr_scheduler!r}")  # fmt: skip
        if self.mixed_precision not in PRECISIONS:
            raise InvalidParameterError(
                f"--mixed-precision should be one of {', '.join(PRECISIONS)} but is {self.mixed_precision!r}"
            )
        if self.export_dtype not in EXPORT_DTYPES:
            raise InvalidParameterError(
                f"--export-dtype should be one of {', '.join(EXPORT_DTYPES)} but is {self.export_dtype!r}"
            )
        if self.init is not Init.AUTO and self.kind is Kind.IP2P:
            raise InvalidParameterError(f"--init {self.init.value} applies to --kind iclight-fc only")
        if self.out.exists() and not self.out.is_dir():
            raise InvalidParameterError(f"--out {self.out} is a file, not a folder")
        if self.validate_every and self.validation_image is None:
            raise InvalidParameterError("--validate-every needs --validation-image FILE (and --validation-prompt)")
        if self.validation_image is not None and not Path(self.validation_image).is_file():
            raise InvalidParameterError(f"--validation-image {self.validation_image} does not exist or is not a file")
        if self.resume is not None and self.overwrite:
            raise InvalidParameterError("--resume and --overwrite contradict each other; pass one")

    @property
    def identity(self) -> dict[str, Any]:
        """The values that make two runs the same run (JSON-ready)."""
        return {name: _jsonable(getattr(self, name)) for name in RUN_IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value
