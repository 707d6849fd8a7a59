"""MemoryStorage: the reference backend, a dict behind a lock."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from dbjobq import _clock
from dbjobq.errors import ConfigurationError, DuplicateJobError, JobNotFound
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup, claim_order
from dbjobq.payload import dumps
from dbjobq.registry import WorkerInfo
from dbjobq.storage._graph import PENDING, Graph, MemoryWorkflows
from dbjobq.storage._memory_limits import MemoryLimits
from dbjobq.storage.base import LEASE_EXPIRED, WORKER_GONE, Capabilities, Storage

__all__ = ["MemoryStorage"]

_UNFINISHED = (JobStatus.WAITING, JobStatus.PENDING, JobStatus.RUNNING)
_REPLACEABLE = (JobStatus.PENDING, JobStatus.WAITING)  # what on_conflict="replace" changes


def _utcnow() -> datetime:
    return _clock.now()


def _copy(value: Any) -> Any:
    # A JSON round trip both copies and normalises exactly as SQL backends do.
    return None if value is None else json.loads(dumps(value))


class MemoryStorage(MemoryLimits, MemoryWorkflows, Storage):
    """Keeps jobs in this process's memory: for tests, examples and eager use.

    Thread-safe (one lock around every operation) and complete: it passes the same
    conformance suite as the SQL backends. Jobs vanish with the process, and other
    processes cannot see them.

    It is also the model for a backend of your own: it implements the required
    methods, `release` and `claim(newest_first=...)`, declares them in
    `capabilities`, and overrides only those defaults that one pass under its
    lock does atomically (`rescue_expired`, `rescue_workers`, `prune_workers`)
    or without copying every job (`count_jobs`, `pending_summary`, which
    `JobQueue.stats` calls); `complete_many` and `release_many` are the base
    class's, built on `complete` and `release`.

    Args:
        clock: Returns the current time as an aware `datetime`; tests pass a fake
            clock to move time forward without sleeping.
    """

    capabilities = Capabilities(
        release=True,
        rescue_workers=True,
        newest_first=True,
        pauses=True,
        limits=True,
        snooze=True,
        workflows=True,
        unique_rules=True,
    )
    """Gives jobs back, rescues dead workers' jobs, claims newest first, pauses
    queues, enforces limits, snoozes jobs, runs workflows and keeps unique keys'
    windows and conflict rules. It does not notify other processes
    (there are none), join transactions, or claim ahead (a claim is CPU work in
    this process)."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utcnow
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._unique: dict[str, str] = {}
        self._ticks: dict[str, datetime] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._paused: set[str] = set()
        self._starts: dict[str, list[datetime]] = {}  # rate key -> starts in its window
        self._graph = Graph()

    def __repr__(self) -> str:
        return f"MemoryStorage(jobs={len(self._jobs)})"

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigurationError("MemoryStorage clock must return aware datetimes")
        return now.astimezone(timezone.utc)

    def _out(self, job: Job) -> Job:
        return dataclasses.replace(
            job, payload=_copy(job.payload), result=_copy(job.result), meta=_copy(job.meta)
        )

    def _set(self, job: Job, **changes: Any) -> Job:
        """Store `job` with `changes`; a job that finishes by it settles its children."""
        new = self._write(job, **changes)
        if new.status.is_finished and not job.status.is_finished:
            self._graph.settled(job.id)
            self._settle_children(new)
        return new

    def _write(self, job: Job, **changes: Any) -> Job:
        new = dataclasses.replace(job, **changes)
        self._jobs[job.id] = new
        key = new.unique_key
        if key is not None and new.status not in _UNFINISHED and self._unique.get(key) == new.id:
            del self._unique[key]
        return new

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        with self._lock:
            now = self._now()
            ids: list[str] = []
            added: dict[str, Job] = {}
            replaced: dict[str, Job] = {}  # stored jobs that "replace" changed
            unique = dict(self._unique)
            alias: dict[str, str] = {}  # a job of this call -> the job stored for it
            edges: list[tuple[str, list[str], bool, set[str]]] = []
            # Build everything first and commit at the end: all or nothing.
            for new in jobs:
                if new.id in self._jobs or new.id in added:
                    # The same job again (a retry after a lost acknowledgement): stored
                    # once, like a primary key, even if it has finished since.
                    ids.append(new.id)
                    continue
                # Unknown parents are refused even for a job its unique key dedupes.
                parents = self._parents_of(new, alias, added) if new.depends_on else []
                key = new.unique_key
                if key is not None:
                    holder_id = unique.get(key)
                    holder = (
                        self._finished_holder(key, new.unique_for, now, added)
                        if holder_id is None
                        else added.get(holder_id)
                        or replaced.get(holder_id)
                        or self._jobs[holder_id]
                    )
                    if holder is not None:
                        changed = self._conflict(new, holder, now)
                        if changed is not None:
                            (added if holder.id in added else replaced)[holder.id] = changed
                        ids.append(holder.id)
                        alias[new.id] = holder.id
                        continue
                ids.append(new.id)
                run_at = new.run_at or now + timedelta(seconds=new.delay)
                status, error, finished_at = JobStatus.PENDING, None, None
                if parents:
                    run_anyway = new.on_parent_failure == "run"

                    def status_of(job_id: str) -> JobStatus | None:
                        parent = added.get(job_id) or self._jobs.get(job_id)
                        return None if parent is None else parent.status

                    verdict, still_open = self._graph.verdict(parents, run_anyway, status_of)
                    if verdict is None:
                        status = JobStatus.WAITING
                    elif verdict != PENDING:
                        status, error, finished_at = JobStatus.CANCELLED, verdict, now
                    edges.append((new.id, parents, run_anyway, still_open))
                added[new.id] = Job(
                    id=new.id,
                    type=new.type,
                    payload=_copy(new.payload),
                    queue=new.queue,
                    priority=new.priority,
                    status=status,
                    attempts=0,
                    max_retries=new.max_retries,
                    run_at=run_at.astimezone(timezone.utc),
                    created_at=now,
                    updated_at=now,
                    finished_at=finished_at,
                    timeout=new.timeout,
                    last_error=error,
                    unique_key=new.unique_key,
                    meta=_copy(new.meta),
                    concurrency_key=new.concurrency_key,
                )
                if new.unique_key is not None and not status.is_finished:
                    unique[new.unique_key] = new.id
            self._jobs.update(added)
            self._jobs.update(replaced)
            self._unique = unique
            for child, parents, run_anyway, still_open in edges:
                self._graph.add(child, parents, run_anyway, still_open)
            return ids

    def _finished_holder(
        self, key: str, within: float | None, now: datetime, added: Mapping[str, Job]
    ) -> Job | None:
        """The latest job with `key` that finished less than `within` seconds ago.

        Jobs of this call count (one cancelled at once by its parent, say).
        """
        if within is None:
            return None
        since = now - timedelta(seconds=within)
        recent = [
            job
            for job in itertools.chain(self._jobs.values(), added.values())
            if job.unique_key == key and job.finished_at is not None and job.finished_at > since
        ]
        return max(recent, key=lambda job: job.finished_at or now, default=None)

    def _conflict(self, new: NewJob, holder: Job, now: datetime) -> Job | None:
        """Apply `new.on_conflict` against `holder`: the holder as changed, if it is."""
        if new.on_conflict == "raise":
            raise DuplicateJobError(holder.unique_key or "", holder.id)
        if new.on_conflict != "replace" or holder.status not in _REPLACEABLE:
            return None
        run_at = new.run_at or now + timedelta(seconds=new.delay)
        return dataclasses.replace(
            holder,
            payload=_copy(new.payload),
            concurrency_key=new.concurrency_key,
            run_at=run_at.astimezone(timezone.utc),
            updated_at=now,
        )

    def claim(
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None = None,
        limit: int = 1,
        newest_first: bool = False,
    ) -> list[Job]:
        with self._lock:
            due = self._due(queues, types, newest_first)
            return self._claim(due[:limit], worker_id, lease_seconds)

    def _due(
        self, queues: Sequence[str], types: Collection[str] | None, newest_first: bool
    ) -> list[Job]:
        """The due jobs of `queues` (and `types`) in claim order."""
        now = self._now()
        wanted = set(queues) - self._paused
        due = [
            job
            for job in self._jobs.values()
            if job.status is JobStatus.PENDING
            and job.run_at <= now
            and job.queue in wanted
            and (types is None or job.type in types)
        ]
        return claim_order(due, newest_first)

    def _claim(self, jobs: Sequence[Job], worker_id: str, lease_seconds: float) -> list[Job]:
        now = self._now()
        token = uuid.uuid4().hex
        claimed = [
            self._set(
                job,
                status=JobStatus.RUNNING,
                attempts=job.attempts + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now,
                updated_at=now,
                progress=None,
                progress_message=None,
            )
            for job in jobs
        ]
        return [self._out(job) for job in claimed]

    def snooze(self, job_id: str, token: str, *, delay: float) -> bool:
        return self._give_back(job_id, token, delay=delay)

    def _find(self, job_id: str) -> Job:
        # Not a str (say a number): no job has such an id, on any backend.
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _held(self, job_id: str, token: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.lease_token != token:
            return None
        return job

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        with self._lock:
            job = self._held(job_id, token)
            if job is None:
                return False
            now = self._now()
            self._set(job, lease_expires_at=now + timedelta(seconds=lease_seconds))
            return True

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        with self._lock:
            job = self._held(job_id, token)
            if job is None:
                return False
            self._set(job, progress=progress, progress_message=message, updated_at=self._now())
            return True

    _RELEASED: Mapping[str, Any] = {
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
    }

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        with self._lock:
            job = self._held(job_id, token)
            if job is None:
                return False
            now = self._now()
            self._set(
                job,
                status=JobStatus.COMPLETED,
                result=_copy(result),
                finished_at=now,
                updated_at=now,
                **self._RELEASED,
            )
            return True

    def release(self, job_id: str, token: str) -> bool:
        return self._give_back(job_id, token, delay=None)

    def _give_back(self, job_id: str, token: str, *, delay: float | None) -> bool:
        """Pending again, the attempt not counted; due in `delay` seconds if given."""
        with self._lock:
            job = self._held(job_id, token)
            if job is None:
                return False
            now = self._now()
            later = {} if delay is None else {"run_at": now + timedelta(seconds=delay)}
            self._set(
                job,
                status=JobStatus.PENDING,
                attempts=job.attempts - 1,
                started_at=None,
                updated_at=now,
                **later,
                **self._RELEASED,
            )
            return True

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        with self._lock:
            job = self._held(job_id, token)
            if job is None:
                return False
            now = self._now()
            if retry_in is None:
                self._set(
                    job,
                    status=JobStatus.FAILED,
                    last_error=error,
                    finished_at=now,
                    updated_at=now,
                    **self._RELEASED,
                )
            else:
                self._set(
                    job,
                    status=JobStatus.PENDING,
                    last_error=error,
                    run_at=now + timedelta(seconds=retry_in),
                    updated_at=now,
                    **self._RELEASED,
                )
            return True

    def rescue_expired(self, *, retry_in: float = 0.0) -> int:
        with self._lock:
            now = self._now()
            expired = [
                job
                for job in self._jobs.values()
                if job.status is JobStatus.RUNNING
                and job.lease_expires_at is not None
                and job.lease_expires_at <= now
            ]
            return self._rescue(expired, now, retry_in, LEASE_EXPIRED)

    def rescue_workers(self, worker_ids: Collection[str], *, retry_in: float = 0.0) -> int:
        with self._lock:
            gone = set(worker_ids)
            held = [
                job
                for job in self._jobs.values()
                if job.status is JobStatus.RUNNING and job.worker_id in gone
            ]
            return self._rescue(held, self._now(), retry_in, WORKER_GONE)

    def _rescue(self, jobs: list[Job], now: datetime, retry_in: float, why: str) -> int:
        """Retry or fail jobs whose worker is lost; `why` names it (`{}`: the worker id).

        The one place that decides between retry and failure, for every kind of rescue.
        """
        for job in jobs:
            error = why.format(job.worker_id)
            # None: the handler decides, and the worker that claims it next knows.
            if job.max_retries is None or job.attempts <= job.max_retries:
                self._set(
                    job,
                    status=JobStatus.PENDING,
                    run_at=now + timedelta(seconds=retry_in),
                    last_error=error,
                    updated_at=now,
                    **self._RELEASED,
                )
            else:
                self._set(
                    job,
                    status=JobStatus.FAILED,
                    last_error=error,
                    finished_at=now,
                    updated_at=now,
                    **self._RELEASED,
                )
        return len(jobs)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._find(job_id)
            return self._out(job)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the Job field
        limit: int | None = 100,
        newest_first: bool = False,
        correlation_id: str | None = None,
    ) -> list[Job]:
        with self._lock:
            found = sorted(
                (
                    job
                    for job in self._jobs.values()
                    if (status is None or job.status == status)
                    and (queue is None or job.queue == queue)
                    and (type is None or job.type == type)
                    and (correlation_id is None or job.meta.get("correlation_id") == correlation_id)
                ),
                key=lambda j: j.id,
                reverse=newest_first,
            )
            return [self._out(job) for job in found[:limit]]

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        with self._lock:
            since = None
            if finished_within is not None:
                since = self._now() - timedelta(seconds=finished_within)
            counts: dict[tuple[str, JobStatus], int] = {}
            for job in self._jobs.values():
                if since is not None and (job.finished_at is None or job.finished_at < since):
                    continue
                key = (job.queue, job.status)
                counts[key] = counts.get(key, 0) + 1
            return counts

    def pending_summary(self) -> list[PendingGroup]:
        with self._lock:
            groups: dict[tuple[str, str], tuple[int, datetime]] = {}
            for job in self._jobs.values():
                if job.status is JobStatus.PENDING:
                    count, oldest = groups.get((job.queue, job.type), (0, job.run_at))
                    groups[(job.queue, job.type)] = (count + 1, min(oldest, job.run_at))
            return [
                PendingGroup(queue, job_type, count, oldest)
                for (queue, job_type), (count, oldest) in sorted(groups.items())
            ]

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._find(job_id)
            if job.status not in _UNFINISHED:
                return False
            now = self._now()
            self._set(
                job,
                status=JobStatus.CANCELLED,
                finished_at=now,
                updated_at=now,
                **self._RELEASED,
            )
            return True

    def retry(self, job_id: str) -> bool:
        with self._lock:
            job = self._find(job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                return False
            if job.unique_key is not None:
                if job.unique_key in self._unique:
                    return False
                self._unique[job.unique_key] = job.id
            now = self._now()
            self._graph.settled(job.id)  # a retried child does not wait again
            self._set(
                job,
                status=JobStatus.PENDING,
                attempts=0,
                run_at=now,
                finished_at=None,
                result=None,
                updated_at=now,
                progress=None,
                progress_message=None,
            )
            return True

    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        with self._lock:
            cutoff = self._now() - timedelta(seconds=older_than)
            doomed = sorted(
                (
                    job
                    for job in self._jobs.values()
                    if job.status in statuses
                    and job.status.is_finished
                    and job.finished_at is not None
                    and job.finished_at < cutoff
                    and not self._graph.keeps(job.id, self._unfinished)
                ),
                key=lambda j: (j.finished_at, j.id),
            )[:limit]
            for job in doomed:
                del self._jobs[job.id]
            self._graph.forget((job.id for job in doomed), self._jobs.__contains__)
            return len(doomed)

    def _unfinished(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and not job.status.is_finished

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        with self._lock:
            last = self._ticks.get(schedule)
            if last is not None and last >= tick:
                return False
            self._ticks[schedule] = tick
            # enqueue() takes the lock again: it is reentrant, and this stays atomic.
            self.enqueue([job])
            return True

    def last_tick(self, schedule: str) -> datetime | None:
        with self._lock:
            return self._ticks.get(schedule)

    def save_worker(self, info: WorkerInfo) -> None:
        with self._lock:
            self._workers[info.id] = dataclasses.replace(info, last_seen=self._now())

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        with self._lock:
            since = self._now() - timedelta(seconds=seen_within)
            return sorted(
                (w for w in self._workers.values() if w.last_seen and w.last_seen >= since),
                key=lambda w: w.id,
            )

    def prune_workers(self, *, older_than: float) -> int:
        with self._lock:
            cutoff = self._now() - timedelta(seconds=older_than)
            gone = [w.id for w in self._workers.values() if w.last_seen and w.last_seen < cutoff]
            for worker_id in gone:
                del self._workers[worker_id]
            return len(gone)

    def now(self) -> datetime:
        return self._now()

    def pause_queue(self, queue: str) -> bool:
        with self._lock:
            if queue in self._paused:
                return False
            self._paused.add(queue)
            return True

    def resume_queue(self, queue: str) -> bool:
        with self._lock:
            if queue not in self._paused:
                return False
            self._paused.discard(queue)
            return True

    def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused)
