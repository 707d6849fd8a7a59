"""Several worker processes on one database, and a worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, JobSpec, Worker

from .conftest import StorageConfig
from .helpers import wait_until

pytestmark = [
    pytest.mark.slow,
    # SQLite and PostgreSQL; the reliability scenarios cover MySQL/MariaDB.
    pytest.mark.parametrize("sql_config", ["sqlite", "postgres"], indirect=True),
]
ROOT = Path(__file__).resolve().parent.parent


class Processes:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, mode: str, config: StorageConfig, ledger: Path, **options: object
    ) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            "-m",
            "tests.proc_worker",
            mode,
            "--url",
            config.url,
            "--prefix",
            config.table_prefix,
            "--ledger",
            str(ledger),
        ]
        if config.schema:
            cmd += ["--schema", config.schema]
        for key, value in options.items():
            cmd += [f"--{key}", str(value)]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (
            f"worker process failed to start: {line}{proc.stderr.read() if proc.stderr else ''}"
        )
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.kill_all()


def test_three_processes_of_two_workers_share_one_database(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    queue = JobQueue(sql_config.open())
    ledgers = [tmp_path / f"ledger-{n}.txt" for n in range(3)]
    procs = [processes.start("drain", sql_config, ledger, workers=2) for ledger in ledgers]
    ids = queue.enqueue_many(JobSpec(type="count", payload={"n": n}) for n in range(1000))
    wait_until(
        lambda: queue.counts()["default"]["completed"] == 1000, timeout=180, what="1000 completions"
    )
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "database is locked" not in stderr
    runs = [line.split() for ledger in ledgers for line in ledger.read_text().splitlines()]
    assert Counter(job_id for job_id, _ in runs) == Counter(ids)  # each job ran exactly once
    assert len({pid for _, pid in runs}) == 3  # and all three processes took part
    assert queue.counts()["default"] == {
        "waiting": 0,
        "pending": 0,
        "running": 0,
        "completed": 1000,
        "failed": 0,
        "cancelled": 0,
    }
    pids_recorded = Counter(str(queue.get_job(i).result) for i in ids)
    assert sum(pids_recorded.values()) == 1000
    queue.close()


def test_a_killed_workers_job_is_rescued_and_completed_once(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    queue = JobQueue(sql_config.open())
    job_id = queue.enqueue("slow", max_retries=3)
    victim = processes.start("hang", sql_config, ledger, lease=1.0)
    wait_until(lambda: ledger.exists() and ledger.read_text(), what="the job to start")
    assert ledger.read_text().split() == ["start", job_id, str(victim.pid)]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    held = queue.get_job(job_id)
    assert held.status == "running"  # the dead process still holds the lease
    assert held.worker_id is not None and f":{victim.pid}:" in held.worker_id

    runs: list[int] = []

    @queue.handler("slow")
    def slow(ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        return "finished by the rescuer"

    with Worker(queue, poll_interval=0.05, max_poll_interval=0.2):
        wait_until(lambda: queue.get_job(job_id).status.is_finished, timeout=30)
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 2, "finished by the rescuer")
    assert runs == [2]
    assert job.last_error is not None and f":{victim.pid}:" in job.last_error
    assert ledger.read_text().count("start") == 1
    queue.close()
