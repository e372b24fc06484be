"""The Ray engine: rows through Ray Data `map_batches` with an actor pool, one worker (and one model load) per actor.

Joins the cluster at `address` / RAY_ADDRESS, or starts a local Ray in this process. The driver writes results.jsonl
as rows come back. A row whose actor dies is retried on a restarted actor (RETRIES times), then recorded failed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import ICLightError
from core.jobs.runner import STATUS_FAILED, JobRow, RowWorker, run_row, worker_name

logger = logging.getLogger(__name__)

RETRIES = 2  # a row whose worker process dies is tried this many more times before it is recorded failed
ROW_COLUMN, RESULT_COLUMN = "row", "result"
ADDRESS_ENV = "RAY_ADDRESS"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # actors import `core` (and the worker's module) from here


class _ActorRows:
    """The callable class Ray Data builds once per actor: holds one worker, does a batch of rows."""

    def __init__(self, worker: type[RowWorker], config: dict) -> None:
        self._startup_error: str | None = None
        try:
            self._worker = worker(config)
        except Exception as exc:  # reported to the driver, which stops the job with this message
            self._worker = None
            self._startup_error = f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = []
        for text in batch[ROW_COLUMN]:
            row = JobRow.from_json(str(text))
            if self._startup_error is not None:
                result = {"startup_error": self._startup_error, "worker": worker_name()}
            else:
                result = run_row(self._worker, row, None)
            results.append(json.dumps({"index": row.index, "result": result}))
        return {RESULT_COLUMN: np.array(results, dtype=object)}


def _connect(address: str | None) -> bool:
    """Join `address` / RAY_ADDRESS or start a local Ray; True when this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get(ADDRESS_ENV) or None
    # Actors must import the project (and the worker class) on every node: its root goes on their PYTHONPATH.
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # "local": a new in-process cluster, even when another one (`ray start`) runs on this machine.
            ray.init(address="local", runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ICLightError(f"could not start or join {where}: {exc}") from None
    return True


def default_workers() -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU of the cluster, else one CPU actor."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (gpus, 1.0) if gpus else (1, 0.0)


def run_ray(
    rows: Sequence[JobRow],
    worker: type[RowWorker],
    config: dict,
    write: Callable[[JobRow, dict], None],
    *,
    workers: int | None = None,
    address: str | None = None,
    num_gpus_per_worker: float | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Run `rows` on a Ray actor pool; call `write(row, partial record)` in the driver as each comes back."""
    import ray
    import ray.data

    started_here = _connect(address)
    try:
        actors, gpus = default_workers()
        actors = workers or actors
        gpus = gpus if num_gpus_per_worker is None else num_gpus_per_worker
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts rows
        context.max_errored_blocks = -1  # a row whose actor died RETRIES+1 times is missing, not fatal
        # Each death is reported with a traceback; results.jsonl records the row's fate in one line instead.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        by_index = {row.index: row for row in rows}
        # Rows travel as JSON text: nested payloads never meet Arrow's schema inference.
        dataset = ray.data.from_items([{ROW_COLUMN: row.to_json()} for row in rows], override_num_blocks=len(rows))
        with warnings.catch_warnings():
            # Ray 2.60 calls max_restarts/max_task_retries deprecated remote args but has no other name for them.
            warnings.simplefilter("ignore", DeprecationWarning)
            mapped = _map(dataset, worker, config, actors, gpus)
        for item in mapped.iter_rows():
            data = json.loads(item[RESULT_COLUMN])
            result = data["result"]
            if "startup_error" in result:
                raise ICLightError(f"a Ray worker could not start: {result['startup_error']}")
            write(by_index.pop(data["index"]), result)
            if cancel is not None and cancel.is_set():
                return
        for row in sorted(by_index.values(), key=lambda r: r.index):
            error = f"the worker process died {RETRIES + 1} times on this row (killed, or out of memory?)"
            write(row, {"status": STATUS_FAILED, "error": error, "outputs": [], "seconds": None, "worker": None})
    finally:
        if started_here:
            ray.shutdown()


def _map(dataset, worker: type[RowWorker], config: dict, actors: int, gpus: float):
    """`dataset` mapped through an actor pool of `actors` workers, one row per call."""
    import ray.data

    return dataset.map_batches(
        _ActorRows,
        fn_constructor_kwargs={"worker": worker, "config": config},
        batch_size=1,
        # One row in flight per actor: when an actor dies, only the row it was doing is charged a retry.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_gpus=gpus or None,
        max_restarts=-1,
        max_task_retries=RETRIES,
    )
