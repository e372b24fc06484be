"""`python -m core train` and `python -m core edit`: argparse wiring only (nothing heavy imported here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import InvalidParameterError
from core.models.loading import DEFAULT_BASE_MODEL
from core.train.config import DEFAULT_MAX_BAD_SHARE, PRECISIONS, SCHEDULERS, Init, Kind, TrainConfig


def register(sub) -> None:
    """Add the `train` and `edit` subcommands to the CLI's subparsers."""
    t = sub.add_parser("train", help="fine-tune IC-Light fc or InstructPix2Pix on a triplet dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    t.add_argument("--data", required=True, help="imagefolder dataset folder (metadata.jsonl) or Hub dataset id")
    t.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, log, validation, export")
    t.add_argument("--kind", choices=[k.value for k in Kind], default=Kind.ICLIGHT_FC.value, help="what to train")
    t.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="SD 1.5 Hub id, folder or .safetensors")
    t.add_argument("--init", choices=[i.value for i in Init], default=Init.AUTO.value,
                   help="iclight-fc start: iclight (base + fc offset), base (new channels zero), auto")  # fmt: skip
    t.add_argument("--models-dir", type=Path, help="folder with iclight_sd15_fc.safetensors (default ./models)")
    t.add_argument("--offline", action="store_true", help="never download; start from the base when fc is missing")
    t.add_argument("--resolution", type=int, default=512, help="square training size in pixels")
    t.add_argument("--batch-size", type=int, default=1, help="samples per process per micro-batch")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    t.add_argument("--lr-scheduler", choices=SCHEDULERS, default="constant", help="learning-rate schedule")
    t.add_argument("--warmup", type=int, default=0, help="warmup optimizer steps")
    t.add_argument("--max-steps", type=int, default=1000, help="optimizer steps of the whole run")
    t.add_argument("--stop-after", type=int, help="end this invocation after N more steps (rerun continues)")
    t.add_argument("--mixed-precision", choices=PRECISIONS, default="no", help="autocast precision")
    t.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    t.add_argument("--ema", action="store_true", help="keep and export an EMA of the weights")
    t.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay per step")
    t.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    t.add_argument("--conditioning-dropout", type=float, default=0.05, help="share trained without conditions")
    t.add_argument("--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints")
    t.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept")
    t.add_argument("--resume", help="'latest' or a checkpoint folder (a rerun of the same run resumes by itself)")
    t.add_argument("--overwrite", action="store_true", help="replace a different run found in --out")
    t.add_argument("--validate-every", type=int, default=0, help="steps between validation images (0: none)")
    t.add_argument("--validation-image", type=Path, help="input image for validation")
    t.add_argument("--validation-prompt", default="", help="prompt or instruction for validation")
    t.add_argument("--validation-steps", type=int, default=20, help="sampling steps of a validation image")
    t.add_argument("--seed", type=int, default=0, help="data order, noise and dropout")
    t.add_argument("--max-bad-share", type=float, default=DEFAULT_MAX_BAD_SHARE,
                   help="undecodable rows skipped up to this share, fatal above")  # fmt: skip
    t.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    t.add_argument("--export-dtype", choices=("fp16", "fp32"), default="fp16", help="dtype of the exported fc offset")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train)

    e = sub.add_parser("edit", help="edit an image by instruction with a trained InstructPix2Pix model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    e.add_argument("--model", required=True, type=Path, help="InstructPix2Pix diffusers folder (or a train --out)")
    e.add_argument("--image", required=True, type=Path, help="image to edit")
    e.add_argument("--instruction", required=True, help="what to change, e.g. 'make the light warm, from the left'")
    e.add_argument("--image-guidance", type=float, default=1.5, help="how closely to follow the input image")
    e.add_argument("--cfg", type=float, default=7.0, help="how closely to follow the instruction")
    e.add_argument("--steps", type=int, default=20, help="sampling steps")
    e.add_argument("--seed", type=int, default=12345, help="random seed")
    e.add_argument("--width", type=int, help="output width, multiple of 8 (default: the image's, rounded down)")
    e.add_argument("--height", type=int, help="output height, multiple of 8 (default: the image's, rounded down)")
    e.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps, cpu")
    e.add_argument("--lora", action="append", default=[], metavar="SOURCE[:SCALE]",
                   help="an SD 1.5 LoRA (a .safetensors path, a file in models/loras/ or a Hub id) fused at SCALE "
                   "in [-2, 2] (default 1); repeat for more")  # fmt: skip
    e.add_argument("--offline", action="store_true", help="never download (a Hub LoRA must be in models/loras/)")
    e.add_argument("--out", required=True, type=Path, help="folder for the results (never overwritten)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=run_edit)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from the parsed `train` flags."""
    import os

    from core.models.loading import OFFLINE_ENV, default_models_dir

    if args.offline:
        os.environ[OFFLINE_ENV] = "1"
    skip = {"command", "run", "offline", "quiet", "models_dir"}
    values = {k: v for k, v in vars(args).items() if k not in skip}
    return TrainConfig(**values, models_dir=args.models_dir or default_models_dir(), download=not args.offline)


def run_train(args: argparse.Namespace) -> int:
    """The `train` command."""
    from core.train.loop import train

    config = config_from_args(args)
    result = train(config, progress=not args.quiet)
    if result.exported is not None:
        print(result.exported)
    return 0


def run_edit(args: argparse.Namespace) -> int:
    """The `edit` command."""
    from core.train.edit import edit

    if not args.image.is_file():
        raise InvalidParameterError(f"--image {args.image} does not exist or is not a file")
    paths = edit(args.model, args.image, args.instruction, args.out, image_guidance=args.image_guidance, cfg=args.cfg,
                 steps=args.steps, seed=args.seed, width=args.width, height=args.height, device=args.device,
                 quiet=args.quiet, loras=args.lora, download=not args.offline)  # fmt: skip
    for path in paths:
        print(path)
    return 0
