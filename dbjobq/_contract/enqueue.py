"""Storing new jobs: fields, batches, unique keys, ids sent again, order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbjobq._contract.helpers import claim_one, make_job
from dbjobq._ids import new_job_id
from dbjobq.errors import JobNotFound
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["EnqueueContract"]


class EnqueueContract:
    """Storing new jobs: tests that take the `storage` fixture."""

    # -- enqueue and read back ---------------------------------------------------------

    def test_enqueue_returns_the_given_ids_in_order(self, storage: Storage) -> None:
        jobs = [make_job() for _ in range(3)]
        assert storage.enqueue(jobs) == [j.id for j in jobs]

    def test_enqueue_of_nothing_returns_nothing(self, storage: Storage) -> None:
        assert storage.enqueue([]) == []

    def test_new_job_is_pending_with_the_given_fields(self, storage: Storage) -> None:
        new = make_job(
            "email",
            queue="mail",
            payload={"to": "a@example.com"},
            priority=7,
            max_retries=5,
            meta={"trace": "abc"},
            timeout=12.5,
        )
        storage.enqueue([new])
        job = storage.get(new.id)
        assert (job.id, job.type, job.queue, job.payload) == (
            new.id,
            "email",
            "mail",
            {"to": "a@example.com"},
        )
        assert (job.priority, job.max_retries, job.meta, job.timeout) == (
            7,
            5,
            {"trace": "abc"},
            12.5,
        )
        assert job.status is JobStatus.PENDING
        assert job.attempts == 0
        assert job.result is None and job.last_error is None
        assert job.started_at is None and job.finished_at is None
        assert job.lease_token is None and job.worker_id is None
        assert job.run_at == job.created_at

    def test_max_retries_and_timeout_may_be_left_to_the_handler(self, storage: Storage) -> None:
        """`None` (the handler's value, when the job runs) is read back as `None`."""
        alone, keyed = make_job(max_retries=None), make_job(max_retries=None, unique_key="k")
        pair = [make_job(max_retries=None), make_job(max_retries=0)]
        storage.enqueue([alone])
        storage.enqueue([keyed])
        storage.enqueue(pair)
        for new in (alone, keyed, *pair):
            job = storage.get(new.id)
            assert (job.max_retries, job.timeout) == (new.max_retries, None)
            assert job.retries_left == (None if new.max_retries is None else 1)
        claimed = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=4)
        assert [j.max_retries for j in claimed] == [None, None, None, 0]
        assert [j.max_retries for j in storage.list_jobs(limit=None)].count(None) == 3

    def test_a_large_batch_is_stored_whole_with_every_field(self, storage: Storage) -> None:
        """Backends may store big batches another way (COPY, say): same result."""
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        jobs = [
            make_job(
                f"t{n % 3}",
                queue=f"q{n % 2}",
                payload={"n": n, "text": "é\u2028", "list": [n, 1.5, None, True]},
                priority=n % 5,
                max_retries=None if n % 5 == 4 else n % 4,
                run_at=later if n % 7 == 0 else None,
                delay=30.0 if n % 11 == 0 and n % 7 else 0.0,
                meta={"m": n} if n % 2 else {},
                timeout=None if n % 3 else float(n + 1),
            )
            for n in range(300)
        ]
        assert storage.enqueue(jobs) == [j.id for j in jobs]
        assert storage.enqueue(jobs[:150]) == [j.id for j in jobs[:150]]  # a retry
        stored = {j.id: j for j in storage.list_jobs(limit=None)}
        assert len(stored) == 300
        for new in jobs:
            job = stored[new.id]
            assert (job.type, job.queue, job.payload, job.meta) == (
                new.type,
                new.queue,
                new.payload,
                new.meta,
            )
            assert (job.priority, job.max_retries, job.timeout) == (
                new.priority,
                new.max_retries,
                new.timeout,
            )
            assert job.status is JobStatus.PENDING and job.attempts == 0
            if new.run_at is not None:
                assert abs((job.run_at - new.run_at).total_seconds()) < 0.001
            elif new.delay:
                assert job.run_at - job.created_at == timedelta(seconds=30)
            else:
                assert job.run_at == job.created_at

    def test_unique_keys_hold_in_a_large_batch(self, storage: Storage) -> None:
        jobs = [make_job(unique_key="k" if n in (10, 90) else None) for n in range(120)]
        ids = storage.enqueue(jobs)
        assert ids[10] == ids[90] == jobs[10].id
        assert [i for n, i in enumerate(ids) if n != 90] == [
            j.id for n, j in enumerate(jobs) if n != 90
        ]
        assert len(storage.list_jobs(limit=None)) == 119

    def test_timestamps_are_aware_utc(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = claim_one(storage)
        for stamp in (
            job.created_at,
            job.updated_at,
            job.run_at,
            job.started_at,
            job.lease_expires_at,
        ):
            assert stamp is not None
            assert stamp.utcoffset() == timedelta(0)

    def test_payload_round_trips_exactly(self, storage: Storage) -> None:
        payload = {
            "text": 'héllo ✓ \U0001f600 "quoted" \\ back',
            "ints": [0, -1, 2**53 + 1, -(2**63)],
            "floats": [0.1, -2.5, 1e300, 5e-324],
            "nested": {"a": [{"b": None}, True, False, []], "": {}},
        }
        new = make_job(payload=payload, meta={"k": ["v"]})
        storage.enqueue([new])
        job = storage.get(new.id)
        assert job.payload == payload
        assert job.meta == {"k": ["v"]}

    def test_get_unknown_id_raises_job_not_found(self, storage: Storage) -> None:
        with pytest.raises(JobNotFound) as info:
            storage.get(new_job_id())
        assert isinstance(info.value, LookupError)

    def test_initialize_is_idempotent(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        storage.initialize()
        assert len(storage.list_jobs()) == 1

    def test_schema_exists_once_initialized(self, storage: Storage) -> None:
        assert storage.schema_exists() is True
        storage.enqueue([make_job()])
        assert storage.schema_exists() is True

    # -- unique keys ----------------------------------------------------------------------

    def test_unique_key_returns_the_unfinished_job(self, storage: Storage) -> None:
        first = make_job(unique_key="k")
        assert storage.enqueue([first]) == [first.id]
        assert storage.enqueue([make_job(unique_key="k")]) == [first.id]
        claim_one(storage)
        assert storage.enqueue([make_job(unique_key="k")]) == [first.id]
        assert len(storage.list_jobs()) == 1

    def test_unique_key_is_free_again_once_finished(self, storage: Storage) -> None:
        first = make_job(unique_key="k")
        storage.enqueue([first])
        job = claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        second = make_job(unique_key="k")
        assert storage.enqueue([second]) == [second.id]

    def test_unique_key_within_one_batch(self, storage: Storage) -> None:
        a, b, c = make_job(unique_key="k"), make_job(unique_key="k"), make_job()
        assert storage.enqueue([a, b, c]) == [a.id, a.id, c.id]
        assert len(storage.list_jobs()) == 2

    # -- a job sent again -------------------------------------------------------------------

    def test_a_job_sent_again_returns_its_id_even_once_finished(self, storage: Storage) -> None:
        """The retry after a lost commit acknowledgement, for a job with a unique key."""
        job = make_job(unique_key="report-1")
        assert storage.enqueue([job]) == [job.id]
        assert storage.enqueue([job]) == [job.id]  # still pending
        claimed = claim_one(storage)
        assert storage.enqueue([job]) == [job.id]  # running
        assert storage.complete(claimed.id, claimed.lease_token or "", result=None)
        assert storage.enqueue([job]) == [job.id]  # finished since
        assert storage.enqueue([job, job]) == [job.id, job.id]
        newer = make_job(unique_key="report-1")
        assert storage.enqueue([newer, job]) == [newer.id, job.id]  # the key moved on
        assert storage.enqueue([job]) == [job.id]
        assert storage.enqueue([make_job(unique_key="report-1")]) == [newer.id]
        assert [j.id for j in storage.list_jobs()] == [job.id, newer.id]
        assert storage.get(job.id).status is JobStatus.COMPLETED

    def test_a_job_sent_again_after_a_failure_stays_failed(self, storage: Storage) -> None:
        job = make_job(unique_key="k", max_retries=0)
        storage.enqueue([job])
        claimed = claim_one(storage)
        assert storage.fail(claimed.id, claimed.lease_token or "", error="x", retry_in=None)
        assert storage.enqueue([job]) == [job.id]
        assert storage.get(job.id).status is JobStatus.FAILED
        assert storage.enqueue_tick("s", datetime(2030, 1, 1, tzinfo=timezone.utc), job)
        assert [j.id for j in storage.list_jobs()] == [job.id]

    # -- order inside one batch ----------------------------------------------------------------

    def test_a_batch_becomes_due_in_the_order_given(self, storage: Storage) -> None:
        """Jobs with and without unique keys, mixed: claimed in the order of the call.

        Many batches, because a backend that stores the two kinds in two statements
        gives the second a later `run_at` only when its clock has ticked in between.
        """
        shapes = [(True, False, False), (False, True, False, True), (True, True, False)]
        for n in range(30):
            batch = [
                make_job(unique_key=f"b{n}-{i}" if keyed else None)
                for i, keyed in enumerate(shapes[n % len(shapes)])
            ]
            assert storage.enqueue(batch) == [j.id for j in batch]
            stored = [storage.get(j.id).run_at for j in batch]
            assert stored == sorted(stored), f"batch {n}: run_at out of order"
            claimed = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=9)
            assert [j.id for j in claimed] == [j.id for j in batch], f"batch {n}"
            for job in claimed:
                assert storage.complete(job.id, job.lease_token or "", result=None)
        # A large batch, which a backend may store another way (COPY, say).
        batch = [make_job(unique_key=f"big-{i}" if i % 3 == 0 else None) for i in range(90)]
        assert storage.enqueue(batch) == [j.id for j in batch]
        claimed = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=100)
        assert [j.id for j in claimed] == [j.id for j in batch]

    def test_enqueue_of_an_already_stored_id_stores_it_once(self, storage: Storage) -> None:
        """A retried enqueue (after a lost commit acknowledgement) adds nothing."""
        job = make_job(payload={"n": 1})
        assert storage.enqueue([job]) == [job.id]
        assert storage.enqueue([job, job]) == [job.id, job.id]
        assert [j.id for j in storage.list_jobs()] == [job.id]
