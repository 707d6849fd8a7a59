"""Worker behaviour, observed through real threads on every backend."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest

from dbjobq import (
    ConfigurationError,
    JobContext,
    JobError,
    JobQueue,
    JobSpec,
    JobValidationError,
    RetryPolicy,
    StorageError,
    Worker,
)
from dbjobq.storage import MemoryStorage, Storage
from dbjobq.testing import make_job

from .helpers import wait_until


def finished(queue: JobQueue, job_id: str) -> bool:
    return queue.get_job(job_id).status.is_finished


def test_worker_runs_a_job_and_stores_its_result(queue: JobQueue) -> None:
    @queue.handler("add")
    def add(ctx: JobContext) -> dict[str, int]:
        return {"sum": ctx.payload["a"] + ctx.payload["b"]}

    job_id = queue.enqueue("add", {"a": 2, "b": 3})
    with Worker(queue, poll_interval=0.01):
        wait_until(lambda: finished(queue, job_id), what="job to finish")
    job = queue.get_job(job_id)
    assert job.status == "completed"
    assert job.result == {"sum": 5}
    assert job.attempts == 1


def test_current_job_and_progress_are_visible_while_running(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.handler("long")
    def long(ctx: JobContext) -> str:
        ctx.progress(50, "halfway")
        started.set()
        release.wait(10)
        return "done"

    job_id = queue.enqueue("long")
    worker = Worker(queue, poll_interval=0.01)
    idle_before = worker.current_job
    worker.start()
    try:
        assert started.wait(10)
        assert idle_before is None
        current = worker.current_job
        assert current is not None and current.id == job_id
        assert current.status == "running"
        seen = queue.get_job(job_id)
        assert (seen.status, seen.progress, seen.progress_message) == ("running", 50.0, "halfway")
        assert seen.worker_id == worker.id
        release.set()
        wait_until(lambda: finished(queue, job_id))
        wait_until(lambda: worker.current_job is None, what="current_job to clear")
    finally:
        release.set()
        worker.stop()


def test_async_handlers_run(queue: JobQueue) -> None:
    @queue.handler("async")
    async def handler(ctx: JobContext) -> int:
        await asyncio.sleep(0.01)
        return int(ctx.payload["n"]) * 2

    ids = [queue.enqueue("async", {"n": n}) for n in range(3)]
    with Worker(queue, poll_interval=0.01):
        wait_until(lambda: all(finished(queue, i) for i in ids))
    assert [queue.get_job(i).result for i in ids] == [0, 2, 4]


def test_priority_order_is_followed(queue: JobQueue) -> None:
    order: list[int] = []
    queue.register("p", lambda ctx: order.append(ctx.payload["p"]))
    for p in (1, 5, 3, 5, 0):
        queue.enqueue("p", {"p": p}, priority=p)
    assert Worker(queue).run_until_empty() == 5
    assert order == [5, 5, 3, 1, 0]


def test_a_failing_job_is_retried_then_failed_with_its_traceback(queue: JobQueue) -> None:
    calls: list[int] = []

    @queue.handler("broken", max_retries=2)
    def broken(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    job_id = queue.enqueue("broken")
    with Worker(queue, poll_interval=0.01, max_poll_interval=0.02):
        wait_until(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert calls == [1, 2, 3]
    assert job.status == "failed"
    assert job.attempts == 3
    assert job.last_error is not None
    assert job.last_error.startswith("RuntimeError: boom 3")
    assert "Traceback" in job.last_error and "in broken" in job.last_error


def test_a_job_that_fails_once_then_succeeds_completes(queue: JobQueue) -> None:
    @queue.handler("flaky")
    def flaky(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return "ok"

    job_id = queue.enqueue("flaky")
    with Worker(queue, poll_interval=0.01, max_poll_interval=0.02):
        wait_until(lambda: finished(queue, job_id))
    job = queue.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 2, "ok")
    assert job.last_error is not None and "ConnectionError: try again" in job.last_error


@pytest.mark.parametrize(
    "error",
    [JobValidationError("bad input"), JobError("give up", retryable=False)],
    ids=["JobValidationError", "JobError(retryable=False)"],
)
def test_non_retryable_errors_fail_at_once(queue: JobQueue, error: Exception) -> None:
    def handler(ctx: JobContext) -> None:
        raise error

    queue.register("t", handler, max_retries=5)
    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("failed", 1)


def test_job_error_retry_in_sets_the_next_run(queue: JobQueue) -> None:
    def handler(ctx: JobContext) -> None:
        raise JobError("rate limited", retry_in=3600)

    queue.register("t", handler)
    job_id = queue.enqueue("t")
    assert Worker(queue).run_until_empty() == 1
    job = queue.get_job(job_id)
    assert job.status == "pending"
    assert 3590 <= (job.run_at - job.updated_at).total_seconds() <= 3601


def test_a_non_json_result_fails_the_job_without_retry(queue: JobQueue) -> None:
    queue.register("t", lambda ctx: {"when": object()})
    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None and job.last_error.startswith("PayloadError: handler result")


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_base_exceptions_in_a_handler_neither_kill_the_worker_nor_lose_the_job(
    queue: JobQueue, exc_type: type[BaseException]
) -> None:
    @queue.handler("t")
    def handler(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise exc_type()
        return "survived"

    first, second = queue.enqueue("t"), queue.enqueue("t")
    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.02)
    worker.start()
    try:
        wait_until(lambda: finished(queue, first) and finished(queue, second))
        assert worker.is_alive
    finally:
        worker.stop()
    for job_id in (first, second):
        job = queue.get_job(job_id)
        assert (job.status, job.attempts, job.result) == ("completed", 2, "survived")
        assert job.last_error is not None and job.last_error.startswith(exc_type.__name__)


def test_timeout_fails_the_attempt_and_sets_the_abort_signal(queue: JobQueue) -> None:
    saw_cancel = threading.Event()

    @queue.handler("slow", timeout=0.2, max_retries=0)
    def slow(ctx: JobContext) -> str:
        if ctx.cancelled.wait(10):
            saw_cancel.set()
        return "too late"

    queue.register("quick", lambda ctx: "quick")
    slow_id, quick_id = queue.enqueue("slow", priority=1), queue.enqueue("quick")
    with Worker(queue, poll_interval=0.01):
        wait_until(lambda: finished(queue, slow_id) and finished(queue, quick_id))
    assert saw_cancel.is_set()
    job = queue.get_job(slow_id)
    assert job.status == "failed"
    assert job.last_error is not None and job.last_error.startswith("JobTimeoutError")
    assert job.result is None
    assert queue.get_job(quick_id).result == "quick"


def test_a_hung_handler_is_abandoned_and_can_never_record_an_outcome(queue: JobQueue) -> None:
    release, returned = threading.Event(), threading.Event()

    @queue.handler("stuck", max_retries=0)
    def stuck(ctx: JobContext) -> str:
        release.wait(30)  # ignores ctx.cancelled on purpose
        returned.set()
        return "late result"

    queue.register("next", lambda ctx: "next ran")
    stuck_id = queue.enqueue("stuck", timeout=0.1, priority=1)
    next_id = queue.enqueue("next")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    try:
        wait_until(lambda: finished(queue, stuck_id) and finished(queue, next_id))
        assert queue.get_job(next_id).result == "next ran"  # a new runner thread took over
        release.set()
        assert returned.wait(10)
    finally:
        release.set()
        worker.stop()
    job = queue.get_job(stuck_id)
    assert job.status == "failed" and job.result is None


def test_async_handler_is_cancelled_at_its_timeout(queue: JobQueue) -> None:
    cancelled = threading.Event()

    @queue.handler("slow", timeout=0.1, max_retries=0)
    async def slow(ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job_id = queue.enqueue("slow")
    with Worker(queue, poll_interval=0.01):
        wait_until(lambda: finished(queue, job_id))
        assert cancelled.wait(5)
    assert queue.get_job(job_id).status == "failed"


def test_cancelling_a_running_job_signals_its_handler(queue: JobQueue) -> None:
    started, stopped = threading.Event(), threading.Event()

    @queue.handler("loop")
    def loop(ctx: JobContext) -> str:
        started.set()
        if ctx.cancelled.wait(30):
            stopped.set()
        return "should be discarded"

    job_id = queue.enqueue("loop")
    worker = Worker(queue, poll_interval=0.01, lease_seconds=0.6)  # heartbeat every 0.2 s
    worker.start()
    try:
        assert started.wait(10)
        assert queue.cancel(job_id)
        assert stopped.wait(10)
        wait_until(lambda: worker.current_job is None)
    finally:
        worker.stop()
    job = queue.get_job(job_id)
    assert (job.status, job.result) == ("cancelled", None)


def test_jobs_without_a_handler_stay_pending_untouched(queue: JobQueue) -> None:
    queue.register("known", lambda ctx: "ok")
    unknown = queue.enqueue("unknown")
    known = queue.enqueue("known")
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(known).status == "completed"
    job = queue.get_job(unknown)
    assert (job.status, job.attempts, job.worker_id) == ("pending", 0, None)


def test_a_worker_takes_only_its_queues(queue: JobQueue) -> None:
    queue.register("t", lambda ctx: ctx.job.queue)
    mail, default = queue.enqueue("t", queue="mail"), queue.enqueue("t")
    assert Worker(queue, queues=["mail"]).run_until_empty() == 1
    assert queue.get_job(mail).status == "completed"
    assert queue.get_job(default).status == "pending"


def test_max_jobs_stops_the_worker(queue: JobQueue) -> None:
    queue.register("t", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="t") for _ in range(5)])
    worker = Worker(queue, poll_interval=0.01, max_jobs=3)
    worker.start()
    wait_until(lambda: not worker.is_alive, what="worker to exit")
    assert worker.jobs_processed == 3
    assert len(queue.get_pending_jobs()) == 2


def test_start_twice_raises_and_stop_is_idempotent(queue: JobQueue) -> None:
    worker = Worker(queue, poll_interval=0.01)
    assert worker.stop()  # before start: a no-op
    worker.start()
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    assert worker.stop()
    assert worker.stop()
    assert not worker.is_alive


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poll_interval": 0},
        {"poll_interval": -1},
        {"poll_interval": 2, "max_poll_interval": 1},
        {"lease_seconds": 0},
        {"lease_seconds": 3, "heartbeat_interval": 3},
        {"queues": []},
        {"queues": "default"},
        {"max_jobs": 0},
    ],
)
def test_bad_worker_options_raise_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Worker(JobQueue(MemoryStorage()), **kwargs)


# -- polling and waking ---------------------------------------------------------------------


class RecordingStorage(MemoryStorage):
    """Remembers when each claim started and how many jobs it found."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[float] = []
        self.found: list[int] = []

    def claim(self, **kwargs: Any) -> Any:
        self.claims.append(time.monotonic())
        jobs = super().claim(**kwargs)
        self.found.append(len(jobs))
        return jobs


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_adaptive_polling_doubles_caps_and_resets_on_work() -> None:
    storage = RecordingStorage()
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: None)
    worker = Worker(queue, poll_interval=0.05, max_poll_interval=0.4)
    worker.start()
    try:
        wait_until(lambda: len(storage.found) >= 7, what="7 polls")
        # Put a job in behind the queue's back, so no wake-up: only polling finds it.
        storage.enqueue([make_job("t")])
        wait_until(lambda: 1 in storage.found, what="the job to be found")
        hit = storage.found.index(1)
        wait_until(lambda: len(storage.found) >= hit + 4, what="polls after the job")
    finally:
        worker.stop()
    idle = gaps(storage.claims[:7])
    for seen, want in zip(idle, [0.05, 0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert want * 0.95 <= seen <= want + 0.3, idle
    # After the poll that found the job, the worker polls again at once (more work?),
    # then backs off starting from poll_interval again.
    after = gaps(storage.claims[hit : hit + 4])
    assert after[0] < 0.05 + 0.3, after
    assert 0.05 * 0.95 <= after[1] <= 0.05 + 0.3, after
    assert 0.1 * 0.95 <= after[2] <= 0.1 + 0.3, after


def test_enqueue_wakes_an_idle_worker_at_once() -> None:
    storage = RecordingStorage()
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: "woken")
    worker = Worker(queue, poll_interval=30, max_poll_interval=30)
    worker.start()
    try:
        wait_until(lambda: storage.claims and worker._idle, what="worker to go idle")
        job_id = queue.enqueue("t")
        # Without the wake-up the next poll would be 30 s away.
        wait_until(lambda: finished(queue, job_id), timeout=5)
    finally:
        worker.stop()
    assert queue.get_job(job_id).result == "woken"


def test_stop_wakes_a_sleeping_worker_at_once() -> None:
    storage = RecordingStorage()
    queue = JobQueue(storage)
    worker = Worker(queue, poll_interval=30, max_poll_interval=30)
    worker.start()
    wait_until(lambda: storage.claims or worker._idle, what="worker to go idle")
    began = time.monotonic()
    assert worker.stop(timeout=10)
    assert time.monotonic() - began < 5  # far less than the 30 s poll interval


# -- graceful stop --------------------------------------------------------------------------


def test_stop_waits_for_the_current_job(queue: JobQueue) -> None:
    started = threading.Event()

    @queue.handler("long")
    def long(ctx: JobContext) -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    job_id = queue.enqueue("long")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=10)
    job = queue.get_job(job_id)
    assert (job.status, job.result) == ("completed", "finished")


