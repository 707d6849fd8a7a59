"""A conformance suite for `Storage` backends, to run with pytest.

Subclass `StorageContract` in a test module and provide a `storage` fixture that
yields a fresh, initialised and empty backend; every test of the contract then runs
against it:

```python
import pytest
from dbjobq.testing import StorageContract

class TestMyStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        backend = MyStorage(tmp_path / "jobs")
        backend.initialize()
        yield backend
        backend.close()
```

To also check that two storage objects on the same store (two processes, say) never
claim the same job, override `other_storage` to open a second object on the store
that `storage` uses.

The suite needs pytest (`pip install pytest`). It never sleeps: lease expiry is
tested with zero-length leases, scheduling with delays an hour away or instants an
hour in the past, so it passes on backends whose clock it cannot control, as long as
that clock is within minutes of the test machine's.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dbjobq._ids import new_job_id
from dbjobq.errors import JobNotFound
from dbjobq.job import Job, JobStatus, NewJob
from dbjobq.queue import JobQueue
from dbjobq.registry import WorkerInfo
from dbjobq.storage.base import Storage
from dbjobq.worker import Worker

__all__ = ["StorageContract", "make_job"]


def make_job(type: str = "task", **fields: Any) -> NewJob:  # noqa: A002 - the job field
    """Build a `NewJob` with a fresh id and defaults for every field not given."""
    values: dict[str, Any] = {
        "id": new_job_id(),
        "type": type,
        "queue": "default",
        "payload": {},
        "priority": 0,
        "max_retries": 3,
        "run_at": None,
        "delay": 0.0,
        "unique_key": None,
        "meta": {},
        "timeout": None,
    }
    values.update(fields)
    return NewJob(**values)


def _claim_one(storage: Storage, worker: str = "w1", lease: float = 60.0, **kw: Any) -> Job:
    jobs = storage.claim(
        queues=kw.pop("queues", ["default"]), worker_id=worker, lease_seconds=lease, **kw
    )
    assert len(jobs) == 1, f"expected to claim one job, got {len(jobs)}"
    return jobs[0]


class StorageContract:
    """The behaviour every `Storage` backend must show. Provide a `storage` fixture."""

    @pytest.fixture
    def storage(self) -> Storage:
        """Return (or yield) a fresh, initialised, empty backend; override it."""
        raise NotImplementedError("subclasses of StorageContract provide a storage fixture")

    @pytest.fixture
    def other_storage(self, storage: Storage) -> Storage:
        """A second storage object on the same store; by default the same object."""
        return storage

    concurrency_threads = 8
    """Threads used by the concurrency tests; lower it for slow backends."""

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
        job = _claim_one(storage)
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

    # -- claiming ---------------------------------------------------------------------

    def test_claim_returns_nothing_when_empty(self, storage: Storage) -> None:
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_claim_marks_the_job_running_under_a_lease(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        job = _claim_one(storage, worker="w-1", lease=60)
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
        _claim_one(storage)
        assert storage.claim(queues=["default"], worker_id="w2", lease_seconds=60) == []

    def test_claim_orders_by_priority_then_fifo(self, storage: Storage) -> None:
        low1, high, low2, mid = (make_job(priority=p) for p in (0, 10, 0, 5))
        for job in (low1, high, low2, mid):
            storage.enqueue([job])
        order = [_claim_one(storage).id for _ in range(4)]
        assert order == [high.id, mid.id, low1.id, low2.id]

    def test_claim_is_fifo_within_a_batch(self, storage: Storage) -> None:
        jobs = [make_job() for _ in range(20)]
        storage.enqueue(jobs)
        assert [_claim_one(storage).id for _ in range(20)] == [j.id for j in jobs]

    def test_claim_newest_first_is_lifo_within_a_priority(self, storage: Storage) -> None:
        if not storage.capabilities.newest_first:
            pytest.skip("claim takes no newest_first (optional)")
        low1, high1, low2, high2, low3 = (make_job(priority=p) for p in (0, 5, 0, 5, 0))
        for job in (low1, high1, low2, high2, low3):
            storage.enqueue([job])
        order = [_claim_one(storage, newest_first=True).id for _ in range(5)]
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
        assert _claim_one(storage).id == past_job.id

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

    # -- finishing ----------------------------------------------------------------------

    def test_complete_records_the_result(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
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
        job = _claim_one(storage)
        assert not storage.complete(job.id, "not-the-token", result=1)
        assert storage.get(job.id) == job

    def test_complete_twice_records_once(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
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
        job = _claim_one(storage)
        assert storage.complete_many([(job.id, job.lease_token or "", 1)]) == [True]
        assert storage.get(job.id).result == 1

    def test_release_puts_an_unstarted_job_back_in_its_place(self, storage: Storage) -> None:
        if not storage.capabilities.release:
            # Optional: without it, workers claim one job at a time.
            assert Worker(JobQueue(storage)).prefetch == 1
            return
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
        again = _claim_one(storage)
        assert again.id == first and again.attempts == 1  # its place in line is kept
        assert again.lease_token != a.lease_token

    def test_release_gives_back_a_started_job_without_using_its_attempt(
        self, storage: Storage
    ) -> None:
        """A handler interrupted by a shutdown: the job runs again, attempts unchanged."""
        if not storage.capabilities.release:
            return  # optional: such workers record the interrupted attempt as failed
        storage.enqueue([make_job(max_retries=0)])
        first = _claim_one(storage)
        assert storage.fail(first.id, first.lease_token or "", error="boom", retry_in=0.0)
        job = _claim_one(storage)
        assert job.attempts == 2
        token = job.lease_token or ""
        assert storage.set_progress(job.id, token, progress=40, message="half")
        assert storage.release(job.id, token)
        back = storage.get(job.id)
        assert (back.status, back.attempts) == (JobStatus.PENDING, 1)
        assert back.lease_token is None and back.started_at is None
        assert back.last_error == "boom" and back.finished_at is None
        assert not storage.fail(job.id, token, error="late", retry_in=None)  # fenced
        again = _claim_one(storage)
        assert again.attempts == 2 and again.progress is None

    def test_release_many_gives_back_only_what_it_holds(self, storage: Storage) -> None:
        if not storage.capabilities.release:
            return  # optional, as release is
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
        job = _claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="boom", retry_in=0.0)
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.last_error == "boom"
        assert back.lease_token is None and back.finished_at is None
        again = _claim_one(storage)
        assert again.id == job.id and again.attempts == 2
        assert again.lease_token != job.lease_token

    def test_fail_with_a_later_retry_waits(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="later", retry_in=3600.0)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.run_at - back.updated_at >= timedelta(seconds=3599)

    def test_fail_without_retry_is_final(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        assert storage.fail(job.id, job.lease_token or "", error="fatal", retry_in=None)
        failed = storage.get(job.id)
        assert failed.status is JobStatus.FAILED
        assert failed.last_error == "fatal"
        assert failed.finished_at is not None
        assert (failed.lease_token, failed.lease_expires_at, failed.worker_id) == (None, None, None)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []

    def test_a_new_attempt_starts_without_progress(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        storage.set_progress(job.id, job.lease_token or "", progress=50, message="half")
        storage.fail(job.id, job.lease_token or "", error="x", retry_in=0.0)
        again = _claim_one(storage)
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
        job = _claim_one(storage)
        assert not storage.fail(job.id, "nope", error="x", retry_in=None)
        assert storage.get(job.id) == job

    # -- leases -------------------------------------------------------------------------

    def test_heartbeat_extends_the_lease(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage, lease=0)
        assert storage.heartbeat(job.id, job.lease_token or "", lease_seconds=3600)
        assert storage.rescue_expired() == 0
        held = storage.get(job.id)
        assert held.status is JobStatus.RUNNING
        assert held.lease_expires_at is not None and job.lease_expires_at is not None
        assert held.lease_expires_at - job.lease_expires_at >= timedelta(seconds=3599)

    def test_heartbeat_with_a_wrong_token_is_refused(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        assert not storage.heartbeat(job.id, "nope", lease_seconds=60)
        assert storage.get(job.id).lease_expires_at == job.lease_expires_at

    def test_rescue_requeues_an_expired_lease_with_retries_left(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=1)])
        job = _claim_one(storage, worker="dead-worker", lease=0)
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
        job = _claim_one(storage, lease=0)
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
        gone = _claim_one(storage, worker="host:1:gone", lease=3600)
        gone2 = _claim_one(storage, worker="host:2:gone", lease=3600)
        alive = _claim_one(storage, worker="host:3:alive", lease=3600)
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
        job1 = _claim_one(storage, worker="gone-1", lease=3600)
        job2 = _claim_one(storage, worker="gone-2", lease=3600)
        assert storage.rescue_workers(["gone-1", "gone-2"], retry_in=3600) == 2
        failed = storage.get(job1.id)
        assert failed.status is JobStatus.FAILED and failed.finished_at is not None
        assert failed.last_error is not None and "gone-1" in failed.last_error
        back = storage.get(job2.id)
        assert back.status is JobStatus.PENDING and back.finished_at is None
        assert back.run_at - back.updated_at >= timedelta(seconds=3599)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        assert storage.rescue_workers(["gone-1", "gone-2"]) == 0  # nothing running any more

    def test_enqueue_of_an_already_stored_id_stores_it_once(self, storage: Storage) -> None:
        """A retried enqueue (after a lost commit acknowledgement) adds nothing."""
        job = make_job(payload={"n": 1})
        assert storage.enqueue([job]) == [job.id]
        assert storage.enqueue([job, job]) == [job.id, job.id]
        assert [j.id for j in storage.list_jobs()] == [job.id]

    def test_list_jobs_accepts_status_strings(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        assert len(storage.list_jobs(status="pending")) == 1

    def test_rescue_fails_an_expired_lease_without_retries(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=0)])
        job = _claim_one(storage, lease=0)
        assert storage.rescue_expired() == 1
        failed = storage.get(job.id)
        assert failed.status is JobStatus.FAILED
        assert failed.finished_at is not None
        assert failed.last_error is not None and "lease expired" in failed.last_error

    def test_rescue_leaves_live_leases_alone(self, storage: Storage) -> None:
        storage.enqueue([make_job(), make_job()])
        _claim_one(storage, lease=3600)
        assert storage.rescue_expired() == 0
        assert len(storage.list_jobs(status=JobStatus.RUNNING)) == 1

    def test_rescued_job_refuses_the_old_token(self, storage: Storage) -> None:
        """The fence: a worker that lost its lease can never record an outcome."""
        storage.enqueue([make_job()])
        old = _claim_one(storage, worker="old", lease=0)
        assert storage.rescue_expired() == 1
        new = _claim_one(storage, worker="new", lease=60)
        assert new.lease_token != old.lease_token
        assert not storage.complete(old.id, old.lease_token or "", result="stale")
        assert not storage.fail(old.id, old.lease_token or "", error="stale", retry_in=None)
        assert not storage.heartbeat(old.id, old.lease_token or "", lease_seconds=60)
        assert not storage.set_progress(old.id, old.lease_token or "", progress=1, message=None)
        assert storage.complete(new.id, new.lease_token or "", result="fresh")
        assert storage.get(new.id).result == "fresh"

    def test_expired_lease_can_still_complete_before_rescue(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage, lease=0)
        assert storage.complete(job.id, job.lease_token or "", result=1)
        assert storage.rescue_expired() == 0
        assert storage.get(job.id).status is JobStatus.COMPLETED

    def test_set_progress_is_stored(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        assert storage.set_progress(job.id, job.lease_token or "", progress=42.5, message="half")
        seen = storage.get(job.id)
        assert (seen.progress, seen.progress_message) == (42.5, "half")

    # -- unique keys ----------------------------------------------------------------------

    def test_unique_key_returns_the_unfinished_job(self, storage: Storage) -> None:
        first = make_job(unique_key="k")
        assert storage.enqueue([first]) == [first.id]
        assert storage.enqueue([make_job(unique_key="k")]) == [first.id]
        _claim_one(storage)
        assert storage.enqueue([make_job(unique_key="k")]) == [first.id]
        assert len(storage.list_jobs()) == 1

    def test_unique_key_is_free_again_once_finished(self, storage: Storage) -> None:
        first = make_job(unique_key="k")
        storage.enqueue([first])
        job = _claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        second = make_job(unique_key="k")
        assert storage.enqueue([second]) == [second.id]

    def test_unique_key_within_one_batch(self, storage: Storage) -> None:
        a, b, c = make_job(unique_key="k"), make_job(unique_key="k"), make_job()
        assert storage.enqueue([a, b, c]) == [a.id, a.id, c.id]
        assert len(storage.list_jobs()) == 2

    def test_concurrent_enqueues_of_one_unique_key_make_one_job(self, storage: Storage) -> None:
        barrier = threading.Barrier(self.concurrency_threads)
        ids: list[str] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                barrier.wait()
                ids.extend(storage.enqueue([make_job(unique_key="only-one")]))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=produce) for _ in range(self.concurrency_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(ids)) == 1
        assert [j.id for j in storage.list_jobs()] == [ids[0]]

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
        job = _claim_one(storage)
        assert storage.cancel(job.id)
        assert not storage.heartbeat(job.id, job.lease_token or "", lease_seconds=60)
        assert not storage.complete(job.id, job.lease_token or "", result=1)
        assert storage.get(job.id).status is JobStatus.CANCELLED

    def test_cancel_a_finished_job_returns_false(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        job = _claim_one(storage)
        storage.complete(job.id, job.lease_token or "", result=None)
        assert not storage.cancel(job.id)
        assert storage.get(job.id).status is JobStatus.COMPLETED

    def test_cancel_unknown_raises(self, storage: Storage) -> None:
        with pytest.raises(JobNotFound):
            storage.cancel(new_job_id())

    def test_retry_a_failed_job(self, storage: Storage) -> None:
        storage.enqueue([make_job(max_retries=0)])
        job = _claim_one(storage)
        storage.set_progress(job.id, job.lease_token or "", progress=3, message="m")
        storage.fail(job.id, job.lease_token or "", error="bad", retry_in=None)
        assert storage.retry(job.id)
        back = storage.get(job.id)
        assert back.status is JobStatus.PENDING
        assert back.attempts == 0 and back.finished_at is None
        assert back.last_error == "bad"
        assert (back.progress, back.progress_message) == (None, None)
        assert _claim_one(storage).id == job.id

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
        job = _claim_one(storage)
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
        job = _claim_one(storage)
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
        job = _claim_one(storage)
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
            job = _claim_one(storage)
            storage.complete(job.id, job.lease_token or "", result=None)
        statuses = [JobStatus.COMPLETED]
        assert storage.purge(statuses=statuses, older_than=-1, limit=2) == 2
        assert storage.purge(statuses=statuses, older_than=-1, limit=10) == 3
        assert storage.list_jobs() == []

    # -- periodic ticks -----------------------------------------------------------------------

    def test_a_tick_is_enqueued_once(self, storage: Storage) -> None:
        tick = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
        assert storage.last_tick("nightly") is None
        assert storage.enqueue_tick("nightly", tick, make_job("report"))
        assert not storage.enqueue_tick("nightly", tick, make_job("report"))
        assert not storage.enqueue_tick("nightly", tick - timedelta(days=1), make_job("report"))
        assert storage.last_tick("nightly") == tick
        assert storage.enqueue_tick("nightly", tick + timedelta(days=1), make_job("report"))
        assert storage.enqueue_tick("hourly", tick, make_job("report"))  # schedules are apart
        assert len(storage.list_jobs()) == 3

    def test_concurrent_callers_enqueue_one_job_per_tick(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
        barrier = threading.Barrier(self.concurrency_threads)
        won: list[bool] = []
        errors: list[BaseException] = []

        def race(n: int) -> None:
            mine = storage if n % 2 else other_storage
            try:
                barrier.wait()
                won.append(mine.enqueue_tick("race", tick, make_job("t")))
            except BaseException as error:
                errors.append(error)

        threads = [
            threading.Thread(target=race, args=(n,)) for n in range(self.concurrency_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(won) == [False] * (self.concurrency_threads - 1) + [True]
        assert len(storage.list_jobs()) == 1

    # -- the worker registry ----------------------------------------------------------------

    def _worker(self, worker_id: str, **fields: Any) -> WorkerInfo:
        values: dict[str, Any] = {
            "id": worker_id,
            "hostname": "host-1",
            "pid": 42,
            "queues": ("default", "mail"),
            "types": ("a", "b"),
            "started_at": datetime(2030, 1, 1, tzinfo=timezone.utc),
        }
        values.update(fields)
        return WorkerInfo(**values)

    def test_workers_register_update_and_leave(self, storage: Storage) -> None:
        storage.save_worker(self._worker("w2"))
        storage.save_worker(self._worker("w1"))
        storage.save_worker(self._worker("w1", current_job="job-9", jobs_processed=7))
        found = storage.list_workers(seen_within=3600)
        assert [w.id for w in found] == ["w1", "w2"]
        w1 = found[0]
        assert (w1.hostname, w1.pid, w1.queues, w1.types) == (
            "host-1",
            42,
            ("default", "mail"),
            ("a", "b"),
        )
        assert (w1.current_job, w1.jobs_processed) == ("job-9", 7)
        assert w1.started_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
        assert w1.last_seen is not None and w1.last_seen.utcoffset() == timedelta(0)
        storage.remove_worker("w2")
        storage.remove_worker("never-there")
        assert [w.id for w in storage.list_workers(seen_within=3600)] == ["w1"]

    def test_workers_not_seen_recently_are_left_out_and_pruned(self, storage: Storage) -> None:
        storage.save_worker(self._worker("w1"))
        assert storage.list_workers(seen_within=-1) == []
        assert storage.prune_workers(older_than=3600) == 0
        assert storage.prune_workers(older_than=-1) == 1
        assert storage.list_workers(seen_within=3600) == []

    def test_now_is_aware_utc_and_close_to_real_time(self, storage: Storage) -> None:
        now = storage.now()
        assert now.utcoffset() == timedelta(0)
        assert abs(now - datetime.now(timezone.utc)) < timedelta(minutes=5)

    # -- text compares byte for byte ------------------------------------------------------

    # Strings that a loose comparison (case, accents, trailing spaces, normalisation)
    # would take for equal: each is a different value to every backend.
    _LOOKALIKES = ("user-A", "user-a", "café", "cafe", "cafe\u0301", "k", "k ", "ß", "ss")

    def test_unique_keys_compare_byte_for_byte(self, storage: Storage) -> None:
        jobs = [make_job(unique_key=key) for key in self._LOOKALIKES]
        assert storage.enqueue(jobs) == [j.id for j in jobs]
        for job in jobs:  # each key still finds its own job
            assert storage.enqueue([make_job(unique_key=job.unique_key)]) == [job.id]
        assert len(storage.list_jobs()) == len(jobs)

    def test_claim_compares_types_and_queues_byte_for_byte(self, storage: Storage) -> None:
        mail = make_job("mail")
        others = [make_job(kind) for kind in ("MAIL", "Mail", "mail ", "ma\u0131l")]
        others += [make_job("mail", queue=name) for name in ("Default ", "DEFAULT", "default ")]
        storage.enqueue([*others, mail])
        claimed = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, types={"mail"}, limit=20
        )
        assert [j.id for j in claimed] == [mail.id]
        every_type = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=20)
        assert {j.type for j in every_type} == {"MAIL", "Mail", "mail ", "ma\u0131l"}
        spaced = storage.claim(queues=["default "], worker_id="w", lease_seconds=60, limit=20)
        assert [j.queue for j in spaced] == ["default "]

    def test_list_jobs_filters_byte_for_byte(self, storage: Storage) -> None:
        exact = make_job("Report", queue="emails")
        storage.enqueue([exact, make_job("report", queue="Emails"), make_job("Report ")])
        assert [j.id for j in storage.list_jobs(type="Report", queue="emails")] == [exact.id]
        assert [j.type for j in storage.list_jobs(type="report")] == ["report"]
        assert [j.queue for j in storage.list_jobs(queue="Emails")] == ["Emails"]

    def test_ids_compare_byte_for_byte(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        for lookalike in (new.id.upper(), new.id + " "):
            with pytest.raises(JobNotFound):
                storage.get(lookalike)
            with pytest.raises(JobNotFound):
                storage.cancel(lookalike)
            with pytest.raises(JobNotFound):
                storage.retry(lookalike)
        assert storage.get(new.id).status is JobStatus.PENDING

    def test_schedules_compare_byte_for_byte(self, storage: Storage) -> None:
        tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
        names = ("Report", "report", "report ")
        for n, name in enumerate(names):
            assert storage.enqueue_tick(name, tick + timedelta(hours=n), make_job(name))
        for n, name in enumerate(names):
            assert storage.last_tick(name) == tick + timedelta(hours=n)
        assert sorted(j.type for j in storage.list_jobs()) == sorted(names)

    def test_worker_ids_compare_byte_for_byte(self, storage: Storage) -> None:
        for worker_id in ("w-a", "W-A", "w-a "):
            storage.save_worker(self._worker(worker_id))
        assert sorted(w.id for w in storage.list_workers(seen_within=3600)) == [
            "W-A",
            "w-a",
            "w-a ",
        ]

    def test_text_beyond_latin1_round_trips(self, storage: Storage) -> None:
        """Emoji, CJK, Cyrillic in every text field (MySQL databases made latin1 too)."""
        text = "邮件 ✉️ почта 🚀"
        new = make_job(
            f"send {text}",
            queue=f"q {text}",
            unique_key=f"key {text}",
            payload={text: [text]},
            meta={"trace": text},
        )
        storage.enqueue([new])
        job = _claim_one(storage, worker=f"w {text}", queues=[f"q {text}"], types={new.type})
        assert (job.type, job.queue, job.unique_key, job.worker_id) == (
            new.type,
            new.queue,
            new.unique_key,
            f"w {text}",
        )
        assert (job.payload, job.meta) == ({text: [text]}, {"trace": text})
        assert storage.set_progress(job.id, job.lease_token or "", progress=0.5, message=text)
        assert storage.get(job.id).progress_message == text
        assert storage.fail(job.id, job.lease_token or "", error=f"Error: {text}", retry_in=None)
        assert storage.get(job.id).last_error == f"Error: {text}"
        assert [j.id for j in storage.list_jobs(queue=new.queue, type=new.type)] == [new.id]
        assert storage.retry(job.id)
        again = _claim_one(storage, queues=[f"q {text}"])
        assert storage.complete(again.id, again.lease_token or "", result={"r": text})
        assert storage.get(new.id).result == {"r": text}
        assert storage.enqueue_tick(text, datetime(2030, 1, 1, tzinfo=timezone.utc), make_job())
        assert storage.last_tick(text) == datetime(2030, 1, 1, tzinfo=timezone.utc)

    # -- ids and filters that cannot exist ----------------------------------------------------

    # A lone surrogate cannot be encoded, NUL cannot be stored everywhere: no job, queue
    # or type can have them (JobQueue refuses them at enqueue), so no lookup finds one.
    _IMPOSSIBLE = ("\ud800", "a\udfffb", "nul\x00")

    def test_an_id_that_cannot_exist_is_not_found(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        for job_id in self._IMPOSSIBLE:
            for call in (storage.get, storage.cancel, storage.retry):
                with pytest.raises(JobNotFound):
                    call(job_id)

    def test_a_filter_that_cannot_match_finds_nothing(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        for text in self._IMPOSSIBLE:
            assert storage.list_jobs(queue=text) == []
            assert storage.list_jobs(type=text) == []
            assert storage.list_jobs(status="pending", queue="default", type=text) == []
        assert len(storage.list_jobs(queue="default")) == 1

    # -- a job sent again -------------------------------------------------------------------

    def test_a_job_sent_again_returns_its_id_even_once_finished(self, storage: Storage) -> None:
        """The retry after a lost commit acknowledgement, for a job with a unique key."""
        job = make_job(unique_key="report-1")
        assert storage.enqueue([job]) == [job.id]
        assert storage.enqueue([job]) == [job.id]  # still pending
        claimed = _claim_one(storage)
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
        claimed = _claim_one(storage)
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
            return  # optional, as release is
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

    # -- concurrency ------------------------------------------------------------------------

    def test_concurrent_claims_never_share_a_job(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """Threads start together and claim until empty: each job is claimed once.

        Half of the threads go through `other_storage`.
        """
        total = 200
        storage.enqueue([make_job() for _ in range(total)])
        barrier = threading.Barrier(self.concurrency_threads)
        claimed: list[str] = []
        errors: list[BaseException] = []

        def work(n: int) -> None:
            mine = storage if n % 2 else other_storage
            try:
                barrier.wait()
                while jobs := mine.claim(
                    queues=["default"], worker_id=f"w{n}", lease_seconds=60, limit=3
                ):
                    for job in jobs:
                        claimed.append(job.id)
                        assert mine.complete(job.id, job.lease_token or "", result=n)
            except BaseException as error:
                errors.append(error)

        threads = [
            threading.Thread(target=work, args=(n,)) for n in range(self.concurrency_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(claimed) == total
        assert max(Counter(claimed).values()) == 1
        assert storage.count_jobs() == {("default", JobStatus.COMPLETED): total}
