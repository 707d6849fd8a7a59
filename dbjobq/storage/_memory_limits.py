"""MemoryStorage's flow control: limited claims and the log of rate starts.

The admission rules are `dbjobq.storage.admission`'s; this gathers the counts they
need from the jobs in memory, under the storage's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from dbjobq.flow import LimitMap, Limits
from dbjobq.job import Job, JobStatus
from dbjobq.storage.admission import Candidate, admit, keyed

__all__ = ["MemoryLimits"]

RUNNABLE = (JobStatus.PENDING, JobStatus.RUNNING)
"""What holds back later jobs of an ordered key: a waiting job takes its turn
once it is pending."""


def enqueued(job: Job) -> tuple[datetime, str]:
    """Enqueue order: what `Concurrency(ordered=True)` keeps."""
    return (job.created_at, job.id)


class MemoryLimits:
    """The flow-control half of `MemoryStorage`: `claim_limited`, `recent_starts`."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _jobs: dict[str, Job]
        _starts: dict[str, list[datetime]]

        def _now(self) -> datetime: ...
        def _set(self, job: Job, **changes: Any) -> Job: ...
        def _due(
            self, queues: Sequence[str], types: Collection[str] | None, newest_first: bool
        ) -> list[Job]: ...
        def _claim(
            self, jobs: Sequence[Job], worker_id: str, lease_seconds: float
        ) -> list[Job]: ...

    def claim_limited(
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str],
        limits: LimitMap,
        limit: int = 1,
        newest_first: bool = False,
        one_per_key: bool = False,
    ) -> list[Job]:
        with self._lock:
            now = self._now()
            due = self._due(queues, types, newest_first)
            candidates = keyed(
                (Candidate(j.id, j.type, j.concurrency_key, j.payload) for j in due), limits
            )
            # Keys worked out now are stored, claimed or not; for an ordered key,
            # so are those of every unfinished job of its types (enqueue order).
            for job in candidates:
                if job.new_key:
                    self._set(self._jobs[job.job.id], concurrency_key=job.concurrency_key)
            ordered = {job.concurrency_key for job in candidates if job.ordered}
            running: dict[str, int] = {}
            first: dict[str, Job] = {}
            for stored in list(self._jobs.values()):
                if stored.status not in RUNNABLE:
                    continue
                key = stored.concurrency_key
                if key is None and ordered:
                    key = self._key_now(stored, limits)
                if key is None:
                    continue
                expires = stored.lease_expires_at
                if stored.status is JobStatus.RUNNING and expires is not None and expires > now:
                    running[key] = running.get(key, 0) + 1
                if key in ordered and (key not in first or enqueued(stored) < enqueued(first[key])):
                    first[key] = stored
            used = {
                job.rate_key: len(self._window(job.rate_key, limits[job.job.type], now))
                for job in candidates
                if job.rate_key is not None
            }
            taken = admit(
                candidates,
                limits,
                limit,
                running=running,
                first_unfinished={key: job.id for key, job in first.items()},
                rate_used=used,
                one_per_key=one_per_key,
            )
            for job in taken:
                if job.rate_key is not None:
                    self._starts.setdefault(job.rate_key, []).append(now)
            return self._claim([self._jobs[job.job.id] for job in taken], worker_id, lease_seconds)

    def _key_now(self, job: Job, limits: LimitMap) -> str | None:
        """Work out (and store) the concurrency key of an unfinished job without one."""
        limit = limits.get(job.type)
        if limit is None or limit.concurrency is None:
            return None
        key = limit.concurrency_key(job.type, None, job.payload)
        self._set(job, concurrency_key=key)
        return key

    def _window(self, key: str, limits: Limits, now: datetime) -> list[datetime]:
        """The starts of rate key `key` within its window; older ones are dropped."""
        assert limits.rate_limit is not None
        since = now - timedelta(seconds=limits.rate_limit.per)
        starts = [at for at in self._starts.get(key, ()) if at > since]
        self._starts[key] = starts
        return starts

    def recent_starts(self, key: str, *, within: float) -> list[datetime]:
        with self._lock:
            since = self._now() - timedelta(seconds=within)
            return sorted(at for at in self._starts.get(key, ()) if at > since)
