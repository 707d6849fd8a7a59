"""`JobQueue.wait` and `wait_async`: on every backend, with real workers and processes.

Tests that show which path woke a waiter set its poll interval to 30 s, with no
timeout, and give it 20 s to return: it can then end in time only through a
wake-up, and a missing one fails the test instead of making it slow.
"""

from __future__ import annotations

import asyncio
import gc
import math
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dbjobq import (
    InvalidJobError,
    Job,
    JobContext,
    JobNotFound,
    JobQueue,
    JobStatus,
    Worker,
    _waiting,
)
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage
from dbjobq.storage._sql.notify import FINISHED

from .conftest import StorageConfig
from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
NO_POLL = 30.0  # seconds: longer than TIMEOUT, so no poll can end a wait
TIMEOUT = 20.0


class Waiting:
    """A `wait` in a thread, with polls 30 s apart and no timeout."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self.jobs: list[Job] = []
        self.thread = threading.Thread(target=self._wait, args=(queue, job_id), daemon=True)
        self.thread.start()

    def _wait(self, queue: JobQueue, job_id: str) -> None:
        self.jobs.append(queue.wait(job_id, poll_interval=NO_POLL))

    def job(self) -> Job:
        """The job the wait returned, if it returned within 20 s: woken, not polled."""
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "not woken: only a poll, 30 s on, would end the wait"
        (job,) = self.jobs
        return job


@pytest.fixture
def worker(queue: JobQueue) -> Iterator[Worker]:
    @queue.handler("add")
    def add(ctx: JobContext) -> int:
        return int(ctx.payload["a"]) + int(ctx.payload["b"])

    @queue.handler("boom", max_retries=0)
    def boom(ctx: JobContext) -> None:
        raise ValueError("no luck")

    worker = Worker(queue, poll_interval=0.05)
    worker.start()
    yield worker
    worker.stop()


def test_wait_returns_the_result_of_a_job_a_worker_completes(
    queue: JobQueue, worker: Worker
) -> None:
    job_id = queue.enqueue("add", {"a": 2, "b": 3})
    job = queue.wait(job_id, timeout=TIMEOUT)
    assert (job.status, job.result) == (JobStatus.COMPLETED, 5)
    assert job == queue.get_job(job_id)


def test_a_worker_in_this_process_wakes_the_waiter(queue: JobQueue, worker: Worker) -> None:
    """With polls 30 s apart, only the worker's own wake-up can end the wait in time."""
    for n in range(5):
        job_id = queue.enqueue("add", {"a": n, "b": 1})
        assert Waiting(queue, job_id).job().result == n + 1


def test_wait_returns_a_job_that_failed_for_good(queue: JobQueue, worker: Worker) -> None:
    job = Waiting(queue, queue.enqueue("boom")).job()
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None and "no luck" in job.last_error


def test_cancel_wakes_a_waiter_at_once(queue: JobQueue, reads: Reads) -> None:
    job_id = queue.enqueue("nobody-handles-this")
    waiting = Waiting(queue, job_id)
    reads.waiting()
    assert queue.cancel(job_id)
    assert waiting.job().status is JobStatus.CANCELLED


def test_a_waiter_on_another_queue_object_is_woken_too(queue: JobQueue, reads: Reads) -> None:
    """Queue objects on one storage object share their waiters."""
    other = JobQueue(queue.storage)
    job_id = queue.enqueue("nobody-handles-this")
    waiting = Waiting(other, job_id)
    reads.waiting()
    assert queue.cancel(job_id)
    assert waiting.job().status is JobStatus.CANCELLED


def test_cancelling_a_parent_wakes_the_waiters_of_its_cancelled_children(
    queue: JobQueue, reads: Reads
) -> None:
    _needs_workflows(queue)
    parent = queue.enqueue("nobody-handles-this")
    child = queue.enqueue("nobody-handles-this", depends_on=[parent])
    grandchild = queue.enqueue("nobody-handles-this", depends_on=[child])
    waiting = Waiting(queue, grandchild)
    reads.waiting()
    assert queue.cancel(parent)
    job = waiting.job()
    assert job.status is JobStatus.CANCELLED
    assert job.last_error is not None