def test_stop_gives_up_on_a_stuck_job_which_is_later_rescued(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    results: list[str] = []

    @queue.handler("stuck")
    def stuck(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            started.set()
            release.wait(30)  # stuck, ignoring the abort signal
            results.append("first attempt returned")
            return "stale"
        return "rescued"

    job_id = queue.enqueue("stuck")
    first = Worker(queue, poll_interval=0.01, lease_seconds=1.0)
    first.start()
    assert started.wait(10)
    began = time.monotonic()
    assert first.stop(timeout=0.3)
    assert 0.3 <= time.monotonic() - began < 2.0
    assert queue.get_job(job_id).status == "running"  # still leased, not lost
    second = Worker(queue, poll_interval=0.05, max_poll_interval=0.1, lease_seconds=1.0)
    second.start()
    try:
        wait_until(lambda: finished(queue, job_id), timeout=10)
        release.set()  # the abandoned handler returns now; its result must not count
        wait_until(lambda: results, what="abandoned handler to return")
    finally:
        release.set()
        second.stop()
    job = queue.get_job(job_id)
    assert (job.status, job.result, job.attempts) == ("completed", "rescued", 2)
    assert job.last_error is not None and "lease expired" in job.last_error


def test_a_handler_that_stops_when_asked_has_its_outcome_recorded(queue: JobQueue) -> None:
    started = threading.Event()

    @queue.handler("polite")
    def polite(ctx: JobContext) -> str:
        started.set()
        ctx.cancelled.wait(30)
        return "stopped cleanly"

    job_id = queue.enqueue("polite")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert worker.stop(timeout=0.2)
    job = queue.get_job(job_id)
    assert (job.status, job.result, job.attempts) == ("completed", "stopped cleanly", 1)


def test_stop_all_stops_workers_side_by_side(queue: JobQueue) -> None:
    count = 4
    barrier = threading.Barrier(count + 1)

    @queue.handler("slow")
    def slow(ctx: JobContext) -> str:
        barrier.wait(10)
        ctx.cancelled.wait(30)  # returns only when told to
        return "done"

    ids = [queue.enqueue("slow") for _ in range(count)]
    workers = [Worker(queue, poll_interval=0.01) for _ in range(count)]
    for w in workers:
        w.start()
    barrier.wait(10)  # every worker is inside a job
    began = time.monotonic()
    assert Worker.stop_all(workers, timeout=0.5)
    # One timeout (plus the grace second) for all four, not four in a row.
    assert time.monotonic() - began < 0.5 + 1.0 + 1.0
    assert [queue.get_job(i).result for i in ids] == ["done"] * count


def test_a_second_stop_can_only_bring_the_deadline_forward(queue: JobQueue) -> None:
    started = threading.Event()

    @queue.handler("slow")
    def slow(ctx: JobContext) -> str:
        started.set()
        ctx.cancelled.wait(30)
        return "done"

    queue.enqueue("slow")
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    assert not worker.stop(timeout=60, wait=False)  # returns at once
    began = time.monotonic()
    assert worker.stop(timeout=0.2)  # the shorter deadline wins
    assert time.monotonic() - began < 0.2 + 1.0 + 1.0


# -- many threads -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_eight_workers_drain_two_thousand_jobs_exactly_once(queue: JobQueue) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    @queue.handler("count")
    def count(ctx: JobContext) -> int:
        with lock:
            seen.append(ctx.job.id)
        return int(ctx.payload["n"])

    ids = queue.enqueue_many(JobSpec(type="count", payload={"n": n}) for n in range(2000))
    workers = [Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(8)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: queue.counts()["default"]["completed"] == 2000, timeout=240)
    finally:
        for w in workers:
            w.stop()
    assert Counter(seen) == Counter(ids)  # every job ran, and exactly once
    assert queue.counts()["default"] == {
        "waiting": 0,
        "pending": 0,
        "running": 0,
        "completed": 2000,
        "failed": 0,
        "cancelled": 0,
    }
    assert sum(w.jobs_processed for w in workers) == 2000
    assert sum(1 for w in workers if w.jobs_processed) > 1


# -- storage trouble ----------------------------------------------------------------------


class FlakyStorage(MemoryStorage):
    """Fails the first few calls of chosen methods with StorageError."""

    def __init__(self, **failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls: Counter[str] = Counter()

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if self.calls[name] <= self.failures.get(name, 0):
            raise StorageError(f"{name}: connection lost (simulated)")

    def claim(self, **kwargs: Any) -> Any:
        self._maybe_fail("claim")
        return super().claim(**kwargs)

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        self._maybe_fail("complete")
        return super().complete(job_id, token, result=result)

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        self._maybe_fail("heartbeat")
        return super().heartbeat(job_id, token, lease_seconds=lease_seconds)

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        self._maybe_fail("set_progress")
        return super().set_progress(job_id, token, progress=progress, message=message)


def test_worker_survives_failing_polls_and_logs_them_once(caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage(claim=8)
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: "ok")
    job_id = queue.enqueue("t")
    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.02)
    with caplog.at_level(logging.WARNING, logger="dbjobq"):
        worker.start()
        try:
            wait_until(lambda: finished(queue, job_id))
            assert worker.is_alive
        finally:
            worker.stop()
    assert storage.calls["claim"] > 8
    failed = [r for r in caplog.records if "polling failed" in r.getMessage()]
    recovered = [
        r for r in caplog.records if "polling recovered after 8 failures" in r.getMessage()
    ]
    assert (len(failed), len(recovered)) == (1, 1)


def test_a_failed_completion_write_is_retried_while_the_lease_holds() -> None:
    storage = FlakyStorage(complete=3)
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: "recorded")
    job_id = queue.enqueue("t")
    assert Worker(queue, lease_seconds=5).run_until_empty() == 1
    job = queue.get_job(job_id)
    assert (job.status, job.result, job.attempts) == ("completed", "recorded", 1)
    assert storage.calls["complete"] == 4


def test_an_outcome_that_cannot_be_recorded_in_time_is_rescued_and_run_again() -> None:
    storage = FlakyStorage(complete=1000, heartbeat=1000)
    queue = JobQueue(storage, retry_policy=RetryPolicy(base_delay=0))
    runs: list[int] = []

    @queue.handler("t")
    def handler(ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        time.sleep(0.2)  # outlives the lease: every heartbeat fails
        return "recorded"

    job_id = queue.enqueue("t")
    worker = Worker(queue, lease_seconds=0.15)
    assert worker.run_until_empty() == 1
    assert queue.get_job(job_id).status == "running"  # outcome not recorded, lease lapsed
    storage.failures.clear()
    assert worker.run_until_empty() == 1  # rescued, then run again
    job = queue.get_job(job_id)
    assert (job.status, job.result, job.attempts) == ("completed", "recorded", 2)
    assert runs == [1, 2]


def test_progress_that_cannot_be_stored_does_not_fail_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = FlakyStorage(set_progress=1)
    queue = JobQueue(storage)

    @queue.handler("t")
    def handler(ctx: JobContext) -> str:
        ctx.progress(10)
        ctx.progress(90, "nearly")
        return "done"

    job_id = queue.enqueue("t")
    with caplog.at_level(logging.WARNING, logger="dbjobq.job"):
        Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert (job.status, job.progress, job.progress_message) == ("completed", 90.0, "nearly")
    assert f"[t {job_id}] progress not stored" in caplog.text


def test_bad_progress_values_fail_the_attempt(queue: JobQueue) -> None:
    @queue.handler("t", max_retries=0)
    def handler(ctx: JobContext) -> None:
        ctx.progress(float("nan"))

    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert job.status == "failed"
    assert job.last_error is not None and job.last_error.startswith("InvalidJobError: progress")


# -- batches ------------------------------------------------------------------------------


class _ClaimSpy:
    """Records the `limit` of every claim that found jobs."""

    def __init__(self, queue: JobQueue) -> None:
        self.limits: list[int] = []
        self.sizes: list[int] = []
        storage = queue.storage
        original = storage.claim

        def claim(**kwargs: Any) -> Any:
            jobs = original(**kwargs)
            if jobs:
                self.limits.append(kwargs.get("limit", 1))
                self.sizes.append(len(jobs))
            return jobs

        storage.claim = claim  # type: ignore[method-assign]


def test_short_jobs_are_claimed_and_recorded_in_growing_batches(queue: JobQueue) -> None:
    queue.register("quick", lambda ctx: ctx.payload["n"])
    ids = queue.enqueue_many([JobSpec(type="quick", payload={"n": n}) for n in range(60)])
    spy = _ClaimSpy(queue)
    assert Worker(queue).run_until_empty() == 60
    assert spy.limits[0] == 1  # it starts with one job per claim...
    assert max(spy.sizes) > 1  # ...and takes more once jobs prove short
    assert all(b <= 2 * a for a, b in itertools.pairwise(spy.limits))
    assert max(spy.limits) <= 64
    for n, job_id in enumerate(ids):
        job = queue.get_job(job_id)
        assert (job.status, job.result, job.attempts) == ("completed", n, 1)
        assert job.lease_token is None


@pytest.mark.parametrize(
    ("seconds_per_job", "last", "claimed"),
    [
        (None, 8, 1),  # nothing run yet: one job
        (0.001, 8, 16),  # short jobs: at most double the last batch
        (0.001, 200, 200),  # ...up to what runs in about 200 ms
        (0.00001, 200, 256),  # ...and never more than prefetch
        (0.05, 8, 4),
        (0.1, 8, 2),
        (0.2, 8, 1),  # a job of 200 ms or more: one at a time
        (3.0, 8, 1),
    ],
)
def test_a_batch_holds_about_200_ms_of_work(
    seconds_per_job: float | None, last: int, claimed: int
) -> None:
    worker = Worker(JobQueue(MemoryStorage()))
    worker._batch.per_job = seconds_per_job
    assert worker._batch.size(last) == claimed


def test_prefetch_one_claims_one_job_at_a_time(queue: JobQueue) -> None:
    queue.register("quick", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="quick") for _ in range(10)])
    spy = _ClaimSpy(queue)
    assert Worker(queue, prefetch=1).run_until_empty() == 10
    assert spy.limits == [1] * 10


