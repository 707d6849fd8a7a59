"""`Worker(concurrency=N)`: async jobs side by side on one worker, each on its own lease."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dbjobq import ConfigurationError, JobContext, JobQueue, JobSpec, StorageError, Worker
from dbjobq.storage import MemoryStorage, Storage

from .conftest import StorageConfig
from .helpers import wait_until
from .test_worker import FlakyStorage

N = 4


class Overlap:
    """Counts handlers in flight; `together` opens once `n` of them are in at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.running = 0
        self.peak = 0
        self._together: asyncio.Event | None = None  # made on the worker's loop

    async def enter_and_wait_for_company(self) -> None:
        if self._together is None:
            self._together = asyncio.Event()
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running == self.n:
            self._together.set()
        try:
            # Passes only if n handlers are in flight at once; else fails the test.
            await asyncio.wait_for(self._together.wait(), timeout=20)
        finally:
            self.running -= 1


def _all_completed(queue: JobQueue, ids: list[str]) -> bool:
    return all(queue.get_job(i).status == "completed" for i in ids)


def test_n_async_jobs_run_at_once_on_one_worker(queue: JobQueue) -> None:
    overlap = Overlap(N)

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> int:
        await overlap.enter_and_wait_for_company()
        return int(ctx.payload["n"])

    ids = queue.enqueue_many(JobSpec(type="fetch", payload={"n": n}) for n in range(2 * N))
    with Worker(queue, poll_interval=0.01, concurrency=N):
        wait_until(lambda: _all_completed(queue, ids), timeout=60, what="all jobs")
    assert overlap.peak == N  # N at once, never more
    jobs = [queue.get_job(i) for i in ids]
    assert [j.result for j in jobs] == list(range(2 * N))
    assert {j.attempts for j in jobs} == {1}


def test_run_until_empty_runs_async_jobs_side_by_side(queue: JobQueue) -> None:
    overlap = Overlap(N)

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> None:
        await overlap.enter_and_wait_for_company()

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    assert Worker(queue, concurrency=N).run_until_empty() == N
    assert _all_completed(queue, ids) and overlap.peak == N


def test_sync_handlers_still_run_one_at_a_time_beside_async_ones(queue: JobQueue) -> None:
    lock = threading.Lock()
    state = {"sync": 0, "sync_peak": 0}
    overlap = Overlap(N - 1)  # the async jobs meet while a sync job holds the last slot
    in_sync = threading.Event()

    @queue.handler("crunch")
    def crunch(ctx: JobContext) -> None:
        with lock:
            state["sync"] += 1
            state["sync_peak"] = max(state["sync_peak"], state["sync"])
        in_sync.set()
        ctx.cancelled.wait(0.05)
        with lock:
            state["sync"] -= 1

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> None:
        await overlap.enter_and_wait_for_company()

    ids = queue.enqueue_many(JobSpec(type="crunch") for _ in range(3))
    ids += queue.enqueue_many(JobSpec(type="fetch") for _ in range(N - 1))
    with Worker(queue, poll_interval=0.01, concurrency=N):
        wait_until(lambda: _all_completed(queue, ids), timeout=60, what="all jobs")
    assert state["sync_peak"] == 1 and overlap.peak == N - 1


def test_a_high_priority_sync_job_is_not_starved_by_low_priority_async_ones(
    queue: JobQueue,
) -> None:
    """Priority comes first across async and sync types: the sync job is claimed first."""

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> None:
        pass

    @queue.handler("crunch")
    def crunch(ctx: JobContext) -> None:
        pass

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(3 * N))
    urgent = queue.enqueue("crunch", priority=9)
    # Next in line, but the one sync slot is taken: given back, their slots go to async jobs.
    later = queue.enqueue_many(JobSpec(type="crunch", priority=5) for _ in range(2))
    worker = Worker(queue, concurrency=N)
    claimed: list[str] = []
    worker.on("job:claimed", lambda event: claimed.append(event.job.id))
    assert worker.run_until_empty() == 3 * N + 3
    assert claimed[0] == urgent
    assert _all_completed(queue, [*ids, urgent, *later])
    # The sync jobs claimed beside it and given back did not count as attempts.
    assert {queue.get_job(i).attempts for i in [*ids, urgent, *later]} == {1}


class _NoRelease(MemoryStorage):
    """A backend that cannot give claimed jobs back (keeps `Storage.release`)."""

    release = Storage.release


