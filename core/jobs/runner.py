"""Long row-by-row jobs (batch relighting, dataset building): results.jsonl, resume, progress, the local engine.

A job is a list of `JobRow`s and a worker class. The worker is built once per process (local engine) or once per
Ray actor (`core.jobs.ray_engine`) and called once per row. Every finished row appends one JSON line to
`out/results.jsonl`; a rerun skips rows whose key already has a "done" line, so a killed job resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.errors import CancelledError, InvalidParameterError

RESULTS_NAME = "results.jsonl"
ENGINES = ("local", "ray")
STATUS_DONE, STATUS_FAILED = "done", "failed"
HASH_CHUNK = 1 << 20  # read input files 1 MiB at a time when hashing
MAX_ERROR_LEN = 500  # one error line in results.jsonl stays readable

ProgressFn = Callable[[int, int], None]  # (steps done, steps in total) of the current row


@dataclass(frozen=True)
class JobRow:
    """One unit of work: a row of the input, what the worker needs for it, and its resume key."""

    index: int  # 0-based position in the input (the `row` key of results.jsonl)
    key: str  # resume key: sha256 of the input files' bytes + the resolved parameters (job_key())
    payload: dict  # JSON-able: what the worker needs (paths as strings, resolved params, seed, ...)
    error: str | None = None  # set when validation failed: the row is recorded failed without running

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "key": self.key, "payload": self.payload, "error": self.error})

    @classmethod
    def from_json(cls, text: str) -> JobRow:
        data = json.loads(text)
        return cls(int(data["index"]), str(data["key"]), dict(data["payload"]), data.get("error"))


class RowWorker(Protocol):
    """A callable class built once per process or Ray actor (loads models once), called once per row."""

    def __init__(self, config: dict) -> None: ...

    def __call__(self, row: JobRow, progress: ProgressFn | None) -> dict:
        """Do one row, writing files atomically under config["out"]; return {"outputs": [paths], ...}."""
        ...


@dataclass(frozen=True)
class JobSummary:
    """How a job ended."""

    done: int  # rows finished in this run
    failed: int  # rows that failed in this run (validation, an exception, or a worker that kept dying)
    skipped: int  # rows already done in an earlier run with the same key
    seconds: float  # wall time of this run
    results: Path  # the results.jsonl file
    cancelled: bool = False  # stopped by the caller's cancel event before every row was done

    def line(self) -> str:
        """`N done, M failed, K already done (skipped) in T s`."""
        return f"{self.done} done, {self.failed} failed, {self.skipped} already done (skipped) in {self.seconds:.1f} s"


def job_key(files: Sequence[Path | str | None], params: Mapping) -> str:
    """sha256 over the bytes of each input file (in order; None = absent) and the canonical JSON of `params`."""
    digest = hashlib.sha256()
    for path in files:
        if path is None:
            digest.update(b"\x00none\x00")
            continue
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    digest.update(json.dumps(params, sort_keys=True, separators=(",", ":"), default=str).encode())
    return digest.hexdigest()


def worker_name() -> str:
    """host:pid of the process doing a row (recorded in results.jsonl)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(error: BaseException | str) -> str:
    """An exception as one short line: 'Type: message' unless it is one of ours (then just the message)."""
    if isinstance(error, str):
        text = error
    elif isinstance(error, InvalidParameterError) or type(error).__module__.startswith("core."):
        text = str(error) or type(error).__name__
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_LEN else text[: MAX_ERROR_LEN - 3] + "..."


class ResultsFile:
    """results.jsonl: whole lines appended atomically under a lock; a torn last line (a kill) is cut off."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RESULTS_NAME
        self._lock = threading.Lock()
        self._repair()

    def _repair(self) -> None:
        """Drop a last line that a kill left without its newline or unparsable."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except ValueError:
                break
            good += len(line)
        if good < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())

    def read(self) -> list[dict]:
        """Every record, in the order written."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def done_keys(self) -> set[str]:
        """Keys of rows with a "done" record."""
        return {r["key"] for r in self.read() if r.get("status") == STATUS_DONE and "key" in r}

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as one write of a full line, flushed and fsynced, under a thread and file lock."""
        line = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _lock_file(fd)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the file lock