def test_a_batch_is_recorded_before_the_worker_shows_idle(queue: JobQueue) -> None:
    queue.register("quick", lambda ctx: None)
    worker = Worker(queue, poll_interval=0.01)
    ids = queue.enqueue_many([JobSpec(type="quick") for _ in range(40)])
    with worker:
        wait_until(lambda: worker.jobs_processed == 40, what="40 jobs")
        # Counted only once written: every one of them shows completed now.
        assert all(finished(queue, job_id) for job_id in ids)


def test_stopping_mid_batch_gives_the_unstarted_jobs_back(queue: JobQueue) -> None:
    worker = Worker(queue, poll_interval=0.01)
    ran: list[str] = []

    @queue.handler("quick")
    def quick(ctx: JobContext) -> None:
        ran.append(ctx.job.id)
        if len(ran) == 8:
            worker.stop(wait=False)

    queue.enqueue_many([JobSpec(type="quick") for _ in range(200)])
    worker.start()
    wait_until(lambda: not worker.is_alive, what="the worker to stop itself")
    jobs = queue.list_jobs(limit=500)
    done = [j for j in jobs if j.status == "completed"]
    back = [j for j in jobs if j.status == "pending"]
    assert len(done) == len(ran) >= 8
    assert len(done) + len(back) == 200
    assert all(j.attempts == 0 and j.lease_token is None for j in back)
    assert {j.id for j in done} == set(ran)


