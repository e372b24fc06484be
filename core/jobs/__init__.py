"""Long row-by-row jobs on one process or a Ray cluster: results.jsonl, resume, progress."""

from __future__ import annotations

from core.jobs.runner import (
    RESULTS_NAME,
    JobRow,
    JobSummary,
    ResultsFile,
    RowWorker,
    job_key,
    run_job,
)

__all__ = ["RESULTS_NAME", "JobRow", "JobSummary", "ResultsFile", "RowWorker", "job_key", "run_job"]
