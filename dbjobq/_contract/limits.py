"""Concurrency and rate limits (optional: `Capabilities.limits`) and snoozing (`.snooze`)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dbjobq._contract.concurrency import run_together
from dbjobq._contract.helpers import make_job
from dbjobq.flow import Concurrency, LimitMap, Limits, RateLimit
from dbjobq.job import Job, JobStatus
from dbjobq.storage.base import Storage

__all__ = ["LimitContract", "SnoozeContract"]

HOUR = 3600.0


def _needs_limits(storage: Storage) -> None:
    if not storage.capabilities.limits:
        pytest.skip("concurrency and rate limits are not offered (Capabilities.limits)")


def _claim(
    storage: Storage, limits: LimitMap, limit: int = 10, worker: str = "w", **kw: Any
) -> list[Job]:
    return storage.claim_limited(
        queues=kw.pop("queues", ["default"]),
        types=kw.pop("types", ["task", "other", "plain"]),
        worker_id=worker,
        lease_seconds=kw.pop("lease_seconds", 60.0),
        limits=limits,
        limit=limit,
        **kw,
    )


def _keys(jobs: list[Job]) -> Counter[str | None]:
    return Counter(job.concurrency_key for job in jobs)


PER_KEY_2 = {"task": Limits(Concurrency(2))}


class LimitContract:
    """`claim_limited` keeps concurrency and rate limits; `recent_starts` reports starts."""

    def test_at_most_limit_jobs_of_a_key_run(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(concurrency_key=k) for k in "aaaaabbbbb"])
        first = _claim(storage, PER_KEY_2)
        assert _keys(first) == {"a": 2, "b": 2}
        assert _claim(storage, PER_KEY_2) == []
        # Held-back jobs are untouched: pending, no attempt used.
        pending = storage.list_jobs(status=JobStatus.PENDING)
        assert len(pending) == 6
        assert {job.attempts for job in pending} == {0}

    def test_one_per_key_takes_one_job_of_each_key(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(concurrency_key=k) for k in "aaabbb"])
        storage.enqueue([make_job(type="other", concurrency_key="a")])  # no limit: not counted
        wide = {"task": Limits(Concurrency(5))}
        first = _claim(storage, wide, limit=10, one_per_key=True)
        assert _keys([j for j in first if j.type == "task"]) == {"a": 1, "b": 1}
        assert [j.type for j in first].count("other") == 1
        assert _keys(_claim(storage, wide, limit=10, one_per_key=True)) == {"a": 1, "b": 1}
        assert _keys(_claim(storage, wide, limit=10)) == {"a": 1, "b": 1}  # what is left

    def test_a_limit_without_a_key_holds_for_the_type(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(payload={"n": n}) for n in range(5)])
        claimed = _claim(storage, {"task": Limits(Concurrency(3))})
        assert len(claimed) == 3
        assert _keys(claimed) == {"task": 3}
        assert _claim(storage, {"task": Limits(Concurrency(3))}) == []

    def test_a_key_function_keys_jobs_enqueued_without_a_key(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(payload={"account": n % 2}) for n in range(4)])
        limits = {"task": Limits(Concurrency(1, key=lambda p: p["account"]))}
        claimed = _claim(storage, limits)
        assert _keys(claimed) == {"task:0": 1, "task:1": 1}
        # The claim stored the keys of the jobs it held back as well.
        held = storage.list_jobs(status=JobStatus.PENDING)
        assert sorted(job.concurrency_key or "" for job in held) == ["task:0", "task:1"]

    def test_a_saturated_key_does_not_block_the_jobs_behind_it(self, storage: Storage) -> None:
        _needs_limits(storage)
        # Thirty jobs of one key come first in claim order (higher priority).
        storage.enqueue([make_job(concurrency_key="hot", priority=5) for _ in range(30)])
        behind = make_job(concurrency_key="cold")
        plain = make_job(type="plain")
        storage.enqueue([behind, plain])
        claimed = _claim(storage, {"task": Limits(Concurrency(1))}, limit=3)
        assert [job.concurrency_key for job in claimed] == ["hot", "cold", None]
        assert {job.id for job in claimed} >= {behind.id, plain.id}
        # With the hot key full, a claim still finds nothing wrong and takes nothing.
        assert _claim(storage, {"task": Limits(Concurrency(1))}) == []

    def test_types_without_limits_are_claimed_in_order_alongside(self, storage: Storage) -> None:
        _needs_limits(storage)
        jobs = [
            make_job(type="plain", priority=3),
            make_job(concurrency_key="k", priority=2),
            make_job(concurrency_key="k", priority=1),
            make_job(type="plain", priority=0),
        ]
        storage.enqueue(jobs)
        claimed = _claim(storage, {"task": Limits(Concurrency(1))})
        assert [job.id for job in claimed] == [jobs[0].id, jobs[1].id, jobs[3].id]
        # A key on a job whose type has no limit limits nothing.
        storage.enqueue([make_job(type="plain", concurrency_key="k") for _ in range(3)])
        assert len(_claim(storage, {"task": Limits(Concurrency(1))})) == 3

    def test_an_explicit_key_is_shared_by_types(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue(
            [make_job(concurrency_key="acct-1"), make_job("other", concurrency_key="acct-1")]
        )
        limits = {"task": Limits(Concurrency(1)), "other": Limits(Concurrency(1))}
        assert len(_claim(storage, limits)) == 1
        assert _claim(storage, limits) == []

    def test_every_end_of_a_run_frees_its_slot(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(concurrency_key="k", max_retries=9) for _ in range(8)])
        one = {"task": Limits(Concurrency(1))}

        def take() -> Job:
            (job,) = _claim(storage, one)
            assert _claim(storage, one) == []  # the key is full while it runs
            return job

        job = take()
        assert storage.complete(job.id, job.lease_token or "", result=None)
        job = take()
        assert storage.fail(job.id, job.lease_token or "", error="boom", retry_in=HOUR)
        job = take()
        assert storage.cancel(job.id)
        if storage.capabilities.release:
            job = take()
            assert storage.release(job.id, job.lease_token or "")
        if storage.capabilities.snooze:
            job = take()
            assert storage.snooze(job.id, job.lease_token or "", delay=HOUR)
        # An expired lease frees the slot at once, before any rescue.
        (job,) = _claim(storage, one, lease_seconds=0)
        (job,) = _claim(storage, one)
        # Rescuing the expired one changes nothing for the key: the other holds it.
        assert storage.rescue_expired(retry_in=HOUR) == 1
        assert _claim(storage, one) == []

    def test_a_rescued_job_frees_its_slot(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(concurrency_key="k") for _ in range(2)])
        one = {"task": Limits(Concurrency(1))}
        (lost,) = _claim(storage, one, lease_seconds=0)
        assert storage.rescue_expired(retry_in=HOUR) == 1
        (job,) = _claim(storage, one)
        assert job.id != lost.id
        assert storage.get(lost.id).status is JobStatus.PENDING

    def test_ordered_keys_start_in_enqueue_order(self, storage: Storage) -> None:
        _needs_limits(storage)
        ordered = {"task": Limits(Concurrency(1, key=lambda p: p["k"], ordered=True))}
        first = make_job(payload={"k": 1}, max_retries=5)
        storage.enqueue([first])
        # Enqueued later with a higher priority: it still waits for the first.
        later = make_job(payload={"k": 1}, priority=9)
        other = make_job(payload={"k": 2}, priority=9)
        storage.enqueue([later, other])
        claimed = _claim(storage, ordered)
        assert sorted(job.id for job in claimed) == sorted([first.id, other.id])
        mine = {job.id: job for job in claimed}[first.id]
        # Retried an hour from now, the first job is unfinished: the later one waits.
        assert storage.fail(mine.id, mine.lease_token or "", error="x", retry_in=HOUR)
        assert _claim(storage, ordered) == []
        assert storage.cancel(first.id)
        assert [job.id for job in _claim(storage, ordered)] == [later.id]

    def test_racing_claimers_never_exceed_a_limit(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """Threads, half through `other_storage`, claim until nothing is left to take."""
        _needs_limits(storage)
        keys = [f"k{n}" for n in range(10)]
        storage.enqueue([make_job(concurrency_key=k) for k in keys for _ in range(10)])
        claimed: list[Job] = []

        def work(n: int) -> None:
            mine = storage if n % 2 else other_storage
            while jobs := _claim(mine, PER_KEY_2, limit=3, worker=f"w{n}"):
                claimed.extend(jobs)

        threads = getattr(self, "concurrency_threads", 8)
        assert run_together(threads, work) == []
        # Leases never end here: the limit is what stopped the claimers.
        assert len({job.id for job in claimed}) == len(claimed)
        running = storage.list_jobs(status=JobStatus.RUNNING, limit=1000)
        assert Counter(job.concurrency_key for job in running) == dict.fromkeys(keys, 2)

    def test_a_rate_limit_caps_starts_per_window(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(payload={"p": n % 2}) for n in range(10)])
        storage.enqueue([make_job(type="other") for _ in range(5)])
        limits = {
            "task": Limits(rate_limit=RateLimit(2, per=HOUR, key=lambda p: p["p"])),
            "other": Limits(rate_limit=RateLimit(3, per=HOUR)),
        }
        claimed = _claim(storage, limits, limit=20)
        assert Counter(job.type for job in claimed) == {"task": 4, "other": 3}
        # Finished or not, a start stays in the window.
        for job in claimed:
            assert storage.complete(job.id, job.lease_token or "", result=None)
        assert _claim(storage, limits, limit=20) == []
        starts = storage.recent_starts("task:0", within=HOUR)
        assert len(starts) == 2
        assert all(isinstance(at, datetime) and at.tzinfo is not None for at in starts)
        assert starts == sorted(starts)
        assert len(storage.recent_starts("other", within=HOUR)) == 3
        assert storage.recent_starts("nobody", within=HOUR) == []

    def test_concurrency_and_rate_limits_together(self, storage: Storage) -> None:
        _needs_limits(storage)
        storage.enqueue([make_job(concurrency_key=k) for k in "aaabbbccc"])
        both = {"task": Limits(Concurrency(2), RateLimit(3, per=HOUR))}
        first = _claim(storage, both)
        assert len(first) == 3
        assert max(_keys(first).values()) <= 2
        assert _claim(storage, both) == []


def _needs_snooze(storage: Storage) -> None:
    if not storage.capabilities.snooze:
        pytest.skip("snoozing is not offered (Capabilities.snooze)")


class SnoozeContract:
    """`snooze`: back to pending later, the attempt not counted."""

    def test_a_snoozed_job_is_pending_later_with_its_attempts_kept(self, storage: Storage) -> None:
        _needs_snooze(storage)
        storage.enqueue([make_job(max_retries=0)])
        (job,) = storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
        assert job.attempts == 1
        before = datetime.now(timezone.utc)
        assert storage.snooze(job.id, job.lease_token or "", delay=HOUR)
        snoozed = storage.get(job.id)
        assert snoozed.status is JobStatus.PENDING
        assert snoozed.attempts == 0
        assert snoozed.lease_token is None and snoozed.worker_id is None
        assert snoozed.started_at is None
        assert snoozed.run_at > before + timedelta(minutes=50)
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60) == []
        # The token no longer holds the lease.
        assert not storage.snooze(job.id, job.lease_token or "", delay=0)

    def test_a_job_snoozed_for_no_time_is_claimed_again_at_once(self, storage: Storage) -> None:
        _needs_snooze(storage)
        storage.enqueue([make_job(max_retries=0)])
        (job,) = storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
        assert storage.snooze(job.id, job.lease_token or "", delay=0)
        (again,) = storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
        assert again.id == job.id
        assert again.attempts == 1
        assert again.lease_token != job.lease_token
        assert storage.complete(again.id, again.lease_token or "", result={"ok": True})
        done = storage.get(job.id)
        assert done.status is JobStatus.COMPLETED and done.attempts == 1

    def test_only_a_held_lease_can_snooze(self, storage: Storage) -> None:
        _needs_snooze(storage)
        storage.enqueue([make_job()])
        (job,) = storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
        assert not storage.snooze(job.id, "not-the-token", delay=0)
        assert not storage.snooze("no-such-job", job.lease_token or "", delay=0)
        assert storage.get(job.id).status is JobStatus.RUNNING
