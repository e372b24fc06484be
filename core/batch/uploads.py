"""Batches from the apps and the /batch API: uploaded files into a job folder, rows, and a zip of the results."""

from __future__ import annotations

import shutil
import time
import uuid
import zipfile
from pathlib import Path

from core.batch.rows import MANIFEST_SUFFIXES, SourceRow, build_rows, namespace_from_params, read_sources
from core.errors import InvalidParameterError
from core.jobs import RESULTS_NAME, JobRow

INPUTS_FOLDER = "inputs"  # uploads are copied here, so a manifest's relative names find them


def new_job_folder(root: Path) -> Path:
    """A fresh `batch_<time>_<id>` folder under `root` for one batch's inputs, images and results.jsonl."""
    folder = Path(root) / f"batch_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"
    (folder / INPUTS_FOLDER).mkdir(parents=True)
    return folder


def _copy_in(folder: Path, path: str | Path) -> Path:
    """Copy an upload into the job's inputs under its own name (a later upload of the same name gets '-2')."""
    source = Path(path)
    target = folder / INPUTS_FOLDER / source.name
    number = 2
    while target.exists():
        target = target.with_name(f"{source.stem}-{number}{source.suffix}")
        number += 1
    shutil.copyfile(source, target)
    return target


def prepare_upload_batch(
    folder: Path,
    foregrounds: list[str | Path],
    params,
    fc_variant: str,
    background: str | Path | None = None,
    manifest: str | Path | None = None,
) -> list[JobRow]:
    """Rows for uploaded files: one per foreground in upload order, or one per line of an uploaded manifest.

    `params` (RelightParams from the form) are every row's defaults; row i gets seed params.seed + i unless its
    manifest line sets one. A manifest names the uploaded files by file name; `background` serves every row without
    its own.
    """
    if not foregrounds:
        raise InvalidParameterError("no foreground images were given; upload one or more photos")
    copies = [_copy_in(folder, path) for path in foregrounds]
    args = namespace_from_params(params)
    args.seed = params.seed
    args.bg = _copy_in(folder, background) if background else None
    if manifest:
        if Path(manifest).suffix.lower() not in MANIFEST_SUFFIXES:
            raise InvalidParameterError(f"the manifest should be a .csv or .jsonl file but is {Path(manifest).name!r}")
        # A manifest names uploaded files by file name only: a path cannot reach outside this job's inputs.
        inputs = folder / INPUTS_FOLDER
        sources = [
            SourceRow(str(inputs / Path(row.foreground).name), _uploaded(inputs, row.background), row.cells, row.line)
            for row in read_sources(_copy_in(folder, manifest))
        ]
    else:
        sources = [SourceRow(str(path), line=path.name) for path in copies]
    return build_rows(args, sources, None, fc_variant)


def _uploaded(inputs: Path, name: str | None) -> str | None:
    return None if name is None else str(inputs / Path(name).name)


def zip_results(folder: Path, records: list[dict]) -> Path:
    """`<folder>.zip` next to the folder: every image of `records` and results.jsonl."""
    target = folder.with_suffix(".zip")
    temp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for record in records:
            for output in record.get("outputs") or []:
                archive.write(output, arcname=Path(output).name)
        results = folder / RESULTS_NAME
        if results.exists():
            archive.write(results, arcname=RESULTS_NAME)
    temp.replace(target)
    return target
