"""Leases: heartbeats, progress, and rescue of expired or orphaned jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["LeaseContract"]


class LeaseContract:
    """Leases: tests that take the `storage` fixture."""

    # -- leases -------------------------------------------------------------------------

    def test_heartbeat_extends_the_lease(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage, lease=0)
        assert storage.heartbeat(job.id, job.lease_token or "", lease_seconds=3600)
        assert storage.rescue_expired() == 0
        held = storage.get(job.id)
        assert held.status is JobStatus.RUNNING
        assert held.lease_expires_at is not None and job.lease_expires_at is not None
        assert held.lease_expires_at - job.lease_expires_at >= timedelta(seconds=3599)

    def test_heartbeat_with_a_wrong_token_is_refused(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert not storage.heartbeat(job.id, "nope", lease_seconds=60)
        assert storage.get(job.id).lease_expires_at == job.lease_expires_at

    def test_rescue_requeues_an_expired_lease_with_retries_left(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=1)])
        job = claim_one(storage, worker="dead-worker", lease=0)
        assert storage.rescue_expired() == 1
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.attempts == 1
        assert back.lease_token is None and back.worker_id is None
        assert back.last_error is not None and "lease expired" in back.last_error
        assert "dead-worker" in back.last_error

    def test_rescue_always_requeues_a_job_that_leaves_retries_to_its_handler(
        self, storage: Storage
    ) -> None:
        """The storage cannot know the handler's `max_retries`: the next worker decides."""
        storage.enqueue([make_job(max_retries=None), make_job(max_retries=0)])
        for _ in range(3):
            jobs = storage.claim(queues=["default"], worker_id="w", lease_seconds=0, limit=2)
            assert storage.rescue_expired() == len(jobs)
        left, counted = storage.list_jobs(limit=None)
        assert (left.max_retries, left.status, left.attempts) == (None, JobStatus.PENDING, 3)
        assert left.last_error is not None and "lease expired" in left.last_error
        assert (counted.status, counted.attempts) == (JobStatus.FAILED, 1)

    def test_rescue_can_delay_the_retry(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage, lease=0)
        assert storage.rescue_expired(retry_in=3600) == 1
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.run_at - back.updated_at >= timedelta(seconds=3599)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_rescue_workers_takes_back_only_their_jobs_at_once(self, storage: Storage) -> None:
        if not storage.capabilities.rescue_workers:
            pytest.skip("rescue_workers is not implemented (optional)")
        a, b, c = make_job(max_retries=1), make_job(max_retries=1), make_job(max_retries=1)
        storage.enqueue([a, b, c])
        gone = claim_one(storage, worker="host:1:gone", lease=3600)
        gone2 = claim_one(storage, worker="host:2:gone", lease=3600)
        alive = claim_one(storage, worker="host:3:alive", lease=3600)
        assert storage.rescue_workers([]) == 0
        assert storage.rescue_workers(["host:1:gone", "host:2:gone", "never-seen"]) == 2
        for job in (gone, gone2):
            back = storage.get(job.id)
            assert back.status is JobStatus.PENDING
            assert back.attempts == 1  # the attempt counts, as for an expired lease
            assert back.lease_token is None and back.worker_id is None
            assert back.last_error is not None and str(job.worker_id) in back.last_error
            assert not storage.complete(job.id, job.lease_token or "", result="stale")
        assert storage.get(alive.id).status is JobStatus.RUNNING
        assert storage.heartbeat(alive.id, alive.lease_token or "", lease_seconds=60)
        again = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=5)
        assert {j.id for j in again} == {gone.id, gone2.id}

    def test_rescue_workers_fails_a_job_without_retries_and_can_delay(
        self, storage: Storage
    ) -> None:
        if not storage.capabilities.rescue_workers:
            pytest.skip("rescue_workers is not implemented (optional)")
        last, delayed = make_job(max_retries=0), make_job(max_retries=2)
        storage.enqueue([last, delayed])
        job1 = claim_one(storage, worker="gone-1", lease=3600)
        job2 = claim_one(storage, worker="gone-2", lease=3600)
        assert storage.rescue_workers(["gone-1", "gone-2"], retry_in=3600) == 2
        failed = storage.get(job1.id)
        assert failed.status is JobStatus.FAILED and failed.finished_at is not None
        assert failed.last_error is not None and "gone-1" in failed.last_error
        back = storage.get(job2.id)
        assert back.status is JobStatus.PENDING and back.finished_at is None
        assert back.run_at - back.updated_at >= timedelta(seconds=3599)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        assert storage.rescue_workers(["gone-1", "gone-2"]) == 0  # nothing running any more

    def test_rescue_fails_an_expired_lease_without_retries(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=0)])
        job = claim_one(storage, lease=0)
        assert storage.rescue_expired() == 1
        failed = storage.get(job.id)
        assert failed.status is JobStatus.FAILED
        assert failed.finished_at is not None
        assert failed.last_error is not None and "lease expired" in failed.last_error

    def test_rescue_leaves_live_leases_alone(self, storage: Storage) -> None:
        storage.enqueue([make_job(), make_job()])
        claim_one(storage, lease=3600)
        assert storage.rescue_expired() == 0
        assert len(storage.list_jobs(status=JobStatus.RUNNING)) == 1

    def test_rescued_job_refuses_the_old_token(self, storage: Storage) -> None:
        """The fence: a worker that lost its lease can never record an outcome."""
        storage.enqueue([make_job()])
        old = claim_one(storage, worker="old", lease=0)
        assert storage.rescue_expired() == 1
        new = claim_one(storage, worker="new", lease=60)
        assert new.lease_token != old.lease_token
        assert not storage.complete(old.id, old.lease_token or "", result="stale")
        assert not storage.fail(old.id, old.lease_token or "", error="stale", retry_in=None)
        assert not storage.heartbeat(old.id, old.lease_token or "", lease_seconds=60)
        assert not storage.set_progress(old.id, old.lease_token or "", progress=1, message=None)
        assert storage.complete(new.id, new.lease_token or "", result="fresh")
        assert storage.get(new.id).result == "fresh"

    def test_expired_lease_can_still_complete_before_rescue(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage, lease=0)
        assert storage.complete(job.id, job.lease_token or "", result=1)
        assert storage.rescue_expired() == 0
        assert storage.get(job.id).status is JobStatus.COMPLETED

    def test_set_progress_is_stored(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.set_progress(job.id, job.lease_token or "", progress=42.5, message="half")
        seen = storage.get(job.id)
        assert (seen.progress, seen.progress_message) == (42.5, "half")