def test_a_slow_job_lets_the_rest_of_its_batch_go_to_other_workers(queue: JobQueue) -> None:
    gate = threading.Event()
    ran: list[int] = []

    @queue.handler("job")
    def job(ctx: JobContext) -> None:
        ran.append(ctx.payload["n"])
        if ctx.payload["n"] == 40:
            # While this one runs, the jobs claimed with it are handed back.
            gate.wait(20)

    queue.enqueue_many([JobSpec(type="job", payload={"n": n}) for n in range(60)])
    slow_worker = Worker(queue, poll_interval=0.01, lease_seconds=3, heartbeat_interval=0.2)
    slow_worker.start()
    try:
        wait_until(lambda: 40 in ran, what="the slow job to start")
        wait_until(
            lambda: queue.counts()["default"].get("running", 0) == 1,
            what="the rest of the batch to be given back",
        )
        helper = Worker(queue, poll_interval=0.01)
        with helper:
            wait_until(lambda: queue.counts()["default"].get("completed", 0) == 59)
        assert helper.jobs_processed == 19
    finally:
        gate.set()
        slow_worker.stop()
    jobs = queue.list_jobs(limit=100)
    assert all(j.status == "completed" and j.attempts == 1 for j in jobs)
    assert sorted(ran) == list(range(60))


