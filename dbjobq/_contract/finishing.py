"""Finishing an attempt: complete, fail, release, and their batch forms."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq._ids import new_job_id
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["FinishingContract"]


class FinishingContract:
    """Finishing an attempt: tests that take the `storage` fixture."""

    # -- finishing ----------------------------------------------------------------------

    def test_complete_records_the_result(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.complete(job.id, job.lease_token or "", result={"ok": [1, 2]})
        done = storage.get(job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.result == {"ok": [1, 2]}
        assert done.finished_at is not None and done.started_at is not None
        assert done.finished_at >= done.started_at
        assert done.lease_token is None and done.lease_expires_at is None
        assert done.worker_id is None

    def test_complete_with_a_wrong_token_changes_nothing(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert not storage.complete(job.id, "not-the-token", result=1)
        assert storage.get(job.id) == job

    def test_complete_twice_records_once(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.complete(job.id, job.lease_token or "", result=1)
        assert not storage.complete(job.id, job.lease_token or "", result=2)
        assert storage.get(job.id).result == 1

    def test_complete_many_records_each_outcome_on_its_own(self, storage: Storage) -> None:
        storage.enqueue([make_job() for _ in range(5)])
        a, b, c, d, e = storage.claim(queues=["default"], worker_id="w1", lease_seconds=60, limit=5)
        assert storage.complete(d.id, d.lease_token or "", result="first")
        held = storage.complete_many(
            [
                (a.id, a.lease_token or "", None),
                (b.id, b.lease_token or "", None),
                (c.id, c.lease_token or "", {"n": [1, 2]}),
                (d.id, d.lease_token or "", "second"),  # already completed
                (e.id, "not-the-token", 5),
            ]
        )
        assert held == [True, True, True, False, False]
        assert [storage.get(j.id).status for j in (a, b, c, d)] == [JobStatus.COMPLETED] * 4
        assert storage.get(a.id).result is None
        assert storage.get(c.id).result == {"n": [1, 2]}
        assert storage.get(d.id).result == "first"
        assert storage.get(e.id) == e
        assert storage.get(a.id).lease_token is None and storage.get(a.id).finished_at

    def test_complete_many_of_nothing_or_one(self, storage: Storage) -> None:
        assert storage.complete_many([]) == []
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.complete_many([(job.id, job.lease_token or "", 1)]) == [True]
        assert storage.get(job.id).result == 1

    def test_release_puts_an_unstarted_job_back_in_its_place(self, storage: Storage) -> None:
        if not storage.capabilities.release:
            pytest.skip("release is not implemented (optional)")
        first, second, _ = storage.enqueue([make_job(), make_job(), make_job()])
        a, b = storage.claim(queues=["default"], worker_id="w1", lease_seconds=60, limit=2)
        assert (a.id, b.id) == (first, second)
        assert not storage.release(a.id, "not-the-token")
        assert storage.release(a.id, a.lease_token or "")
        back = storage.get(a.id)
        assert back.status is JobStatus.PENDING and back.attempts == 0
        assert back.lease_token is None and back.worker_id is None
        assert back.lease_expires_at is None and back.started_at is None
        assert not storage.release(a.id, a.lease_token or "")  # the lease is gone
        assert not storage.complete(a.id, a.lease_token or "", result=1)
        again = claim_one(storage)
        assert again.id == first and again.attempts == 1  # its place in line is kept
        assert again.lease_token != a.lease_token

    def test_release_gives_back_a_started_job_without_using_its_attempt(
        self, storage: Storage
    ) -> None:
        """A handler interrupted by a shutdown: the job runs again, attempts unchanged."""
        if not storage.capabilities.release:
            pytest.skip("release is not implemented (optional)")
        storage.enqueue([make_job(max_retries=0)])
        first = claim_one(storage)
        assert storage.fail(first.id, first.lease_token or "", error="boom", retry_in=0.0)
        job = claim_one(storage)
        assert job.attempts == 2
        token = job.lease_token or ""
        assert storage.set_progress(job.id, token, progress=40, message="half")
        assert storage.release(job.id, token)
        back = storage.get(job.id)
        assert (back.status, back.attempts) == (JobStatus.PENDING, 1)
        assert back.lease_token is None and back.started_at is None
        assert back.last_error == "boom" and back.finished_at is None
        assert not storage.fail(job.id, token, error="late", retry_in=None)  # fenced
        again = claim_one(storage)
        assert again.attempts == 2 and again.progress is None

    def test_release_many_gives_back_only_what_it_holds(self, storage: Storage) -> None:
        if not storage.capabilities.release:
            pytest.skip("release is not implemented (optional)")
        ids = storage.enqueue([make_job() for _ in range(5)])
        claimed = storage.claim(queues=["default"], worker_id="w1", lease_seconds=60, limit=4)
        assert [j.id for j in claimed] == ids[:4]
        a, b, c, d = claimed
        assert storage.complete(d.id, d.lease_token or "", result=None)
        leases = [(a.id, a.lease_token or ""), (b.id, "not-the-token"), (c.id, c.lease_token or "")]
        leases.append((d.id, d.lease_token or ""))  # finished already
        assert storage.release_many(leases) == [True, False, True, False]
        assert storage.release_many([]) == []
        assert [storage.get(j.id).status for j in claimed] == [
            JobStatus.PENDING,
            JobStatus.RUNNING,
            JobStatus.PENDING,
            JobStatus.COMPLETED,
        ]
        assert storage.get(a.id).attempts == 0 and storage.get(a.id).lease_token is None
        again = storage.claim(queues=["default"], worker_id="w2", lease_seconds=60, limit=3)
        assert [j.id for j in again] == [a.id, c.id, ids[4]]  # their places kept

    def test_fail_with_retry_puts_the_job_back(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="boom", retry_in=0.0)
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.last_error == "boom"
        assert back.lease_token is None and back.finished_at is None
        again = claim_one(storage)
        assert again.id == job.id and again.attempts == 2
        assert again.lease_token != job.lease_token

    def test_fail_with_a_later_retry_waits(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="later", retry_in=3600.0)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.run_at - back.updated_at >= timedelta(seconds=3599)

    def test_fail_without_retry_is_final(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="fatal", retry_in=None)
        failed = storage.get(job.id)
        assert failed.status is JobStatus.FAILED
        assert failed.last_error == "fatal"
        assert failed.finished_at is not None
        assert (failed.lease_token, failed.lease_expires_at, failed.worker_id) == (None, None, None)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_a_new_attempt_starts_without_progress(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        storage.set_progress(job.id, job.lease_token or "", progress=50, message="half")
        storage.fail(job.id, job.lease_token or "", error="x", retry_in=0.0)
        again = claim_one(storage)
        assert (again.progress, again.progress_message) == (None, None)

    def test_unknown_ids_hold_no_lease(self, storage: Storage) -> None:
        missing = new_job_id()
        assert not storage.heartbeat(missing, "t", lease_seconds=60)
        assert not storage.set_progress(missing, "t", progress=1, message=None)
        assert not storage.complete(missing, "t", result=None)
        assert not storage.fail(missing, "t", error="x", retry_in=None)

    def test_claim_with_nothing_to_ask_for_returns_nothing(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        assert storage.claim(queues=[], worker_id="w", lease_seconds=60) == []
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=0) == []
        assert storage.get(storage.list_jobs()[0].id).status is JobStatus.PENDING

    def test_fail_with_a_wrong_token_changes_nothing(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert not storage.fail(job.id, "nope", error="x", retry_in=None)
        assert storage.get(job.id) == job

    # -- the same lease twice in one call -------------------------------------------------------

    def test_complete_many_counts_a_repeated_lease_once(self, storage: Storage) -> None:
        """The first occurrence is recorded; a later one finds the lease gone."""
        storage.enqueue([make_job() for _ in range(3)])
        a, b, c = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=3)
        ta, tb, tc = (j.lease_token or "" for j in (a, b, c))
        held = storage.complete_many(
            [(a.id, ta, 1), (b.id, tb, None), (a.id, ta, 2), (b.id, tb, None)]
        )
        assert held == [True, True, False, False]
        assert storage.get(a.id).result == 1
        # Two tokens for one job: only the one that holds the lease counts.
        assert storage.complete_many([(c.id, "stale", 1), (c.id, tc, 2), (c.id, tc, 3)]) == [
            False,
            True,
            False,
        ]
        assert storage.get(c.id).result == 2

    def test_release_many_counts_a_repeated_lease_once(self, storage: Storage) -> None:
        if not storage.capabilities.release:
            pytest.skip("release is not implemented (optional)")
        storage.enqueue([make_job() for _ in range(3)])
        a, b, c = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=3)
        ta, tb, tc = (j.lease_token or "" for j in (a, b, c))
        assert storage.release_many([(a.id, ta), (b.id, tb), (a.id, ta)]) == [True, True, False]
        assert storage.get(a.id).attempts == 0  # given back once, not twice
        assert storage.release_many([(c.id, "stale"), (c.id, tc), (c.id, tc)]) == [
            False,
            True,
            False,
        ]
        assert storage.get(c.id).attempts == 0
