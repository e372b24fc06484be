"""The batch worker: one Relighter (models loaded once) per process or Ray actor, one row per call."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path

from core.jobs import JobRow


def worker_config(out: Path, settings, fc_variant: str, threads: int | None = None) -> dict:
    """The JSON-able config every BatchWorker is built from (ModelSettings as a dict, paths as strings)."""
    data = asdict(settings)
    data["models_dir"] = str(data["models_dir"])
    return {"out": str(out), "settings": data, "fc_variant": fc_variant, "threads": threads}


class BatchWorker:
    """Relights rows into config["out"] as `<foreground stem>_<variant>_NNNNN.png` (atomic, never overwriting).

    Built from `config` alone (CLI, Ray actors), or around an app's Relighter so a batch reuses its loaded models.
    """

    def __init__(self, config: dict, relighter=None, cancel: threading.Event | None = None) -> None:
        from core.models.loading import Variant
        from core.models.manager import ModelManager, ModelSettings
        from core.service import Relighter

        self.cancel = cancel
        if config.get("threads"):
            import torch

            # CPU results depend on how reductions are split over threads: a Ray actor (which Ray starts with
            # one thread per reserved CPU) uses the driver's count, so its images match the local engine's exactly.
            torch.set_num_threads(int(config["threads"]))
        out = Path(config["out"])
        if relighter is not None:
            self.relighter = Relighter(relighter.manager, outputs_dir=out, matter=relighter.matter,
                                       fc_variant=relighter.fc_variant)  # fmt: skip
            return
        settings = ModelSettings(**{**config["settings"], "models_dir": Path(config["settings"]["models_dir"])})
        self.relighter = Relighter(ModelManager(settings), outputs_dir=out, fc_variant=Variant(config["fc_variant"]))

    def __call__(self, row: JobRow, progress) -> dict:
        """Relight one row; returns the written paths and any notices (fallbacks the user should know about)."""
        from core.params import RelightParams

        payload = row.payload
        params = RelightParams.from_dict(payload["params"])
        callback = None if progress is None else (lambda info: progress(info.overall_step, info.overall_total))
        outcome = self.relighter.relight(Path(payload["foreground"]), params, background=_path(payload["background"]),
                                         callback=callback, cancel=self.cancel, save=False)  # fmt: skip
        paths = self.relighter.save(outcome.images, params, stem=payload["stem"])
        return {"outputs": [str(p) for p in paths], "notices": outcome.notices}


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)