def test_a_parent_failing_in_a_worker_wakes_the_waiters_of_its_children(
    queue: JobQueue, worker: Worker, reads: Reads
) -> None:
    _needs_workflows(queue)
    parent = queue.enqueue("boom", delay=0.2)
    child = queue.enqueue("add", {"a": 1, "b": 1}, depends_on=[parent])
    waiting = Waiting(queue, child)
    reads.waiting()
    assert waiting.job().status is JobStatus.CANCELLED
    assert queue.get_job(parent).status is JobStatus.FAILED


def _needs_workflows(queue: JobQueue) -> None:
    if not queue.storage.capabilities.workflows:
        pytest.skip("the backend has no workflows (Capabilities.workflows)")


def test_wait_for_an_unknown_job_raises_at_once(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound):
        queue.wait("01900000-0000-7000-8000-000000000000", poll_interval=NO_POLL)


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan, math.inf, "1", True, [1]])
def test_a_bad_timeout_is_refused(queue: JobQueue, timeout: Any) -> None:
    job_id = queue.enqueue("x")
    with pytest.raises(InvalidJobError, match="timeout"):
        queue.wait(job_id, timeout=timeout)
    with pytest.raises(InvalidJobError, match="timeout"):
        asyncio.run(queue.wait_async(job_id, timeout=timeout))
    assert not queue.waits


@pytest.mark.parametrize("poll", [0, -1, math.nan, "1"])
def test_a_bad_poll_interval_is_refused(queue: JobQueue, poll: Any) -> None:
    job_id = queue.enqueue("x")
    with pytest.raises(InvalidJobError, match="poll_interval"):
        queue.wait(job_id, timeout=1, poll_interval=poll)


def test_a_job_id_that_is_not_a_str_is_refused(queue: JobQueue) -> None:
    with pytest.raises(InvalidJobError, match="job id"):
        queue.wait(123)  # type: ignore[arg-type]


def test_timeout_takes_a_timedelta(queue: JobQueue) -> None:
    job_id = queue.enqueue("x")
    with pytest.raises(TimeoutError, match=job_id):
        queue.wait(job_id, timeout=timedelta(milliseconds=50))


def test_an_idle_wait_reads_the_job_a_few_times_a_second_at_most(
    queue: JobQueue, reads: Reads
) -> None:
    """The polls back off: a wait of 1.5 s on a job that does not move reads it seldom."""
    job_id = queue.enqueue("x")
    with pytest.raises(TimeoutError):
        queue.wait(job_id, timeout=1.5)
    # At 0, 0.05, 0.15, 0.35, 0.75 and 1.5 s: fewer on a slow machine, never more.
    assert 2 <= len(reads.ids) <= 7


# -- wait_async --------------------------------------------------------------------------


def test_wait_async_lets_other_tasks_run_and_one_of_them_finishes_the_job(
    queue: JobQueue,
) -> None:
    """The job is cancelled by another task: if the wait blocked the loop, it would time out."""
    job_id = queue.enqueue("nobody-handles-this")
    ticks: list[int] = []

    async def other_task() -> None:
        while len(ticks) < 20:
            ticks.append(len(ticks))
            await asyncio.sleep(0.01)
        queue.cancel(job_id)

    async def main() -> Any:
        task = asyncio.create_task(other_task())
        # Not woken within 20 s: wait_for raises TimeoutError before any poll.
        job = await asyncio.wait_for(queue.wait_async(job_id, poll_interval=NO_POLL), TIMEOUT)
        await task
        return job

    job = asyncio.run(main())
    assert job.status is JobStatus.CANCELLED
    assert len(ticks) == 20


def test_wait_async_returns_the_result_of_a_worker(queue: JobQueue, worker: Worker) -> None:
    async def handler_like(job_id: str) -> Any:
        waited = queue.wait_async(job_id, poll_interval=NO_POLL)
        job = await asyncio.wait_for(waited, TIMEOUT)  # woken, not polled
        return job.result

    results = asyncio.run(
        _gather(handler_like, [queue.enqueue("add", {"a": n, "b": n}) for n in range(5)])
    )
    assert results == [0, 2, 4, 6, 8]


async def _gather(fn: Any, ids: list[str]) -> list[Any]:
    return list(await asyncio.gather(*(fn(job_id) for job_id in ids)))