def test_without_release_priority_still_comes_first_and_no_job_is_held() -> None:
    queue = JobQueue(_NoRelease())

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> None:
        pass

    queue.register("crunch", lambda ctx: None)
    first = queue.enqueue("fetch", priority=9)
    urgent = queue.enqueue_many(JobSpec(type="crunch", priority=5) for _ in range(2))
    rest = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    worker = Worker(queue, concurrency=N)
    claimed: list[str] = []
    worker.on("job:claimed", lambda event: claimed.append(event.job.id))
    assert worker.run_until_empty() == N + 3
    # One claim at a time until the sync job: the second sync job is never claimed beside it.
    assert claimed[:N] == [first, urgent[0], *rest[: N - 2]]
    assert {queue.get_job(i).attempts for i in [first, *urgent, *rest]} == {1}


def test_each_job_keeps_its_own_timeout(queue: JobQueue) -> None:
    gate = Overlap(2)  # the quick job finishes only while the slow one is in flight

    @queue.handler("slow", timeout=0.3, max_retries=0)
    async def slow(ctx: JobContext) -> None:
        await gate.enter_and_wait_for_company()
        await asyncio.sleep(3600)

    @queue.handler("quick")
    async def quick(ctx: JobContext) -> str:
        await gate.enter_and_wait_for_company()
        return "done"

    slow_id, quick_id = queue.enqueue("slow"), queue.enqueue("quick")
    with Worker(queue, poll_interval=0.01, concurrency=N):
        wait_until(lambda: queue.get_job(slow_id).status.is_finished, timeout=30)
        wait_until(lambda: queue.get_job(quick_id).status.is_finished, timeout=30)
    failed, done = queue.get_job(slow_id), queue.get_job(quick_id)
    assert failed.status == "failed" and failed.last_error is not None
    assert failed.last_error.startswith("JobTimeoutError")
    assert (done.status, done.result) == ("completed", "done")


def test_stop_waits_for_every_job_in_flight(queue: JobQueue) -> None:
    gate = threading.Event()
    started: list[str] = []

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> str:
        started.append(ctx.job.id)
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return "finished"

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    worker = Worker(queue, poll_interval=0.01, concurrency=N)
    worker.start()
    wait_until(lambda: len(started) == N, what="all jobs to start")
    current = worker.current_job
    assert current is not None and current.id in ids
    worker.stop(wait=False)
    gate.set()
    assert worker.stop(timeout=30)
    assert _all_completed(queue, ids)
    assert worker.jobs_processed == N and worker.current_job is None


def test_a_stop_that_runs_out_gives_every_interrupted_job_back(queue: JobQueue) -> None:
    started: list[str] = []

    @queue.handler("fetch", max_retries=0)
    async def fetch(ctx: JobContext) -> None:
        started.append(ctx.job.id)
        while True:
            await asyncio.sleep(0.005)
            ctx.raise_if_cancelled()

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    worker = Worker(queue, poll_interval=0.01, concurrency=N)
    worker.start()
    wait_until(lambda: len(started) == N, what="all jobs to start")
    assert worker.stop(timeout=0.1)
    jobs = [queue.get_job(i) for i in ids]
    assert {(j.status, j.attempts) for j in jobs} == {("pending", 0)}


def test_every_job_in_flight_has_its_lease_renewed(queue: JobQueue) -> None:
    gate = threading.Event()
    started: list[str] = []

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> str:
        started.append(ctx.job.id)
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return "finished"

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    with Worker(queue, poll_interval=0.01, lease_seconds=0.6, concurrency=N):
        wait_until(lambda: len(started) == N, what="all jobs to start")
        first = {i: queue.get_job(i).lease_expires_at for i in ids}
        # Each lease moves on, over and over: the jobs outlive several leases.
        for _ in range(3):
            before = dict(first)

            def all_renewed(before: dict[str, Any] = before) -> bool:
                return all(queue.get_job(i).lease_expires_at > before[i] for i in ids)

            wait_until(all_renewed, what="every lease to be renewed")
            first = {i: queue.get_job(i).lease_expires_at for i in ids}
        gate.set()
        wait_until(lambda: _all_completed(queue, ids), what="all jobs")
    assert {queue.get_job(i).attempts for i in ids} == {1}  # none was rescued


