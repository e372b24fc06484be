"""One real local Ray cluster (2 CPUs) shared by every test of a session that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # rows are small JSON; keep the shared machine's memory free


@pytest.fixture(scope="session")
def ray_cluster():
    """`ray.init(num_cpus=2)` once; actors import the project and the tests' worker modules."""
    import ray

    started = not ray.is_initialized()
    if started:
        paths = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 runtime_env={"env_vars": {"PYTHONPATH": paths, "HF_HUB_OFFLINE": "1", "ICLIGHT_OFFLINE": "1"}},
                 log_to_driver=False)  # fmt: skip
    yield ray
    if started:
        ray.shutdown()
