"""The GPU check's logic on CPU with tiny models (--device cpu --tiny), and its wheel-folder installer script."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from core import gpu_check
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return gpu_check.prepare(tmp_path_factory.mktemp("gpu_check"), "cpu", tiny=True)


def test_every_check_passes_on_tiny_models(setup):
    results = gpu_check.run_checks(setup, list(gpu_check.CHECKS))
    names = [r.name for r in results]
    assert names == ["fc", "fbc", "fc --low-vram", "fbc --low-vram", "upscale x4 (tiled)", "fast mode (lcm)",
                     f"batch of {gpu_check.TINY_BATCH_SIZE} (local engine)", "parity fp32 vs official"]  # fmt: skip
    assert all(r.ok for r in results), [(r.name, r.note) for r in results]
    timed = [r for r in results if r.name in ("fc", "fbc", "fast mode (lcm)")]
    assert all(r.seconds_per_image > 0 and r.lowres_steps_per_s > 0 and r.highres_steps_per_s > 0 for r in timed)
    assert results[-1].note == "max diff 0/255"  # on CPU in fp32 our path is the official recipe, bit for bit
    table = gpu_check.format_table(results, "header")
    assert table.count("| pass |") == len(results) and "peak VRAM GiB" in table


def test_parity_check_fails_when_the_recipes_differ(setup, monkeypatch):
    real = gpu_check.official_fc

    def shifted(models, fg, params):
        return [np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8) for image in real(models, fg, params)]

    monkeypatch.setattr(gpu_check, "official_fc", shifted)
    (result,) = gpu_check.run_checks(setup, ["parity"])
    assert not result.ok and result.note == "max diff 3/255"


def test_a_failing_check_is_a_row_not_a_crash(setup, monkeypatch):
    def broken(_setup):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setitem(gpu_check.CHECKS, "upscale", broken)
    (result,) = gpu_check.run_checks(setup, ["upscale"])
    assert not result.ok and result.note == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_cli_rejects_unknown_checks_and_missing_cuda(capsys):
    with pytest.raises(SystemExit) as info:
        gpu_check.main(["--checks", "relight,warp"])
    assert info.value.code == 2 and "unknown check(s) ['warp']" in capsys.readouterr().err
    assert gpu_check.main(["--device", "cuda"]) == 2  # this machine has no GPU
    assert "no CUDA GPU" in capsys.readouterr().err


def _script(*args: str, requirements=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    if requirements is not None:
        env["REQUIREMENTS"] = str(requirements)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_script_installs_nothing_when_all_is_there_and_runs_the_check(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = _script(str(wheels), "--device", "cpu", "--tiny", "--checks", "parity", "--work", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "installing" not in proc.stderr
    assert "| parity fp32 vs official | pass |" in proc.stdout


def test_script_installs_missing_packages_from_the_folder_only(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\ntorch==0.0.1  # installed (any version counts)\nno-such-package-xyz==1.0\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = _script(str(wheels), "--device", "cpu", requirements=requirements)
    assert proc.returncode == 3
    assert "installing from" in proc.stderr and "no-such-package-xyz==1.0" in proc.stderr
    assert "torch==0.0.1" not in proc.stderr.split("installing from", 1)[1].splitlines()[0]
    assert "pip download -r requirements.txt -d" in proc.stderr


def test_script_usage_errors(tmp_path):
    assert _script().returncode == 2
    proc = _script(str(tmp_path / "missing"))
    assert proc.returncode == 2 and "pip download -r requirements.txt" in proc.stderr
