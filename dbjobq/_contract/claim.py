"""Claiming: which jobs are due, in which order, under a fresh lease."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["ClaimContract"]


class ClaimContract:
    """Claiming: tests that take the `storage` fixture."""

    # -- claiming ---------------------------------------------------------------------

    def test_claim_returns_nothing_when_empty(self, storage: Storage) -> None:
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_claim_marks_the_job_running_under_a_lease(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        job = claim_one(storage, worker="w-1", lease=60)
        assert job.id == new.id
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        assert job.worker_id == "w-1"
        assert job.lease_token
        assert job.started_at is not None and job.lease_expires_at is not None
        assert (
            timedelta(seconds=50) < job.lease_expires_at - job.started_at <= timedelta(seconds=61)
        )
        assert storage.get(new.id) == job

    def test_claimed_job_is_not_claimed_again(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        claim_one(storage)
        assert storage.claim(queues=["default"], worker_id="w2", lease_seconds=60) == []

    def test_claim_orders_by_priority_then_fifo(self, storage: Storage) -> None:
        low1, high, low2, mid = (make_job(priority=p) for p in (0, 10, 0, 5))
        for job in (low1, high, low2, mid):
            storage.enqueue([job])
        order = [claim_one(storage).id for _ in range(4)]
        assert order == [high.id, mid.id, low1.id, low2.id]

    def test_claim_is_fifo_within_a_batch(self, storage: Storage) -> None:
        jobs = [make_job() for _ in range(20)]
        storage.enqueue(jobs)
        assert [claim_one(storage).id for _ in range(20)] == [j.id for j in jobs]

    def test_claim_newest_first_is_lifo_within_a_priority(self, storage: Storage) -> None:
        if not storage.capabilities.newest_first:
            pytest.skip("claim takes no newest_first (optional)")
        low1, high1, low2, high2, low3 = (make_job(priority=p) for p in (0, 5, 0, 5, 0))
        for job in (low1, high1, low2, high2, low3):
            storage.enqueue([job])
        order = [claim_one(storage, newest_first=True).id for _ in range(5)]
        assert order == [high2.id, high1.id, low3.id, low2.id, low1.id]

    def test_claim_newest_first_in_one_batch_and_one_claim(self, storage: Storage) -> None:
        """Jobs of one `enqueue` call and of one claim come out newest first too."""
        if not storage.capabilities.newest_first:
            pytest.skip("claim takes no newest_first (optional)")
        jobs = [make_job() for _ in range(6)]
        storage.enqueue(jobs)
        claimed = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, limit=4, newest_first=True
        )
        assert [j.id for j in claimed] == [j.id for j in reversed(jobs)][:4]
        rest = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, limit=4, newest_first=False
        )
        assert [j.id for j in rest] == [jobs[0].id, jobs[1].id]

    def test_claim_limit_takes_several_in_order(self, storage: Storage) -> None:
        jobs = [make_job(priority=p) for p in (1, 3, 2)]
        storage.enqueue(jobs)
        claimed = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=2)
        assert [j.priority for j in claimed] == [3, 2]
        assert len({j.id for j in claimed}) == 2

    def test_delayed_job_is_not_due_yet(self, storage: Storage) -> None:
        storage.enqueue([make_job(delay=3600.0)])
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        job = storage.list_jobs()[0]
        assert job.run_at - job.created_at >= timedelta(seconds=3599)

    def test_run_at_in_the_future_is_not_due(self, storage: Storage) -> None:
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        storage.enqueue([make_job(run_at=later)])
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        assert abs(storage.list_jobs()[0].run_at - later) < timedelta(milliseconds=1)

    def test_run_at_in_the_past_is_due_and_goes_first(self, storage: Storage) -> None:
        now_job = make_job()
        past_job = make_job(run_at=datetime.now(timezone.utc) - timedelta(hours=1))
        storage.enqueue([now_job, past_job])
        assert claim_one(storage).id == past_job.id

    def test_claim_takes_only_the_given_queues(self, storage: Storage) -> None:
        a, b, c = make_job(queue="a"), make_job(queue="b"), make_job(queue="c")
        storage.enqueue([a, b, c])
        claimed = storage.claim(queues=["a", "c"], worker_id="w", lease_seconds=60, limit=10)
        assert {j.id for j in claimed} == {a.id, c.id}

    def test_claim_takes_only_the_given_types(self, storage: Storage) -> None:
        known, unknown = make_job("known"), make_job("unknown")
        storage.enqueue([unknown, known])
        claimed = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, types={"known"}, limit=10
        )
        assert [j.id for j in claimed] == [known.id]
        assert storage.get(unknown.id).status is JobStatus.PENDING
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60, types=set()) == []