def test_cancelling_one_job_in_flight_leaves_the_others_running(queue: JobQueue) -> None:
    gate = threading.Event()
    started: list[str] = []
    stopped: list[str] = []

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> str:
        started.append(ctx.job.id)
        try:
            while not gate.is_set():
                await asyncio.sleep(0.005)
                ctx.raise_if_cancelled()
        except BaseException:
            stopped.append(str(ctx.cancel_reason))
            raise
        return "finished"

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(N))
    with Worker(queue, poll_interval=0.01, lease_seconds=0.6, concurrency=N):
        wait_until(lambda: len(started) == N, what="all jobs to start")
        assert queue.cancel(ids[0])
        wait_until(lambda: stopped, what="the cancelled handler to stop")
        gate.set()
        wait_until(lambda: _all_completed(queue, ids[1:]), what="the others")
    assert stopped == ["cancelled"]
    assert queue.get_job(ids[0]).status == "cancelled"


def test_a_concurrent_worker_survives_failing_polls() -> None:
    storage = FlakyStorage(claim=5, complete=2)
    queue = JobQueue(storage)

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> str:
        return "ok"

    ids = queue.enqueue_many(JobSpec(type="fetch") for _ in range(2 * N))
    with Worker(queue, poll_interval=0.01, max_poll_interval=0.02, concurrency=N) as worker:
        wait_until(lambda: _all_completed(queue, ids), what="all jobs")
        assert worker.is_alive
    assert storage.calls["claim"] > 5


def test_run_until_empty_reports_a_storage_that_fails() -> None:
    queue = JobQueue(FlakyStorage(claim=1))
    queue.register("t", lambda ctx: None)
    queue.enqueue("t")
    with pytest.raises(StorageError):
        Worker(queue, concurrency=N).run_until_empty()
    assert Worker(queue, concurrency=N).run_until_empty() == 1


@pytest.mark.parametrize("value", [0, 1001, True, 2.0, "4"])
def test_concurrency_must_be_an_int_from_1_to_1000(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(JobQueue("sqlite://"), concurrency=value)


KILLED = """
import asyncio
import os
import sys

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.storage import SQLAlchemyStorage

url, prefix, schema, ledger_path = sys.argv[1:5]
queue = JobQueue(SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None))
ledger = open(ledger_path, "a", buffering=1)


@queue.handler("fetch")
async def fetch(ctx: JobContext) -> None:
    ledger.write(f"start {ctx.job.id}\\n")
    await asyncio.sleep(3600)


worker = Worker(queue, poll_interval=0.05, lease_seconds=1.0, concurrency=int(sys.argv[5]))
worker.start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
@pytest.mark.parametrize("sql_config", ["sqlite", "postgres"], indirect=True)
def test_a_worker_killed_with_jobs_in_flight_loses_none(
    sql_config: StorageConfig, tmp_path: Path
) -> None:
    script, ledger = tmp_path / "killed.py", tmp_path / "ledger.txt"
    script.write_text(KILLED)
    queue = JobQueue(sql_config.open())
    ids = queue.enqueue_many(JobSpec(type="fetch", max_retries=3) for _ in range(2 * N))
    args = [sql_config.url, sql_config.table_prefix, sql_config.schema or "", str(ledger), str(N)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_until(
            lambda: ledger.exists() and ledger.read_text().count("start") == N,
            timeout=60,
            what=f"{N} jobs in flight",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    started = [line.split()[1] for line in ledger.read_text().splitlines()]
    assert len(started) == N  # N in flight, N still pending, when it died
    counts = queue.counts()["default"]
    assert (counts["running"], counts["pending"]) == (N, N)

    runs: Counter[str] = Counter()

    @queue.handler("fetch")
    async def fetch(ctx: JobContext) -> int:
        runs[ctx.job.id] += 1
        return ctx.attempt

    with Worker(queue, poll_interval=0.05, max_poll_interval=0.2, concurrency=N):
        wait_until(lambda: _all_completed(queue, ids), timeout=60, what="all jobs")
    assert runs == Counter(ids)  # each job run once more, none lost
    attempts = {i: queue.get_job(i).result for i in ids}
    assert sorted(attempts[i] for i in started) == [2] * N  # rescued: the lost attempt counts
    assert sorted(attempts[i] for i in ids if i not in started) == [1] * N
    queue.close()