def test_a_storage_without_release_gets_workers_that_claim_one_at_a_time() -> None:
    class NoRelease(MemoryStorage):
        release = Storage.release

    queue = JobQueue(NoRelease())
    queue.register("quick", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="quick") for _ in range(5)])
    spy = _ClaimSpy(queue)
    worker = Worker(queue, prefetch=8)
    assert worker.prefetch == 1
    assert worker.run_until_empty() == 5
    assert spy.limits == [1] * 5


def test_prefetch_must_be_a_positive_int(queue: JobQueue) -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="prefetch"):
            Worker(queue, prefetch=bad)  # type: ignore[arg-type]


def test_a_handler_stuck_mid_batch_lets_the_rest_of_the_batch_run_once(
    queue: JobQueue,
) -> None:
    gate = threading.Event()
    runs: Counter[int] = Counter()
    threads: dict[int, str] = {}

    @queue.handler("job", max_retries=0)
    def job(ctx: JobContext) -> None:
        n = ctx.payload["n"]
        runs[n] += 1
        threads[n] = threading.current_thread().name
        if n == 5:
            gate.wait(20)  # ignores its abort signal: its thread must be abandoned

    ids = queue.enqueue_many(
        [JobSpec(type="job", payload={"n": n}, timeout=0.3 if n == 5 else None) for n in range(20)]
    )
    spy = _ClaimSpy(queue)
    worker = Worker(queue, poll_interval=0.01)
    try:
        with worker:
            wait_until(lambda: all(finished(queue, i) for i in ids), timeout=30)
            # Job 5 was claimed with others behind it, handed to the runner at once.
            assert any(size > 1 for size in spy.sizes)
        gate.set()
        wait_until(lambda: runs[5] == 1 and sum(runs.values()) == 20)
    finally:
        gate.set()
    assert runs == Counter(range(20))  # each job ran once: none on the abandoned thread
    assert {threads[n] for n in range(6, 20)}.isdisjoint({threads[5]})
    stuck = queue.get_job(ids[5])
    assert stuck.status == "failed" and "JobTimeoutError" in (stuck.last_error or "")
    for n, job_id in enumerate(ids):
        if n != 5:
            assert queue.get_job(job_id).status == "completed", n


