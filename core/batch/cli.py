"""`python -m core batch`: relight a folder, glob or manifest into --out, with results.jsonl, resume and Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import InvalidParameterError

EXIT_OK, EXIT_SOME_FAILED = 0, 1


def register(sub) -> None:
    """Add the `batch` subcommand."""
    from core.cli import add_relight_flags
    from core.models.manager import add_model_flags

    b = sub.add_parser(
        "batch",
        help="relight many images (folder, glob, CSV/JSONL manifest) on one machine or a Ray cluster",
        description="Relight every row of --input into --out. Flags give every row's defaults; a manifest's "
        "non-empty cells override them per row. Writes DIR/results.jsonl; rerunning resumes.",
    )
    b.add_argument("--input", required=True, help="a folder of images, a glob ('shots/*.jpg'), or a .csv/.jsonl "
                   "manifest with a 'foreground' column (paths relative to the manifest)")  # fmt: skip
    b.add_argument("--out", "--outputs-dir", dest="out", type=Path, required=True,
                   help="folder for the images and results.jsonl (created; shared storage on a cluster)")  # fmt: skip
    b.add_argument("--bg", type=Path, help="background for every row without its own (fbc upload/flip)")
    add_relight_flags(b)
    b.add_argument("--prompts", type=Path, help="a file with one prompt per line: every image x every prompt")
    b.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process, rows in order; ray: an actor pool on a Ray cluster")  # fmt: skip
    b.add_argument("--workers", type=int, help="ray: actors (each loads the models once); default one per GPU, else 1")
    b.add_argument("--ray-address", help="ray: cluster to join (default $RAY_ADDRESS, else a local Ray)")
    b.add_argument("--threads", type=int, help="CPU threads per worker (default: this machine's torch default, so "
                   "CPU images match between engines)")  # fmt: skip
    b.add_argument("--force", action="store_true", help="redo rows already done (default: skip them)")
    add_model_flags(b)
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(run=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    """The `batch` command: validate every row, run the rest, print the summary; 1 when a row failed."""
    from core.batch.rows import build_rows, read_prompts, read_sources
    from core.batch.worker import BatchWorker, worker_config
    from core.cli import _check_out_dir
    from core.jobs import run_job
    from core.models.loading import Variant
    from core.models.manager import settings_from_flags

    # 1. Check inputs: everything that stops the whole batch, before any model loads
    if args.workers is not None and args.engine != "ray":
        raise InvalidParameterError("--workers needs --engine ray (the local engine is one process)")
    if args.workers is not None and args.workers < 1:
        raise InvalidParameterError(f"--workers should be at least 1 but is {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise InvalidParameterError(f"--threads should be at least 1 but is {args.threads}")
    if args.bg is not None and not args.bg.is_file():
        raise InvalidParameterError(f"--bg {args.bg} does not exist or is not a file")
    if args.variant == Variant.FBC.value:
        raise InvalidParameterError("--variant picks the fc weights (fc or fcon); fbc rows use --mode fbc")
    _check_out_dir(args.out)
    sources = read_sources(args.input)
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    settings = settings_from_flags(args)
    fc_variant = args.variant or Variant.FC.value
    # 2. Validate every row: bad rows are recorded failed, the rest go on
    rows = build_rows(args, sources, prompts, fc_variant)
    if args.quiet:
        from core.cli import _silence_library_bars

        _silence_library_bars()
    # 3. Run
    summary = run_job(
        rows,
        BatchWorker,
        worker_config(args.out, settings, fc_variant, threads=args.threads or _default_threads()),
        args.out,
        engine=args.engine,
        workers=args.workers,
        ray_address=args.ray_address,
        force=args.force,
        quiet=args.quiet,
        desc="batch",
        record=batch_record,
    )
    print(summary.line())
    if summary.failed:
        print(f"failed rows are listed in {summary.results} (status 'failed', with the reason)", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def batch_record(row) -> dict:
    """The keys every results.jsonl line of a batch carries besides the runner's own."""
    payload = row.payload
    return {"foreground": payload["foreground"], "background": payload["background"], "params": payload["params"],
            "seed": payload["seed"], "source": payload["source"]}  # fmt: skip


def _default_threads() -> int:
    """torch's thread count in this process (what the local engine uses)."""
    import torch

    return torch.get_num_threads()
