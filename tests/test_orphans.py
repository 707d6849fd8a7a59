"""A worker process killed with SIGKILL: the next worker on the host rescues its job.

At once, that is, once the dead process's registry record is stale: older than a live
worker lets its record get (`dbjobq._work.upkeep.ORPHAN_AFTER`, 15 s). The test shortens
that threshold and waits for the record to pass it, as measured by the storage.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, Worker
from dbjobq._work import upkeep as upkeep_module

from .conftest import FAST_RETRIES, StorageConfig
from .helpers import wait_until
from .test_processes import Processes, processes  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]


def test_the_job_of_a_killed_process_is_rescued_when_a_worker_starts(
    sql_config: StorageConfig,
    processes: Processes,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = tmp_path / "ledger.txt"
    queue = JobQueue(sql_config.open(), retry_policy=FAST_RETRIES)
    job_id = queue.enqueue("slow", max_retries=3)
    # A lease of 300 s: expiry cannot explain a rescue within this test.
    victim = processes.start("hang", sql_config, ledger, lease=300.0)
    wait_until(lambda: ledger.exists() and ledger.read_text(), what="the job to start")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    held = queue.get_job(job_id)
    assert held.status == "running"
    assert held.lease_expires_at is not None
    assert held.lease_expires_at - queue.storage.now() > timedelta(seconds=200)
    (record,) = [w for w in queue.list_workers() if w.pid == victim.pid]
    assert record.id == held.worker_id

    @queue.handler("slow")
    def slow(ctx: JobContext) -> str:
        return f"rescued, attempt {ctx.attempt}"

    # While the record is fresh, the pid we cannot see may be a live process of
    # another pid namespace: the job is left alone.
    monkeypatch.setattr(upkeep_module, "ORPHAN_AFTER", 3600.0)
    with Worker(queue, poll_interval=0.05, max_poll_interval=0.2) as worker:
        wait_until(lambda: worker._idle, what="the worker to poll")
        assert queue.get_job(job_id).status == "running"
    # The dead process saves its record no more: it gets stale.
    monkeypatch.setattr(upkeep_module, "ORPHAN_AFTER", 1.0)
    wait_until(
        lambda: record.id not in {w.id for w in queue.storage.list_workers(seen_within=1.0)},
        what="the dead worker's record to get stale",
    )
    with Worker(queue, poll_interval=0.05, max_poll_interval=0.2) as worker:
        wait_until(lambda: queue.get_job(job_id).status.is_finished, timeout=30)
        job = queue.get_job(job_id)
        assert (job.status, job.attempts, job.result) == ("completed", 2, "rescued, attempt 2")
        assert job.last_error is not None and record.id in job.last_error
        assert "is gone" in job.last_error  # not "lease expired"
        assert [w.id for w in queue.list_workers()] == [worker.id]  # its record is removed
    queue.close()