# -- claiming the next batch ahead (PostgreSQL, MySQL) ---------------------------------------


@pytest.fixture(params=["postgres", "mysql"])
def server_queue(request: pytest.FixtureRequest) -> JobQueue:
    storage = request.getfixturevalue(f"{request.param}_storage")
    assert storage.capabilities.claims_ahead
    return JobQueue(storage)


def claims_by_thread(storage: Storage) -> Counter[str]:
    """Count the claims each thread makes (a spy on the storage object)."""
    seen: Counter[str] = Counter()
    claim = storage.claim

    def spy(**kwargs: Any) -> Any:
        jobs = claim(**kwargs)
        if jobs:
            seen[threading.current_thread().name.split("-")[1]] += 1
        return jobs

    storage.claim = spy  # type: ignore[method-assign]
    return seen


def test_a_stopped_worker_gives_back_the_batch_it_claimed_ahead(server_queue: JobQueue) -> None:
    queue = server_queue
    seen = claims_by_thread(queue.storage)
    worker = Worker(queue, poll_interval=0.05, max_poll_interval=0.05)

    @queue.handler("tick")
    def tick(ctx: JobContext) -> None:
        if ctx.payload["n"] == 300:
            worker.stop(wait=False)

    ids = queue.enqueue_many([JobSpec(type="tick", payload={"n": n}) for n in range(2000)])
    worker.start()
    wait_until(lambda: not worker.is_alive, timeout=30, what="the worker to stop itself")
    assert seen["claim"] > 0, f"no claim was made ahead: {seen}"
    jobs = {j.id: j for j in queue.list_jobs(limit=None)}
    assert len(jobs) == 2000
    assert not [j for j in jobs.values() if j.status.value == "running"]
    done = [j for j in jobs.values() if j.status.value == "completed"]
    assert len(done) == worker.jobs_processed >= 301
    pending = [jobs[i] for i in ids if jobs[i].status.value == "pending"]
    assert pending and all(j.attempts == 0 and j.lease_token is None for j in pending)


def test_a_slow_job_gives_back_the_batch_claimed_ahead(server_queue: JobQueue) -> None:
    """Jobs claimed ahead must not wait for a slow job: they go back to the queue."""
    queue = server_queue
    seen = claims_by_thread(queue.storage)
    alone: list[bool] = []

    @queue.handler("tick")
    def tick(ctx: JobContext) -> None:
        if ctx.payload["n"] != 30:  # batches of 1, 2, 4, 8 and 16: the 16th's last job
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(queue.list_jobs("running", limit=None)) == 1:
                alone.append(True)  # only this job is still held by the worker
                return
            time.sleep(0.02)

    queue.enqueue_many([JobSpec(type="tick", payload={"n": n}) for n in range(100)])
    worker = Worker(queue, poll_interval=0.05, max_poll_interval=0.05, heartbeat_interval=0.2)
    worker.start()
    try:
        wait_until(lambda: len(queue.list_jobs("completed", limit=None)) == 100, timeout=30)
    finally:
        worker.stop()
    assert seen["claim"] > 0, f"no claim was made ahead: {seen}"
    assert alone == [True]
    jobs = queue.list_jobs(limit=None)
    assert all(j.attempts == 1 for j in jobs)  # given back untouched, then run once
