"""Managing and inspecting jobs: cancel, retry, list, count, summarise, purge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq._ids import new_job_id
from dbjobq.errors import JobNotFound
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["InspectionContract"]


class InspectionContract:
    """Managing and inspecting jobs: tests that take the `storage` fixture."""

    # -- cancel, retry ----------------------------------------------------------------------

    def test_cancel_a_pending_job(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        assert storage.cancel(new.id)
        job = storage.get(new.id)
        assert job.status is JobStatus.CANCELLED and job.finished_at is not None
        assert job.lease_token is None and job.worker_id is None
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_cancel_a_running_job_fences_its_worker(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        assert storage.cancel(job.id)
        assert not storage.heartbeat(job.id, job.lease_token or "", lease_seconds=60)
        assert not storage.complete(job.id, job.lease_token or "", result=1)
        assert storage.get(job.id).status is JobStatus.CANCELLED

    def test_cancel_a_finished_job_returns_false(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        assert not storage.cancel(job.id)
        assert storage.get(job.id).status is JobStatus.COMPLETED

    def test_cancel_unknown_raises(self, storage: Storage) -> None:
        with pytest.raises(JobNotFound):
            storage.cancel(new_job_id())

    def test_retry_a_failed_job(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=0)])
        job = claim_one(storage)
        storage.set_progress(job.id, job.lease_token or "", progress=3, message="m")
        storage.fail(job.id, job.lease_token or "", error="bad", retry_in=None)
        assert storage.retry(job.id)
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.attempts == 0 and back.finished_at is None
        assert back.last_error == "bad"
        assert (back.progress, back.progress_message) == (None, None)
        assert claim_one(storage).id == job.id

    def test_retry_a_cancelled_job(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        storage.cancel(new.id)
        assert storage.retry(new.id)
        assert storage.get(new.id).status is JobStatus.PENDING

    def test_retry_refuses_unfailed_jobs(self, storage: Storage) -> None:
        pending, done = make_job(), make_job()
        storage.enqueue([pending])
        assert not storage.retry(pending.id)
        storage.enqueue([done])
        job = claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        assert not storage.retry(job.id)
        with pytest.raises(JobNotFound):
            storage.retry(new_job_id())

    def test_retry_refuses_a_taken_unique_key(self, storage: Storage) -> None:
        old = make_job(unique_key="k")
        storage.enqueue([old])
        storage.cancel(old.id)
        newer = make_job(unique_key="k")
        storage.enqueue([newer])
        assert not storage.retry(old.id)
        assert storage.get(old.id).status is JobStatus.CANCELLED

    # -- listing, counting, purging ---------------------------------------------------------

    def test_list_jobs_filters_and_orders_oldest_first(self, storage: Storage) -> None:
        a, b, c, d = (
            make_job("x", queue="q1"),
            make_job("y", queue="q1"),
            make_job("x"),
            make_job("x"),
        )
        storage.enqueue([a, b, c, d])
        storage.cancel(d.id)
        assert [j.id for j in storage.list_jobs()] == [a.id, b.id, c.id, d.id]
        assert [j.id for j in storage.list_jobs(queue="q1")] == [a.id, b.id]
        assert [j.id for j in storage.list_jobs(type="x")] == [a.id, c.id, d.id]
        assert [j.id for j in storage.list_jobs(status=JobStatus.CANCELLED)] == [d.id]
        assert [j.id for j in storage.list_jobs(status=JobStatus.PENDING, type="x")] == [a.id, c.id]
        assert [j.id for j in storage.list_jobs(limit=2)] == [a.id, b.id]
        assert len(storage.list_jobs(limit=None)) == 4

    def test_list_jobs_newest_first_keeps_the_latest_under_a_limit(self, storage: Storage) -> None:
        a, b, c, d = (make_job("x"), make_job("y"), make_job("x"), make_job("x", queue="q"))
        storage.enqueue([a, b, c, d])
        assert [j.id for j in storage.list_jobs(newest_first=True)] == [d.id, c.id, b.id, a.id]
        assert [j.id for j in storage.list_jobs(limit=2, newest_first=True)] == [d.id, c.id]
        assert [j.id for j in storage.list_jobs(type="x", queue="default", newest_first=True)] == [
            c.id,
            a.id,
        ]
        assert [j.id for j in storage.list_jobs(newest_first=False)] == [a.id, b.id, c.id, d.id]

    def test_count_jobs_per_queue_and_status(self, storage: Storage) -> None:
        jobs = [make_job(queue="a"), make_job(queue="a"), make_job(queue="b")]
        storage.enqueue(jobs)
        storage.cancel(jobs[0].id)
        assert storage.count_jobs() == {
            ("a", JobStatus.CANCELLED): 1,
            ("a", JobStatus.PENDING): 1,
            ("b", JobStatus.PENDING): 1,
        }

    def test_purge_deletes_old_finished_jobs_only(self, storage: Storage) -> None:
        done, cancelled, pending = make_job(), make_job(), make_job()
        storage.enqueue([done])
        job = claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        storage.enqueue([cancelled, pending])
        storage.cancel(cancelled.id)
        statuses = [JobStatus.COMPLETED, JobStatus.PENDING]
        assert storage.purge(statuses=statuses, older_than=3600) == 0
        assert storage.purge(statuses=statuses, older_than=-1) == 1
        remaining = {j.id for j in storage.list_jobs()}
        assert remaining == {cancelled.id, pending.id}

    def test_count_jobs_finished_within_a_window(self, storage: Storage) -> None:
        done, waiting = make_job(), make_job()
        storage.enqueue([done, waiting])
        job = claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        assert storage.count_jobs(finished_within=3600) == {("default", JobStatus.COMPLETED): 1}

    def test_pending_summary_groups_by_queue_and_type(self, storage: Storage) -> None:
        late = datetime.now(timezone.utc) + timedelta(hours=1)
        early = datetime.now(timezone.utc) - timedelta(hours=1)
        storage.enqueue(
            [
                make_job("a", run_at=late),
                make_job("a", run_at=early),
                make_job("b", queue="other"),
                make_job("c"),
            ]
        )
        storage.cancel(storage.list_jobs(type="c")[0].id)
        groups = storage.pending_summary()
        assert [(g.queue, g.type, g.count) for g in groups] == [
            ("default", "a", 2),
            ("other", "b", 1),
        ]
        assert abs(groups[0].oldest_run_at - early) < timedelta(milliseconds=1)

    def test_purge_with_a_limit_takes_the_oldest_first(self, storage: Storage) -> None:
        jobs = [make_job() for _ in range(5)]
        storage.enqueue(jobs)
        for _ in jobs:
            job = claim_one(storage)
            storage.complete(job.id, job.lease_token or "", result=None)
        statuses = [JobStatus.COMPLETED]
        assert storage.purge(statuses=statuses, older_than=-1, limit=2) == 2
        assert storage.purge(statuses=statuses, older_than=-1, limit=10) == 3
        assert storage.list_jobs() == []

    def test_list_jobs_accepts_status_strings(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        assert len(storage.list_jobs(status="pending")) == 1
