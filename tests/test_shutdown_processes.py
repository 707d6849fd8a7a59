"""A `dbjobq worker` process stopped with SIGTERM gives an interrupted job back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, Worker

from .conftest import StorageConfig
from .helpers import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("sql_config", ["sqlite", "postgres"], indirect=True),
]

STOP_FAST = ("--stop-timeout", "0.2", "--poll-interval", "0.05")
APP = """
import os

from dbjobq import JobContext, JobQueue
from dbjobq.storage import SQLAlchemyStorage

queue = JobQueue(
    SQLAlchemyStorage(
        os.environ["APP_URL"],
        table_prefix=os.environ["APP_PREFIX"],
        schema=os.environ.get("APP_SCHEMA") or None,
    )
)


@queue.handler("export", max_retries=0)
def export(ctx: JobContext) -> str:
    with open(os.environ["APP_LEDGER"], "a") as ledger:
        ledger.write(f"start {ctx.job.id}\\n")
    while True:  # a long job, in steps
        ctx.cancelled.wait(0.05)
        ctx.raise_if_cancelled()
"""


def test_a_sigtermed_worker_process_gives_the_running_job_back_unspent(
    sql_config: StorageConfig, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(APP)
    ledger = tmp_path / "ledger.txt"
    env = {
        **os.environ,
        "APP_URL": sql_config.url,
        "APP_PREFIX": sql_config.table_prefix,
        "APP_SCHEMA": sql_config.schema or "",
        "APP_LEDGER": str(ledger),
    }
    queue = JobQueue(sql_config.open())
    job_id = queue.enqueue("export")
    proc = subprocess.Popen(
        [*(sys.executable, "-m", "dbjobq", "worker", "app:queue"), *STOP_FAST],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: ledger.exists() and ledger.read_text(), timeout=60, what="a start")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "interrupted (shutdown): back to pending" in stderr, stderr
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.worker_id) == ("pending", 0, None)

    @queue.handler("export", max_retries=0)
    def export(ctx: JobContext) -> str:
        return f"attempt {ctx.attempt}"

    with Worker(queue, poll_interval=0.05):
        wait_until(lambda: queue.get_job(job_id).status.is_finished, timeout=30)
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 1, "attempt 1")
    assert ledger.read_text().split() == ["start", job_id]
    queue.close()
