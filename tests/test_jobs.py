"""The shared job runner: results.jsonl, resume keys, torn lines, both engines (Ray for real), dying workers."""

from __future__ import annotations

import json
import threading

import pytest
from job_workers import BrokenWorker, DoublingWorker
from ray_testing import ray_cluster  # noqa: F401  (session fixture)

from core.errors import ICLightError, InvalidParameterError
from core.jobs import RESULTS_NAME, JobRow, ResultsFile, job_key, run_job


def _rows(tmp_path, extra: list[JobRow] = ()) -> list[JobRow]:
    good = [JobRow(i, f"key{i}", {"value": i}) for i in range(3)]
    bad = [
        JobRow(3, "key3", {"raise": "value out of range"}),
        JobRow(4, "key4", {"value": 4}, error="foreground missing.png does not exist"),
    ]
    return good + bad + list(extra)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]


def test_job_key_follows_file_bytes_and_params(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    assert job_key([a], {"steps": 2, "cfg": 1.0}) == job_key([b], {"cfg": 1.0, "steps": 2})  # content, not name
    assert job_key([a], {"steps": 2}) != job_key([a], {"steps": 3})
    assert job_key([a, None], {}) != job_key([a], {})
    b.write_bytes(b"two")
    assert job_key([a], {}) != job_key([b], {})


def test_local_engine_records_every_row_and_resumes(tmp_path):
    out = tmp_path / "out"
    rows = _rows(tmp_path)
    summary = run_job(rows, DoublingWorker, {"out": str(out)}, out, quiet=True)
    assert (summary.done, summary.failed, summary.skipped) == (3, 2, 0)
    assert summary.line().startswith("3 done, 2 failed, 0 already done (skipped) in ")
    records = {r["row"]: r for r in _records(out)}
    assert sorted(records) == [0, 1, 2, 3, 4]
    for i in range(3):
        assert records[i]["status"] == "done" and records[i]["error"] is None
        assert (out / f"row_{i}.txt").read_text() == str(2 * i)
        assert records[i]["outputs"] == [str(out / f"row_{i}.txt")]
        assert records[i]["key"] == f"key{i}" and isinstance(records[i]["seconds"], float)
    assert len({records[i]["built_in"] for i in range(3)}) == 1  # one worker for the whole job
    assert records[3] == {**records[3], "status": "failed", "error": "ValueError: value out of range"}
    assert records[4]["error"] == "foreground missing.png does not exist" and records[4]["outputs"] == []

    # Rerun: done rows are skipped, failed rows retried (and fail again), nothing else is written.
    again = run_job(rows, DoublingWorker, {"out": str(out)}, out, quiet=True)
    assert (again.done, again.failed, again.skipped) == (0, 2, 3)
    assert [r["row"] for r in _records(out)[5:]] == [3, 4]
    # --force redoes everything; a changed key (new inputs or parameters) is new work.
    forced = run_job(rows, DoublingWorker, {"out": str(out)}, out, quiet=True, force=True)
    assert (forced.done, forced.failed, forced.skipped) == (3, 2, 0)
    changed = [JobRow(0, "key0-new", {"value": 10})]
    assert run_job(changed, DoublingWorker, {"out": str(out)}, out, quiet=True).done == 1


def test_record_adds_keys_and_on_result_sees_each_line(tmp_path):
    out = tmp_path / "out"
    seen = []
    run_job(_rows(tmp_path)[:2], DoublingWorker, {"out": str(out)}, out, quiet=True,
            record=lambda row: {"foreground": f"fg{row.index}.png"}, on_result=seen.append)  # fmt: skip
    assert [r["foreground"] for r in _records(out)] == ["fg0.png", "fg1.png"]
    assert seen == _records(out)


def test_torn_last_line_is_cut_off_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    rows = _rows(tmp_path)[:2]
    run_job(rows[:1], DoublingWorker, {"out": str(out)}, out, quiet=True)
    with open(out / RESULTS_NAME, "ab") as handle:
        handle.write(b'{"row": 1, "status": "do')  # a kill in the middle of a write
    summary = run_job(rows, DoublingWorker, {"out": str(out)}, out, quiet=True)
    assert (summary.done, summary.skipped) == (1, 1)
    assert [r["row"] for r in _records(out)] == [0, 1]  # every line parses


def test_results_file_reads_what_it_appends(tmp_path):
    results = ResultsFile(tmp_path)
    results.append({"row": 0, "key": "a", "status": "done", "prompt": "café ☀"})
    results.append({"row": 1, "key": "b", "status": "failed"})
    assert results.done_keys() == {"a"}
    assert results.read()[0]["prompt"] == "café ☀"


def test_cancel_keeps_what_is_done(tmp_path):
    out = tmp_path / "out"
    cancel = threading.Event()
    rows = [JobRow(i, f"k{i}", {"value": i}) for i in range(4)]
    summary = run_job(rows, DoublingWorker, {"out": str(out)}, out, quiet=True, cancel=cancel,
                      on_result=lambda record: record["row"] == 1 and cancel.set())  # fmt: skip
    assert summary.done == 2 and [r["row"] for r in _records(out)] == [0, 1]


def test_bad_arguments_are_one_line_errors(tmp_path):
    rows = [JobRow(0, "k", {"value": 1}), JobRow(0, "k2", {"value": 2})]
    with pytest.raises(InvalidParameterError, match="engine should be one of local, ray but is 'spark'"):
        run_job(rows[:1], DoublingWorker, {"out": str(tmp_path)}, tmp_path, engine="spark")
    with pytest.raises(InvalidParameterError, match="indices should be unique"):
        run_job(rows, DoublingWorker, {"out": str(tmp_path)}, tmp_path)
    with pytest.raises(InvalidParameterError, match="workers should be at least 1 but is 0"):
        run_job(rows[:1], DoublingWorker, {"out": str(tmp_path)}, tmp_path, workers=0)


@pytest.mark.slow
def test_ray_engine_matches_local_and_survives_dying_workers(tmp_path, ray_cluster):  # noqa: F811
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    run_job(_rows(tmp_path), DoublingWorker, {"out": str(local_out)}, local_out, quiet=True)
    dying = [
        JobRow(5, "key5", {"value": 5, "die": "once", "marker": str(tmp_path / "died")}),
        JobRow(6, "key6", {"value": 6, "die": "always"}),
    ]
    summary = run_job(_rows(tmp_path, dying), DoublingWorker, {"out": str(ray_out)}, ray_out, engine="ray",
                      workers=2, quiet=True)  # fmt: skip
    assert (summary.done, summary.failed, summary.skipped) == (4, 3, 0)
    records = {r["row"]: r for r in _records(ray_out)}
    local = {r["row"]: r for r in _records(local_out)}
    for i in range(5):
        assert {k: records[i][k] for k in ("status", "error")} == {k: local[i][k] for k in ("status", "error")}
        if i < 3:
            assert (ray_out / f"row_{i}.txt").read_text() == (local_out / f"row_{i}.txt").read_text()
            assert records[i]["worker"] != local[i]["worker"]  # done in an actor, not the driver
    assert records[5]["status"] == "done" and (tmp_path / "died").exists()  # retried after its actor died
    assert records[6]["status"] == "failed" and "died 3 times" in records[6]["error"]

    # Resume on Ray: only the failed rows run again.
    again = run_job(_rows(tmp_path, dying), DoublingWorker, {"out": str(ray_out)}, ray_out, engine="ray",
                    workers=1, quiet=True)  # fmt: skip
    assert (again.done, again.failed, again.skipped) == (0, 3, 4)


@pytest.mark.slow
def test_ray_worker_that_cannot_start_stops_the_job(tmp_path, ray_cluster):  # noqa: F811
    with pytest.raises(ICLightError, match="could not start: FileNotFoundError: no weights in models/"):
        run_job([JobRow(0, "k", {"value": 1})], BrokenWorker, {}, tmp_path, engine="ray", quiet=True)


def test_local_worker_that_cannot_start_raises_its_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights"):
        run_job([JobRow(0, "k", {"value": 1})], BrokenWorker, {}, tmp_path, quiet=True)
