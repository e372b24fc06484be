"""Row workers for the job-runner tests (a module of its own so Ray actors can import them by name)."""

from __future__ import annotations

import os
from pathlib import Path

from core.jobs import JobRow

KILL_EXIT = 3  # exit code of a worker that "dies" on purpose


class DoublingWorker:
    """Writes `2 * payload["value"]` to `out/row_<index>.txt`; raises, or kills its process, when the payload asks."""

    def __init__(self, config: dict) -> None:
        self.out = Path(config["out"])
        self.pid = os.getpid()  # proves the worker is built once per process

    def __call__(self, row: JobRow, progress) -> dict:
        payload = row.payload
        if payload.get("die") == "always":
            os._exit(KILL_EXIT)
        if payload.get("die") == "once":
            marker = Path(payload["marker"])
            if not marker.exists():
                marker.write_text("died once")
                os._exit(KILL_EXIT)
        if "raise" in payload:
            raise ValueError(payload["raise"])
        if progress is not None:
            progress(1, 1)
        target = self.out / f"row_{row.index}.txt"
        temp = target.with_suffix(".tmp")
        temp.write_text(str(2 * payload["value"]))
        os.replace(temp, target)
        return {"outputs": [str(target)], "built_in": self.pid}


class BrokenWorker:
    """A worker whose models cannot load."""

    def __init__(self, config: dict) -> None:
        raise FileNotFoundError("no weights in models/")

    def __call__(self, row: JobRow, progress) -> dict:  # pragma: no cover - never built
        return {}
