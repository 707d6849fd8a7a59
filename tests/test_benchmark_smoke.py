"""The benchmark in its tiny smoke mode: every case still runs (no timing is checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import require

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.heavy
def test_every_benchmark_case_runs_and_prints_its_row() -> None:
    require("huey")
    backends = ["--backend", "sqlite"]
    if os.environ.get("DBJOBQ_TEST_POSTGRES_URL"):
        require("pgqueuer", "asyncpg")
        backends += ["--backend", "postgresql"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", *backends],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    measures = {tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows[1:]}
    for backend in ["sqlite"] + (["postgresql"] if len(backends) > 2 else []):
        for measure in [
            "bulk enqueue (one call)",
            "enqueue, one job per call",
            "drain, 1 worker thread",
            "drain, 4 worker threads",
            "drain, 2 processes x 8 threads",
            "drain, 1 worker thread, an idle limited type handled too",
            "drain, 4 worker threads, 100 keys x Concurrency(1)",
            "enqueue a group of 200 + callback (one call)",
            "fan-out: 200 members, then their callback, 4 worker threads",
            "pickup latency p50, other process",
            "wait() wake-up, other process, p99",
            "drain with 1,000 finished jobs in the table",
            "bulk enqueue with 1,000 finished jobs in the table",
            "peak RSS, worker process draining 1,000 jobs",
        ]:
            assert (backend, measure) in measures, (backend, measure, done.stdout)
    assert ("sqlite", "drain, 1 worker thread") in measures
    assert "huey SqliteHuey" in done.stdout
