"""Unique keys with a window and a conflict rule (`Capabilities.unique_rules`)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dbjobq._contract.concurrency import run_together
from dbjobq._contract.helpers import claim_one, make_job
from dbjobq.errors import DuplicateJobError
from dbjobq.job import Job, JobStatus
from dbjobq.storage.base import Storage

__all__ = ["UniqueRulesContract"]


def needs_unique_rules(storage: Storage) -> None:
    """Skip the test on a backend without `Capabilities.unique_rules`."""
    if not storage.capabilities.unique_rules:
        pytest.skip("unique_for and on_conflict are not offered (Capabilities.unique_rules)")


def wait_past(storage: Storage, instant: datetime, seconds: float = 0.0) -> None:
    """Wait until the storage's clock is past `instant + seconds` (not a fixed sleep)."""
    deadline = time.monotonic() + 10.0
    until = instant + timedelta(seconds=seconds)
    while storage.now() <= until:
        assert time.monotonic() < deadline, "the storage's clock does not move"
        time.sleep(0.002)


def finished(storage: Storage, how: str, **fields: Any) -> Job:
    """A job with `fields` (a `unique_key`), finished `how`: completed, failed, cancelled."""
    new = make_job(**fields)
    storage.enqueue([new])
    if how == "cancelled":
        assert storage.cancel(new.id)
    else:
        job = claim_one(storage)
        token = job.lease_token or ""
        if how == "completed":
            assert storage.complete(job.id, token, result=None)
        else:
            assert storage.fail(job.id, token, error="boom", retry_in=None)
    return storage.get(new.id)


FINISHES = ["completed", "failed", "cancelled"]


