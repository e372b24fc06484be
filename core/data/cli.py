"""`python -m core data-filter` and `python -m core data-synth`: build relighting training data from photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import InvalidParameterError

DEFAULT_SEED = 0
DEFAULT_PER_IMAGE = 4
SCORERS = ("auto", "clip", "classic")
MATTING_CHOICES = ("rmbg", "birefnet", "grabcut", "alpha")
EXIT_FAILED_ROWS = 1


def register(sub) -> None:
    """Add the data-filter and data-synth subcommands."""
    from core.data.filter import DEFAULT_CLIP
    from core.data.geometry import NORMALS_MODES
    from core.data.synth_job import DEFAULT_MAX_SIDE, DESCRIBE_MODES, DIRECTIONS

    f = sub.add_parser(
        "data-filter",
        help="score photos for lighting quality; keep the best; write splits",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f.add_argument("--images", required=True, help="folder, glob pattern, .csv (column 'path') or .txt list")
    f.add_argument("--out", type=Path, required=True, help="folder for scores.jsonl, kept.txt, train/val/test.csv")
    keep = f.add_mutually_exclusive_group()
    keep.add_argument("--keep", type=int, help="keep the N best images; unset: the better half")
    keep.add_argument("--threshold", type=float, help="keep images scoring at least T")
    f.add_argument("--scorer", choices=SCORERS, default="auto", help="auto = clip when its weights can be had")
    f.add_argument("--clip-model", default=DEFAULT_CLIP, help="CLIP Hub id or local folder")
    f.add_argument("--prompts", type=Path, help="JSON {good: [...], poor: [...]} or 'good: ...'/'poor: ...' lines")
    f.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test shares of the kept images")
    f.add_argument("--seed", type=int, default=DEFAULT_SEED, help="decides the split assignment")
    _add_job_flags(f)
    f.set_defaults(run=run_filter)

    s = sub.add_parser(
        "data-synth",
        help="synthesise relit training triplets (an imagefolder dataset)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--images", required=True, help="folder, glob pattern, .csv (e.g. data-filter's train.csv), .txt")
    s.add_argument("--out", type=Path, required=True, help="dataset folder (metadata.jsonl + images/)")
    s.add_argument("--per-image", type=int, default=DEFAULT_PER_IMAGE, help="synthetic lightings per photo")
    s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed and photos = the same files")
    s.add_argument("--matting", choices=MATTING_CHOICES, default="rmbg", help="subject matte (GrabCut if no weights)")
    s.add_argument("--normals", choices=NORMALS_MODES, default="auto", help="auto = depth model when it can be had")
    s.add_argument(
        "--depth-model",
        help="depth-estimation Hub id or folder; unset: $ICLIGHT_DEPTH_MODEL, "
        "MODELS_DIR/Depth-Anything-V2-Small-hf, else the Hub's Depth Anything V2 Small",
    )
    s.add_argument("--mix", default="soft=0.4,hard=0.4,specular=0.2", help="shares of the three kinds of lighting")
    s.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default="degrade",
        help="degrade: input = synthetic relight, target = photo; relight: the reverse",
    )
    s.add_argument(
        "--describe",
        choices=DESCRIBE_MODES,
        default="template",
        help="instruction text: template, or a vision model (the suggestion server settings)",
    )
    s.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="scale photos down to this side (0 = keep)")
    s.add_argument("--models-dir", type=Path, help="folder with matting/depth model folders; unset: ./models")
    _add_job_flags(s)
    s.set_defaults(run=run_synth)


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    from core.jobs.runner import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="local", help="local: this process; ray: a Ray cluster")
    p.add_argument("--workers", type=int, help="Ray actors; unset: one per GPU, else one")
    p.add_argument("--ray-address", help="Ray cluster to join; unset: $RAY_ADDRESS, else a local Ray")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps, cpu (resolved on each worker)")
    p.add_argument("--force", action="store_true", help="redo rows already done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_out(out: Path) -> None:
    from core.cli import _check_out_dir

    _check_out_dir(out)


def _inputs(spec: str, out: Path) -> list[Path]:
    """The listed images, minus anything inside --out (a dataset never feeds on itself)."""
    from core.data.sources import list_images

    out = out.resolve()
    return [p for p in list_images(spec) if out not in p.resolve().parents]


def _job_kwargs(args: argparse.Namespace, desc: str) -> dict:
    if args.workers is not None and args.workers < 1:
        raise InvalidParameterError(f"--workers should be at least 1 but is {args.workers}")
    return {
        "engine": args.engine,
        "workers": args.workers,
        "ray_address": args.ray_address,
        "force": args.force,
        "quiet": args.quiet,
        "desc": desc,
    }


def _photo_path(row) -> dict:
    """The photo's path on its results.jsonl line, so a failure names its file."""
    return {"path": row.payload["path"]}


