"""Why a handler was asked to stop, and what becomes of an interrupted attempt."""

from __future__ import annotations

import threading

import pytest

from dbjobq import (
    CancelReason,
    DBJobQError,
    JobContext,
    JobInterrupted,
    JobQueue,
    Worker,
    _faults,
)
from dbjobq.storage import MemoryStorage, Storage

from .helpers import wait_until


def _looping(queue: JobQueue, seen: list[CancelReason | None], started: threading.Event) -> None:
    """A `work` handler that loops until asked to stop, then raises, on its first run."""

    @queue.handler("work", max_retries=0, timeout=300)
    def work(ctx: JobContext) -> str:
        if ctx.attempt == 1 and not seen:
            started.set()
            while True:
                ctx.cancelled.wait(0.01)
                try:
                    ctx.raise_if_cancelled()
                except JobInterrupted as interrupted:
                    # The exception carries the reason too.
                    seen.append(
                        ctx.cancel_reason if interrupted.reason == ctx.cancel_reason else None
                    )
                    raise
        return "done"


def test_a_job_interrupted_by_shutdown_goes_back_to_pending_without_using_an_attempt(
    queue: JobQueue,
) -> None:
    seen: list[CancelReason | None] = []
    started = threading.Event()
    _looping(queue, seen, started)
    job_id = queue.enqueue("work")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=0.1)  # runs out while the handler loops
    assert seen == [CancelReason.SHUTDOWN] and seen == ["shutdown"]
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("pending", 0, None)
    assert job.lease_token is None and job.worker_id is None
    # max_retries=0: had the attempt counted, a later worker could not run it.
    assert Worker(queue).run_until_empty() == 1
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 1, "done")


def test_any_exception_after_the_shutdown_signal_also_gives_the_job_back(
    queue: JobQueue,
) -> None:
    started = threading.Event()

    @queue.handler("work", max_retries=0)
    def work(ctx: JobContext) -> None:
        started.set()
        ctx.cancelled.wait(30)
        raise ConnectionError("socket closed under us")

    job_id = queue.enqueue("work")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=0.1)
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.last_error) == ("pending", 0, None)


def test_returning_after_the_shutdown_signal_still_records_the_result(queue: JobQueue) -> None:
    started = threading.Event()

    @queue.handler("work")
    def work(ctx: JobContext) -> str:
        started.set()
        ctx.cancelled.wait(30)
        return str(ctx.cancel_reason)

    job_id = queue.enqueue("work")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=0.1)
    job = queue.get_job(job_id)
    assert (job.status, job.result) == ("completed", "shutdown")


def test_a_cancelled_job_stays_cancelled_and_its_handler_knows_why(queue: JobQueue) -> None:
    seen: list[CancelReason | None] = []
    started = threading.Event()
    _looping(queue, seen, started)
    job_id = queue.enqueue("work")
    worker = Worker(queue, poll_interval=0.01, lease_seconds=0.6)  # heartbeat every 0.2 s
    worker.start()
    try:
        assert started.wait(10)
        assert queue.cancel(job_id)
        wait_until(lambda: seen, what="the handler to stop")
    finally:
        worker.stop()
    assert seen == [CancelReason.CANCELLED]
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("cancelled", 1, None)


def test_progress_on_a_cancelled_job_says_cancelled(queue: JobQueue) -> None:
    reasons: list[CancelReason | None] = []
    started, go_on = threading.Event(), threading.Event()

    @queue.handler("work")
    def work(ctx: JobContext) -> None:
        started.set()
        go_on.wait(10)
        ctx.progress(1)  # finds the lease gone
        reasons.append(ctx.cancel_reason)
        ctx.raise_if_cancelled()

    job_id = queue.enqueue("work")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    try:
        assert started.wait(10)
        assert queue.cancel(job_id)
        go_on.set()
        wait_until(lambda: reasons)
    finally:
        worker.stop()
    assert reasons == [CancelReason.CANCELLED]
    assert queue.get_job(job_id).status == "cancelled"


def test_a_timeout_is_a_timeout_failure_whatever_the_handler_raises(queue: JobQueue) -> None:
    seen: list[CancelReason | None] = []

    @queue.handler("work", timeout=0.2, max_retries=0)
    def work(ctx: JobContext) -> None:
        ctx.cancelled.wait(30)
        seen.append(ctx.cancel_reason)
        ctx.raise_if_cancelled()

    job_id = queue.enqueue("work")
    Worker(queue).run_until_empty()
    assert seen == [CancelReason.TIMEOUT]
    job = queue.get_job(job_id)
    assert job.status == "failed" and job.last_error is not None
    assert job.last_error.startswith("JobTimeoutError")


def test_a_lost_lease_discards_the_outcome_and_says_so() -> None:
    storage = MemoryStorage()
    queue = JobQueue(storage)
    seen: list[CancelReason | None] = []
    started = threading.Event()
    _looping(queue, seen, started)
    job_id = queue.enqueue("work")

    def take_the_job_away() -> None:  # as a rescue by another worker would
        storage.cancel(job_id)
        storage.retry(job_id)

    _faults.arm("heartbeat", take_the_job_away)
    worker = Worker(queue, poll_interval=0.01, lease_seconds=0.6)
    worker.start()
    try:
        assert started.wait(10)
        wait_until(lambda: seen, what="the handler to stop")
        # Nothing recorded for the lost attempt; the new holder (here the same
        # worker, claiming the job again) runs it afresh.
        wait_until(lambda: queue.get_job(job_id).status.is_finished)
    finally:
        _faults.disarm()
        worker.stop()
    assert seen == [CancelReason.LEASE_LOST]
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result, job.last_error) == ("completed", 1, "done", None)


def test_raise_if_cancelled_does_nothing_until_the_signal(queue: JobQueue) -> None:
    outcomes: list[object] = []

    @queue.handler("work")
    def work(ctx: JobContext) -> str:
        outcomes.append(ctx.cancel_reason)
        ctx.raise_if_cancelled()
        ctx.cancelled.set()  # set by hand: no reason known
        with pytest.raises(JobInterrupted) as info:
            ctx.raise_if_cancelled()
        outcomes.append(info.value.reason)
        assert isinstance(info.value, DBJobQError)
        return "ok"

    job_id = queue.enqueue("work")
    Worker(queue).run_until_empty()
    assert outcomes == [None, None]
    assert queue.get_job(job_id).result == "ok"


def test_without_release_an_interrupted_attempt_is_a_failed_one() -> None:
    class NoRelease(MemoryStorage):
        release = Storage.release
        release_many = Storage.release_many

    queue = JobQueue(NoRelease())
    seen: list[CancelReason | None] = []
    started = threading.Event()
    _looping(queue, seen, started)
    job_id = queue.enqueue("work", max_retries=2)
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=0.1)
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("pending", 1)
    assert job.last_error is not None and job.last_error.startswith("JobInterrupted")