class UniqueRulesContract:
    """`unique_for` and `on_conflict`: tests that take the `storage` fixture."""

    # -- the window after a job finished ------------------------------------------------

    @pytest.mark.parametrize("how", FINISHES)
    def test_a_key_holds_for_unique_for_after_its_job_finished(
        self, storage: Storage, how: str
    ) -> None:
        needs_unique_rules(storage)
        old = finished(storage, how, unique_key="k")
        again = make_job(unique_key="k", unique_for=3600.0)
        assert storage.enqueue([again]) == [old.id]
        assert storage.get(old.id) == old  # the finished holder is left as it is
        assert [j.id for j in storage.list_jobs(limit=None)] == [old.id]

    def test_without_unique_for_a_finished_job_holds_no_key(self, storage: Storage) -> None:
        old = finished(storage, "completed", unique_key="k")
        new = make_job(unique_key="k")
        assert storage.enqueue([new]) == [new.id]
        assert {j.id for j in storage.list_jobs(limit=None)} == {old.id, new.id}

    def test_the_window_ends_unique_for_seconds_after_the_job_finished(
        self, storage: Storage
    ) -> None:
        needs_unique_rules(storage)
        old = finished(storage, "completed", unique_key="k")
        assert old.finished_at is not None
        wait_past(storage, old.finished_at, 0.05)
        new = make_job(unique_key="k", unique_for=0.05)
        assert storage.enqueue([new]) == [new.id]
        assert storage.get(new.id).status is JobStatus.PENDING

    def test_the_latest_finished_job_holds_the_key(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        finished(storage, "failed", unique_key="k")
        latest = finished(storage, "completed", unique_key="k")
        assert storage.enqueue([make_job(unique_key="k", unique_for=3600.0)]) == [latest.id]

    def test_an_unfinished_holder_comes_before_a_finished_one(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        finished(storage, "completed", unique_key="k")
        live = make_job(unique_key="k")
        storage.enqueue([live])
        assert storage.enqueue([make_job(unique_key="k", unique_for=3600.0)]) == [live.id]

    def test_the_window_is_per_key(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        finished(storage, "completed", unique_key="k")
        other = make_job(unique_key="K", unique_for=3600.0)
        assert storage.enqueue([other]) == [other.id]

    # -- on_conflict="raise" -------------------------------------------------------------

    def test_raise_names_the_holder_and_stores_nothing(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        holder = make_job(unique_key="k")
        storage.enqueue([holder])
        with pytest.raises(DuplicateJobError) as raised:
            storage.enqueue([make_job(unique_key="k", on_conflict="raise")])
        assert (raised.value.job_id, raised.value.unique_key) == (holder.id, "k")
        assert [j.id for j in storage.list_jobs(limit=None)] == [holder.id]

    @pytest.mark.parametrize("plain", [1, 100])
    def test_raise_rolls_back_the_whole_batch(self, storage: Storage, plain: int) -> None:
        """With one plain job, or enough for a bulk route (COPY, say)."""
        needs_unique_rules(storage)
        holder = make_job(unique_key="k")
        storage.enqueue([holder])
        batch = [
            *(make_job() for _ in range(plain)),
            make_job(unique_key="fresh"),
            make_job(unique_key="k", on_conflict="raise"),
            make_job(),
        ]
        with pytest.raises(DuplicateJobError) as raised:
            storage.enqueue(batch)
        assert raised.value.job_id == holder.id
        assert [j.id for j in storage.list_jobs(limit=None)] == [holder.id]

    def test_raise_meets_an_earlier_job_of_the_same_batch(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        first = make_job(unique_key="k")
        with pytest.raises(DuplicateJobError) as raised:
            storage.enqueue([first, make_job(unique_key="k", on_conflict="raise")])
        assert raised.value.job_id == first.id
        assert storage.list_jobs(limit=None) == []

    def test_raise_meets_a_job_finished_within_the_window(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        old = finished(storage, "cancelled", unique_key="k")
        with pytest.raises(DuplicateJobError) as raised:
            storage.enqueue([make_job(unique_key="k", unique_for=3600.0, on_conflict="raise")])
        assert raised.value.job_id == old.id

    def test_raise_without_a_holder_stores_the_job(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        new = make_job(unique_key="k", on_conflict="raise", unique_for=3600.0)
        assert storage.enqueue([new]) == [new.id]
        # Sent again (a retry after a lost acknowledgement): its own id, no error.
        assert storage.enqueue([new]) == [new.id]
        assert [j.id for j in storage.list_jobs(limit=None)] == [new.id]

    # -- on_conflict="replace" -----------------------------------------------------------

    def test_replace_gives_a_pending_holder_the_new_payload_and_run_at(
        self, storage: Storage
    ) -> None:
        needs_unique_rules(storage)
        holder = make_job(
            "sync",
            unique_key="k",
            payload={"v": 1},
            priority=5,
            meta={"m": 1},
            concurrency_key="c1",
        )
        storage.enqueue([holder])
        before = storage.get(holder.id)
        wait_past(storage, before.updated_at)
        new = make_job(
            "other",
            unique_key="k",
            payload={"v": 2},
            delay=3600.0,
            concurrency_key="c2",
            on_conflict="replace",
        )
        assert storage.enqueue([new]) == [holder.id]
        after = storage.get(holder.id)
        assert (after.payload, after.concurrency_key) == ({"v": 2}, "c2")
        assert after.run_at >= before.run_at + timedelta(seconds=3599)
        assert after.updated_at > before.updated_at
        # Everything else is the holder's own.
        assert (after.type, after.priority, after.meta, after.status) == (
            "sync",
            5,
            {"m": 1},
            JobStatus.PENDING,
        )
        assert (after.created_at, after.attempts) == (before.created_at, 0)
        assert [j.id for j in storage.list_jobs(limit=None)] == [holder.id]

    def test_replace_takes_an_exact_run_at_and_a_cleared_key(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        holder = make_job(unique_key="k", delay=3600.0, concurrency_key="c1")
        storage.enqueue([holder])
        when = datetime.now(timezone.utc) - timedelta(hours=1)
        new = make_job(unique_key="k", run_at=when, payload={"n": 2}, on_conflict="replace")
        assert storage.enqueue([new]) == [holder.id]
        after = storage.get(holder.id)
        assert abs(after.run_at - when) < timedelta(milliseconds=1)
        assert after.concurrency_key is None
        assert claim_one(storage).payload == {"n": 2}  # due now

    def test_replace_leaves_a_running_holder_alone(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        storage.enqueue([make_job(unique_key="k", payload={"v": 1})])
        running = claim_one(storage)
        new = make_job(unique_key="k", payload={"v": 2}, on_conflict="replace")
        assert storage.enqueue([new]) == [running.id]
        assert storage.get(running.id) == running

    def test_replace_leaves_a_finished_holder_alone(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        old = finished(storage, "completed", unique_key="k", payload={"v": 1})
        new = make_job(unique_key="k", payload={"v": 2}, unique_for=3600.0, on_conflict="replace")
        assert storage.enqueue([new]) == [old.id]
        assert storage.get(old.id) == old

    def test_replace_within_one_batch(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        first = make_job(unique_key="k", payload={"v": 1})
        second = make_job(unique_key="k", payload={"v": 2}, on_conflict="replace")
        plain = make_job()
        assert storage.enqueue([first, plain, second]) == [first.id, plain.id, first.id]
        assert storage.get(first.id).payload == {"v": 2}

    def test_replace_changes_a_waiting_holder(self, storage: Storage) -> None:
        needs_unique_rules(storage)
        if not storage.capabilities.workflows:
            pytest.skip("jobs with depends_on are not offered (Capabilities.workflows)")
        parent = make_job()
        child = make_job(unique_key="k", payload={"v": 1}, depends_on=(parent.id,))
        storage.enqueue([parent, child])
        assert storage.get(child.id).status is JobStatus.WAITING
        new = make_job(unique_key="k", payload={"v": 2}, on_conflict="replace")
        assert storage.enqueue([new]) == [child.id]
        after = storage.get(child.id)
        assert (after.payload, after.status) == ({"v": 2}, JobStatus.WAITING)

    # -- order and races -----------------------------------------------------------------

    def test_a_batch_with_unique_rules_becomes_due_in_the_order_given(
        self, storage: Storage
    ) -> None:
        needs_unique_rules(storage)
        # Runs of jobs with keys (and rules) between runs without.
        batch = [
            make_job(type=f"t{n}", unique_key=f"k{n}", unique_for=60.0)
            if n % 3
            else make_job(type=f"t{n}")
            for n in range(90)
        ]
        assert storage.enqueue(batch) == [j.id for j in batch]
        claimed = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=100)
        assert [j.id for j in claimed] == [j.id for j in batch]

    @pytest.mark.parametrize("rule", ["return", "raise", "replace"])
    def test_concurrent_enqueues_with_unique_rules_make_one_job(
        self, storage: Storage, other_storage: Storage, rule: str
    ) -> None:
        """Threads, half of them through `other_storage`, race on one key."""
        needs_unique_rules(storage)
        threads: int = getattr(self, "concurrency_threads", 8)
        ids: list[str] = []
        held: list[str] = []

        def produce(n: int) -> None:
            mine = storage if n % 2 else other_storage
            job = make_job(
                unique_key="only-one", payload={"n": n}, unique_for=60.0, on_conflict=rule
            )
            try:
                ids.extend(mine.enqueue([job]))
            except DuplicateJobError as error:
                held.append(error.job_id)

        errors = run_together(threads, produce)
        assert errors == []
        stored = storage.list_jobs(limit=None)
        assert len(stored) == 1
        assert set(ids) | set(held) == {stored[0].id}
        if rule == "raise":
            assert (len(ids), len(held)) == (1, threads - 1)
        else:
            assert len(ids) == threads

    def test_concurrent_enqueues_within_the_window_return_the_finished_job(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        needs_unique_rules(storage)
        old = finished(storage, "completed", unique_key="k")
        ids: list[str] = []

        def produce(n: int) -> None:
            mine = storage if n % 2 else other_storage
            ids.extend(mine.enqueue([make_job(unique_key="k", unique_for=3600.0)]))

        assert run_together(getattr(self, "concurrency_threads", 8), produce) == []
        assert set(ids) == {old.id}
        assert [j.id for j in storage.list_jobs(limit=None)] == [old.id]