def run_filter(args: argparse.Namespace) -> int:
    """The data-filter command."""
    from core.data import filter as scoring
    from core.data.filter_job import FilterWorker, Selection, build_rows, collect, parse_splits, write_outputs
    from core.errors import WeightsNotFoundError
    from core.jobs import ResultsFile, run_job

    # 1. Check inputs.
    if args.keep is not None and args.keep < 0:
        raise InvalidParameterError(f"--keep should be >= 0 but is {args.keep}")
    selection = Selection(args.keep, args.threshold, parse_splits(args.splits), args.seed)
    prompts = scoring.load_prompts(args.prompts)
    paths = _inputs(args.images, args.out)
    _check_out(args.out)
    # 2. Scorer: CLIP when it can be had (or asked for), else the classic score with a notice.
    scorer = args.scorer
    if scorer in ("auto", "clip"):
        try:
            scoring.resolve_clip(args.clip_model)  # fetched once here; each worker finds it in its own cache
            scorer = "clip"
        except WeightsNotFoundError as exc:
            if scorer == "clip":
                raise
            print(f"note: scoring with the classic lighting score: CLIP could not be had ({exc})", file=sys.stderr)
            scorer = "classic"
    params = {
        "scorer": scorer,
        "clip": args.clip_model if scorer == "clip" else None,
        "prompts": prompts.to_dict() if scorer == "clip" else None,
    }
    config = {
        "out": str(args.out),
        "scorer": scorer,
        "clip_source": args.clip_model,
        "prompts": prompts.to_dict(),
        "device": args.device,
    }
    # 3. Score, then select and split.
    rows = build_rows(paths, params)
    summary = run_job(rows, FilterWorker, config, args.out, **_job_kwargs(args, "data-filter"))
    scores, unreadable, failed = collect(ResultsFile(args.out).read(), rows)
    counts = write_outputs(args.out, scores, unreadable, selection)
    print(f"{summary.line()}; scorer {scorer}", file=sys.stderr)
    print(
        f"{counts['scored']} scored, {counts['unreadable']} unreadable, {counts['kept']} kept "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}) in {args.out}"
    )
    if failed:
        print(f"error: {failed} chunk(s) of images failed; see {summary.results}", file=sys.stderr)
        return EXIT_FAILED_ROWS
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """The data-synth command."""
    from core.data.dataset import write_metadata
    from core.data.geometry import depth_source
    from core.data.synth import parse_mix
    from core.data.synth_job import SynthWorker, build_rows
    from core.jobs import ResultsFile, run_job
    from core.models.loading import default_models_dir

    # 1. Check inputs.
    if args.per_image < 1:
        raise InvalidParameterError(f"--per-image should be at least 1 but is {args.per_image}")
    if args.max_side < 0:
        raise InvalidParameterError(f"--max-side should be >= 0 (0 = keep the size) but is {args.max_side}")
    mix = parse_mix(args.mix)
    paths = _inputs(args.images, args.out)
    _check_out(args.out)
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    # 2. Everything that changes what is written goes into each row's key.
    params = {
        "per_image": args.per_image,
        "seed": args.seed,
        "matting": args.matting,
        "normals": args.normals,
        "depth_source": depth_source(models_dir, args.depth_model) if args.normals != "silhouette" else None,
        "mix": mix,
        "direction": args.direction,
        "describe": args.describe,
        "max_side": args.max_side,
    }
    config = {
        **params,
        "out": str(args.out),
        "models_dir": str(models_dir),
        "device": args.device,
        "depth_source": depth_source(models_dir, args.depth_model),
    }
    # 3. Synthesise, then write the dataset's metadata from every done row.
    rows = build_rows(paths, params)
    summary = run_job(rows, SynthWorker, config, args.out, record=_photo_path, **_job_kwargs(args, "data-synth"))
    records = ResultsFile(args.out).read()
    count = write_metadata(args.out, records, rows)
    keys = {row.key for row in rows}
    for notice in sorted({n for r in records if r.get("key") in keys for n in r.get("notices", [])}):
        print(f"note: {notice}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    print(f"{count} triplets in {args.out / 'metadata.jsonl'}")
    failed = [r for r in records if r.get("key") in keys and r.get("status") == "failed"]
    done = {r["key"] for r in records if r.get("status") == "done"}
    failed = [r for r in failed if r["key"] not in done]
    if failed:
        print(f"error: {len({r['key'] for r in failed})} image(s) failed; see {summary.results}", file=sys.stderr)
        return EXIT_FAILED_ROWS
    return 0
