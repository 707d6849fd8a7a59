"""Waiting for a job: `subscribe_finished`, and `JobQueue.wait` on the backend."""

from __future__ import annotations

import threading
import time

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq.errors import JobNotFound
from dbjobq.job import JobStatus
from dbjobq.queue import JobQueue
from dbjobq.storage.base import Storage

__all__ = ["WaitContract"]

_LONG = 30.0  # seconds: a wait that ends is never ended by its timeout


class WaitContract:
    """Waiting for a job: tests that take the `storage` and `other_storage` fixtures."""

    def test_subscribe_finished_gives_nothing_or_a_way_to_end_it(self, storage: Storage) -> None:
        """`subscribe_finished` returns `None` (poll instead) or a function that ends it."""
        unsubscribe = storage.subscribe_finished(lambda: None)
        assert unsubscribe is None or callable(unsubscribe)
        if unsubscribe is not None:
            unsubscribe()

    def test_subscribe_finished_hears_a_job_finished_elsewhere(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """A job finished through another storage object on the store calls back."""
        if not storage.capabilities.notify_finished:
            pytest.skip("the backend does not report finished jobs (waiters poll)")
        storage.enqueue([make_job()])
        job = claim_one(other_storage)
        finishing = threading.Event()
        heard = threading.Event()

        def callback() -> None:
            if finishing.is_set():  # calls before the finish may be spurious
                heard.set()

        unsubscribe = storage.subscribe_finished(callback)
        assert unsubscribe is not None
        try:
            finishing.set()
            assert other_storage.complete(job.id, job.lease_token or "", result=1)
            assert heard.wait(_LONG)
        finally:
            unsubscribe()

    def test_wait_returns_a_job_in_each_finished_state(self, storage: Storage) -> None:
        queue = JobQueue(storage)
        a, b, c = (make_job() for _ in range(3))
        storage.enqueue([a, b, c])
        first = claim_one(storage)
        assert storage.complete(first.id, first.lease_token or "", result={"n": 1})
        second = claim_one(storage)
        assert storage.fail(second.id, second.lease_token or "", error="boom", retry_in=None)
        assert storage.cancel(c.id)
        completed = queue.wait(first.id, timeout=0)
        assert completed.status is JobStatus.COMPLETED
        assert completed.result == {"n": 1}
        failed = queue.wait(second.id, timeout=0)
        assert failed.status is JobStatus.FAILED
        assert failed.last_error == "boom"
        assert queue.wait(c.id).status is JobStatus.CANCELLED

    def test_wait_for_an_unknown_job_raises_job_not_found(self, storage: Storage) -> None:
        queue = JobQueue(storage)
        with pytest.raises(JobNotFound):
            queue.wait("no-such-job")  # no timeout: it must not wait at all
        assert not queue.waits  # nothing left registered

    def test_wait_raises_timeout_error_while_the_job_is_unfinished(self, storage: Storage) -> None:
        queue = JobQueue(storage)
        storage.enqueue([make_job(), make_job()])
        running = claim_one(storage)
        (pending,) = storage.list_jobs(status=JobStatus.PENDING)
        with pytest.raises(TimeoutError):
            queue.wait(pending.id, timeout=0)
        with pytest.raises(TimeoutError):
            queue.wait(pending.id, timeout=0.1)
        with pytest.raises(TimeoutError):
            queue.wait(running.id, timeout=0.1)
        assert storage.get(pending.id) == pending
        assert storage.get(running.id) == running
        assert not queue.waits

    def test_a_retried_job_is_waited_on_until_it_finishes(self, storage: Storage) -> None:
        queue = JobQueue(storage)
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="again", retry_in=0.0)
        with pytest.raises(TimeoutError):
            queue.wait(job.id, timeout=0)  # pending again: not finished
        again = claim_one(storage)
        assert storage.complete(again.id, again.lease_token or "", result="second")
        done = queue.wait(job.id, timeout=0)
        assert (done.status, done.attempts, done.result) == (JobStatus.COMPLETED, 2, "second")

    def test_wait_returns_once_another_storage_object_finishes_the_job(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """Finished behind the queue's back (not through it): a signal or a poll sees it."""
        queue = JobQueue(storage)
        storage.enqueue([make_job()])
        job = claim_one(other_storage)

        def finish() -> None:
            # Once the waiter is registered (it reads the job right after), finish.
            deadline = time.monotonic() + _LONG
            while not queue.waits and time.monotonic() < deadline:
                time.sleep(0.001)
            assert other_storage.complete(job.id, job.lease_token or "", result="done")

        finisher = threading.Thread(target=finish)
        finisher.start()
        try:
            done = queue.wait(job.id, timeout=_LONG)
        finally:
            finisher.join()
        assert (done.status, done.result) == (JobStatus.COMPLETED, "done")