def test_wait_async_times_out_and_reports_unknown_jobs(queue: JobQueue) -> None:
    job_id = queue.enqueue("x")
    with pytest.raises(TimeoutError):
        asyncio.run(queue.wait_async(job_id, timeout=0.1))
    with pytest.raises(JobNotFound):
        asyncio.run(queue.wait_async("01900000-0000-7000-8000-000000000000"))
    assert not queue.waits


def test_cancelling_the_awaiting_task_ends_the_wait(queue: JobQueue) -> None:
    """Again and again, so that a cancel meets the waiter at every point of its loop."""
    job_id = queue.enqueue("x")

    async def main(rounds: int) -> None:
        for n in range(rounds):
            task = asyncio.create_task(queue.wait_async(job_id))
            while not queue.waits:
                await asyncio.sleep(0)
            for _ in range(n % 5):  # let it get a little further each round
                await asyncio.sleep(0.001)
            queue.waits.finished_anywhere()  # a wake-up that meets the cancel...
            for _ in range(n % 4):  # ...a few steps of the loop later
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)  # a lost cancel: TimeoutError
            assert not queue.waits

    asyncio.run(main(30))
    assert queue.get_job(job_id).status is JobStatus.PENDING


def test_the_waits_of_a_storage_do_not_keep_it_alive() -> None:
    storage = MemoryStorage()
    with pytest.raises(TimeoutError):
        JobQueue(storage).wait(JobQueue(storage).enqueue("x"), timeout=0.01)
    ref = weakref.ref(storage)
    del storage
    gc.collect()
    assert ref() is None


# -- another process ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def shared_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(f"{request.param}_config")
    return config


def test_a_job_finished_by_another_process_wakes_the_waiter_through_the_signal(
    shared_config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's data_version, PostgreSQL's NOTIFY: polls are 30 s apart, the wait ends first.

    The other process completes the job only after the waiter has read it unfinished.
    """
    storage = shared_config.open()
    queue = JobQueue(storage)
    assert storage.capabilities.notify_finished
    finisher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.proc_finish",
            shared_config.url,
            shared_config.table_prefix,
            shared_config.schema or "",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert finisher.stdin is not None and finisher.stdout is not None
    try:
        for _ in range(3):
            reads = Reads(queue, monkeypatch)
            job_id = queue.enqueue("elsewhere")
            finisher.stdin.write(f"{job_id}\n")
            finisher.stdin.flush()
            assert finisher.stdout.readline().strip() == "claimed"
            waiting = Waiting(queue, job_id)
            reads.waiting()
            finisher.stdin.write("go\n")
            finisher.stdin.flush()
            assert finisher.stdout.readline().strip() == "done"
            job = waiting.job()
            assert (job.status, job.result) == (JobStatus.COMPLETED, f"from {finisher.pid}")
    finally:
        finisher.stdin.close()
        assert finisher.wait(60) == 0
        finisher.stdout.close()
        queue.close()


class Reads:
    """Counts the reads of jobs through a storage object; `waiting()` blocks until one."""

    def __init__(self, queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: list[str] = []
        self._read = threading.Event()
        original = queue.storage.get

        def get(job_id: str) -> Any:
            job = original(job_id)
            self.ids.append(job_id)
            self._read.set()
            return job

        monkeypatch.setattr(queue.storage, "get", get)

    def waiting(self) -> None:
        """Until a waiter has read its job once and found it unfinished."""
        assert self._read.wait(TIMEOUT), "nobody started waiting"


@pytest.fixture
def reads(queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> Reads:
    return Reads(queue, monkeypatch)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_waits_in_a_row_share_one_subscription_that_ends_after_a_while(
    storage: SQLAlchemyStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage's watcher (and its connection) outlives a wait by `LINGER` seconds."""
    monkeypatch.setattr(_waiting, "LINGER", 0.5)
    queue = JobQueue(storage)
    subscribed: list[Any] = []
    original = storage.subscribe_finished

    def subscribe_finished(callback: Any) -> Any:
        subscribed.append(callback)
        return original(callback)

    monkeypatch.setattr(storage, "subscribe_finished", subscribe_finished)
    for _ in range(3):
        job_id = queue.enqueue("x")
        queue.cancel(job_id)
        assert queue.wait(job_id).status is JobStatus.CANCELLED
    assert len(subscribed) == 1
    watcher = storage._watcher
    assert watcher is not None
    assert watcher.wants(FINISHED)
    wait_until(lambda: not watcher.wants(FINISHED), what="the subscription to end")