def _lock_file(fd: int) -> None:
    """An advisory lock, so two runs appending to one results.jsonl never interleave (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: appends of one small write are still whole lines in practice
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def run_row(worker: Callable, row: JobRow, progress: ProgressFn | None) -> dict:
    """Do one row with an already-built worker; the partial record (status, error, outputs, seconds, worker)."""
    started = time.perf_counter()
    if row.error is not None:
        result: dict = {"status": STATUS_FAILED, "error": one_line(row.error), "outputs": []}
    else:
        try:
            returned = dict(worker(row, progress) or {})
            outputs = [str(p) for p in returned.pop("outputs", [])]
            result = {**returned, "status": STATUS_DONE, "error": None, "outputs": outputs}
        except CancelledError:
            raise  # a user's Stop is not this row's failure: the row stays to do, and the job ends
        except Exception as exc:  # any failure of one row is that row's failure; the job goes on
            result = {"status": STATUS_FAILED, "error": one_line(exc), "outputs": []}
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["worker"] = worker_name()
    return result


class Progress:
    """One tqdm bar over rows (with ETA) on stderr, showing the current row's steps; silent when quiet."""

    def __init__(self, total: int, desc: str, quiet: bool, initial: int = 0) -> None:
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="row", file=sys.stderr, dynamic_ncols=True)

    def steps(self, step: int, total: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"steps {step}/{total}", refresh=True)

    def row_done(self, failed: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_job(
    rows: Sequence[JobRow],
    worker: type[RowWorker],
    config: dict,
    out: Path,
    *,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    num_gpus_per_worker: float | None = None,
    force: bool = False,
    quiet: bool = False,
    desc: str = "rows",
    record: Callable[[JobRow], dict] | None = None,
    on_result: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
) -> JobSummary:
    """Run every row not already done; append a results.jsonl line per finished row; return the counts.

    `on_result(record)` (optional) sees each record as it is written (the apps fill their gallery with it);
    `cancel` (optional, local engine) stops before the next row, keeping what is done.
    """
    # 1. Check inputs
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine should be one of {', '.join(ENGINES)} but is {engine!r}")
    if workers is not None and workers < 1:
        raise InvalidParameterError(f"workers should be at least 1 but is {workers}")
    indices = [row.index for row in rows]
    if len(set(indices)) != len(indices):
        raise InvalidParameterError("row indices should be unique but some repeat")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # 2. Resume: rows with a "done" line for the same key are skipped
    results = ResultsFile(out)
    done_keys = set() if force else results.done_keys()
    todo = [row for row in rows if row.key not in done_keys]
    skipped = len(rows) - len(todo)
    counts = {STATUS_DONE: 0, STATUS_FAILED: 0}
    progress = Progress(len(rows), desc, quiet, initial=skipped)

    def write(row: JobRow, partial: dict) -> None:
        extra = record(row) if record is not None else {}
        entry = {**extra, **partial, "row": row.index, "key": row.key}
        entry = {k: entry[k] for k in _ordered_keys(entry)}
        results.append(entry)
        counts[entry["status"]] += 1
        progress.row_done(counts[STATUS_FAILED])
        if on_result is not None:
            on_result(entry)

    # 3. Run: rows that failed validation are recorded without a worker; the others go to the engine
    cancelled = False
    try:
        if engine == "local":
            _run_local(todo, worker, config, write, progress, cancel)
        else:
            for row in todo:
                if row.error is not None:
                    write(row, run_row(None, row, None))
            runnable = [row for row in todo if row.error is None]
            if runnable:
                from core.jobs.ray_engine import run_ray

                run_ray(runnable, worker, config, write, workers=workers, address=ray_address,
                        num_gpus_per_worker=num_gpus_per_worker, cancel=cancel)  # fmt: skip
    except CancelledError:
        cancelled = True  # stopped inside a row: the finished rows are recorded, that row stays to do
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    cancelled = cancelled or (cancel is not None and cancel.is_set())
    return JobSummary(counts[STATUS_DONE], counts[STATUS_FAILED], skipped, seconds, results.path, cancelled)


def _run_local(
    rows: Iterable[JobRow],
    worker: type[RowWorker],
    config: dict,
    write: Callable[[JobRow, dict], None],
    progress: Progress,
    cancel: threading.Event | None,
) -> None:
    """One process, one worker instance (models loaded once, at the first valid row), rows in order."""
    instance = None
    for row in rows:
        if cancel is not None and cancel.is_set():
            return
        if instance is None and row.error is None:
            instance = worker(config)
        write(row, run_row(instance, row, progress.steps))


LEADING_KEYS = ("row", "status", "error", "outputs", "seconds", "worker", "key")


def _ordered_keys(entry: Mapping[str, Any]) -> list[str]:
    """The fixed keys first (easy to read with `head`), then the rest in their order."""
    return [k for k in LEADING_KEYS if k in entry] + [k for k in entry if k not in LEADING_KEYS]
