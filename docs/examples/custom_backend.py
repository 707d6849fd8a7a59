"""JsonFileStorage: an example storage backend that keeps every job in one JSON file.

Each operation takes a lock, reads the whole file, changes what it must and writes
the whole file back atomically. That makes every method one atomic operation, at the
price of speed: it suits a few thousand jobs, used by one process.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.errors import ConfigurationError, JobNotFound, StorageError
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup
from dbjobq.registry import WorkerInfo
from dbjobq.storage import Storage

_TIMES = ("run_at", "created_at", "updated_at", "started_at", "finished_at", "lease_expires_at")

# Completing, failing, cancelling or rescuing a job takes its lease away.
_RELEASED: Mapping[str, Any] = {"lease_token": None, "lease_expires_at": None, "worker_id": None}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _State(dict[str, Job]):
    """The file's content: the jobs by id, plus periodic ticks and registered workers."""

    def __init__(
        self,
        jobs: Mapping[str, Job] | None = None,
        ticks: dict[str, datetime] | None = None,
        workers: dict[str, WorkerInfo] | None = None,
    ) -> None:
        super().__init__(jobs or {})
        self.ticks = ticks or {}
        self.workers = workers or {}


def _encode(job: Job) -> dict[str, Any]:
    record = asdict(job)
    record["status"] = job.status.value
    for name in _TIMES:
        if record[name] is not None:
            record[name] = record[name].isoformat()
    return record


def _decode(record: dict[str, Any]) -> Job:
    record["status"] = JobStatus(record["status"])
    for name in _TIMES:
        if record[name] is not None:
            record[name] = datetime.fromisoformat(record[name])
    return Job(**record)


class JsonFileStorage(Storage):
    """Keeps jobs in a JSON file, for one process: the lock is not shared with others.

    It cannot join an application's transaction, so it keeps the default
    `enqueue_in_transaction`, which raises `ConfigurationError`.

    Args:
        path: The JSON file; created by the first write.
        clock: Returns the current time as an aware `datetime`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()

    # -- plumbing: the clock, and reading and writing the file -------------------------

    def _now(self) -> datetime:
        # Time belongs to the backend: every "now" comes from this one clock.
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigurationError("the clock must return aware datetimes")
        return now.astimezone(timezone.utc)

    def _load(self) -> _State:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _State()  # nothing written yet
        except OSError as error:
            raise StorageError(f"cannot read {self.path}: {error}") from error
        try:
            data = json.loads(text)
            return _State(
                {record["id"]: _decode(record) for record in data["jobs"]},
                {name: datetime.fromisoformat(t) for name, t in data["ticks"].items()},
                {w["id"]: _decode_worker(w) for w in data["workers"]},
            )
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"{self.path} is not a job file: {error}") from error

    def _save(self, jobs: _State) -> None:
        # Write a temporary file, flush it to disk, then rename it over the old one:
        # a reader (or a crash) sees the old file or the new one, never half of one.
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            text = json.dumps(
                {
                    "jobs": [_encode(job) for job in jobs.values()],
                    "ticks": {name: t.isoformat() for name, t in jobs.ticks.items()},
                    "workers": [_encode_worker(w) for w in jobs.workers.values()],
                },
                ensure_ascii=False,
                allow_nan=False,
            )
            with temp.open("w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except (OSError, TypeError, ValueError) as error:
            # The old file is still in place: the operation had no effect.
            raise StorageError(f"cannot write {self.path}: {error}") from error

    # -- the Storage interface ---------------------------------------------------------

    def initialize(self) -> None:
        """Create the directory, and check that an existing file can be read."""
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageError(f"cannot create {self.path.parent}: {error}") from error
            self._load()

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        """Store new jobs; a unique key held by an unfinished job returns that job."""
        with self._lock:
            stored, now = self._load(), self._now()
            ids = self._add(stored, jobs, now)
            if jobs:
                self._save(stored)
            return ids

    def _add(self, stored: _State, jobs: Sequence[NewJob], now: datetime) -> list[str]:
        """Add jobs to the loaded state; the caller saves it."""
        # Only unfinished jobs hold their unique key.
        holders = {
            job.unique_key: job.id
            for job in stored.values()
            if job.unique_key is not None and not job.status.is_finished
        }
        ids: list[str] = []
        for new in jobs:
            if new.id in stored:
                # The same job again (a retried call): keep it once, and return its
                # id even if it has finished and another job holds its key by now.
                ids.append(new.id)
                continue
            if new.unique_key is not None and new.unique_key in holders:
                ids.append(holders[new.unique_key])
                continue
            ids.append(new.id)
            run_at = new.run_at or now + timedelta(seconds=new.delay)
            stored[new.id] = Job(
                id=new.id,
                type=new.type,
                payload=new.payload,
                queue=new.queue,
                priority=new.priority,
                status=JobStatus.PENDING,
                attempts=0,
                max_retries=new.max_retries,
                run_at=run_at.astimezone(timezone.utc),
                created_at=now,
                updated_at=now,
                timeout=new.timeout,
                unique_key=new.unique_key,
                meta=new.meta,
            )
            if new.unique_key is not None:
                holders[new.unique_key] = new.id  # later jobs of this batch see it
        return ids

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
        """Lease up to `limit` due jobs: highest priority first, then `run_at`, then id.

        `newest_first` (optional for a backend) reverses `run_at` and id: LIFO.
        """
        with self._lock:
            stored, now = self._load(), self._now()
            due = sorted(
                (
                    job
                    for job in stored.values()
                    if job.status is JobStatus.PENDING
                    and job.run_at <= now
                    and job.queue in queues
                    and (types is None or job.type in types)  # None means every type
                ),
                key=lambda job: (job.run_at, job.id),
                reverse=newest_first,
            )
            due.sort(key=lambda job: -job.priority)  # stable: keeps the order above
            claimed = [
                replace(
                    job,
                    status=JobStatus.RUNNING,
                    attempts=job.attempts + 1,
                    worker_id=worker_id,
                    lease_token=uuid.uuid4().hex,  # new for every claim: the fencing token
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=now,
                    updated_at=now,
                    progress=None,  # a new attempt starts without the old one's progress
                    progress_message=None,
                )
                for job in due[: max(limit, 0)]
            ]
            if claimed:
                stored.update((job.id, job) for job in claimed)
                self._save(stored)
            return claimed

    def _fenced(
        self, job_id: str, token: str, changes: Callable[[datetime], Mapping[str, Any]]
    ) -> bool:
        # The fence: only the holder of the current lease may change a running job.
        # An expired lease still counts until rescue_expired takes it away.
        with self._lock:
            stored = self._load()
            job = stored.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.lease_token != token:
                return False
            stored[job_id] = replace(job, **changes(self._now()))
            self._save(stored)
            return True

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        """Extend the lease if `token` still holds it."""
        return self._fenced(
            job_id, token, lambda now: {"lease_expires_at": now + timedelta(seconds=lease_seconds)}
        )

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        """Store progress if `token` still holds the lease."""
        return self._fenced(
            job_id,
            token,
            lambda now: {"progress": progress, "progress_message": message, "updated_at": now},
        )

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        """Mark the job completed if `token` still holds the lease."""
        return self._fenced(
            job_id,
            token,
            lambda now: {"status": JobStatus.COMPLETED, "result": result, **_finished(now)},
        )

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        """Record a failed attempt: pending again, or failed if `retry_in` is None."""
        return self._fenced(job_id, token, lambda now: _after_failure(now, error, retry_in))

    def rescue_expired(self, *, retry_in: float = 0.0) -> int:
        """Take expired leases away: retry each job, or fail it if no retry is left."""
        return self._rescue(
            lambda job, now: job.lease_expires_at is not None and job.lease_expires_at <= now,
            "lease expired: worker {} stopped heartbeating",
            retry_in,
        )

    def rescue_workers(self, worker_ids: Collection[str], *, retry_in: float = 0.0) -> int:
        """Rescue the jobs of dead workers now, as `rescue_expired` would (optional)."""
        gone = set(worker_ids)
        return self._rescue(lambda job, now: job.worker_id in gone, "worker {} is gone", retry_in)

    def _rescue(self, lost: Callable[[Job, datetime], bool], why: str, retry_in: float) -> int:
        with self._lock:
            stored, now = self._load(), self._now()
            rescued = [
                job for job in stored.values() if job.status is JobStatus.RUNNING and lost(job, now)
            ]
            for job in rescued:
                # `attempts` counts the lost attempt; None as retry_in fails the job.
                # max_retries None is the handler's to apply: always back to pending.
                retries = job.max_retries
                delay = retry_in if retries is None or job.attempts <= retries else None
                error = why.format(job.worker_id)
                stored[job.id] = replace(job, **_after_failure(now, error, delay))
            if rescued:
                self._save(stored)
            return len(rescued)

    def get(self, job_id: str) -> Job:
        """Return the job, or raise `JobNotFound`."""
        with self._lock:
            job = self._load().get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the Job field
        limit: int | None = 100,
        newest_first: bool = False,
    ) -> list[Job]:
        """Return the jobs that match every filter, oldest (or newest) first, by id."""
        wanted = None if status is None else JobStatus(status)  # also accepts "pending"
        with self._lock:
            stored = self._load()
        found = sorted(
            (
                job
                for job in stored.values()
                if (wanted is None or job.status is wanted)
                and (queue is None or job.queue == queue)
                and (type is None or job.type == type)
            ),
            key=lambda job: job.id,
            reverse=newest_first,
        )
        return found[:limit]

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        """Count jobs per (queue, status); pairs without jobs are left out."""
        with self._lock:
            stored, now = self._load(), self._now()
        since = None if finished_within is None else now - timedelta(seconds=finished_within)
        counts: dict[tuple[str, JobStatus], int] = {}
        for job in stored.values():
            if since is not None and (job.finished_at is None or job.finished_at < since):
                continue
            counts[job.queue, job.status] = counts.get((job.queue, job.status), 0) + 1
        return counts

    def pending_summary(self) -> list[PendingGroup]:
        """Pending jobs per (queue, type): how many, and the earliest run_at."""
        with self._lock:
            stored = self._load()
        groups: dict[tuple[str, str], list[datetime]] = {}
        for job in stored.values():
            if job.status is JobStatus.PENDING:
                groups.setdefault((job.queue, job.type), []).append(job.run_at)
        return [
            PendingGroup(queue, job_type, len(times), min(times))
            for (queue, job_type), times in sorted(groups.items())
        ]

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending or running job; `False` if it had already finished."""
        with self._lock:
            stored, now = self._load(), self._now()
            job = stored.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status.is_finished:
                return False
            # Clearing the lease fences out the worker that runs the job, if any.
            stored[job_id] = replace(job, status=JobStatus.CANCELLED, **_finished(now))
            self._save(stored)
            return True

    def retry(self, job_id: str) -> bool:
        """Requeue a failed or cancelled job, unless another job holds its unique key."""
        with self._lock:
            stored, now = self._load(), self._now()
            job = stored.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                return False
            if job.unique_key is not None and any(
                other.unique_key == job.unique_key and not other.status.is_finished
                for other in stored.values()
            ):
                return False  # the key was enqueued again meanwhile; it has one holder
            stored[job_id] = replace(
                job,
                status=JobStatus.PENDING,
                attempts=0,
                run_at=now,
                finished_at=None,
                result=None,
                progress=None,
                progress_message=None,
                updated_at=now,
            )  # last_error stays: it says why the job needed a retry
            self._save(stored)
            return True

    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        """Delete jobs in `statuses` that finished more than `older_than` seconds ago,
        at most `limit` of them, those that finished first."""
        with self._lock:
            stored = self._load()
            cutoff = self._now() - timedelta(seconds=older_than)
            doomed = sorted(
                (
                    job
                    for job in stored.values()
                    if job.status in statuses
                    and job.status.is_finished  # pending or running jobs are never deleted
                    and job.finished_at is not None
                    and job.finished_at < cutoff
                ),
                key=lambda job: (job.finished_at, job.id),
            )[:limit]
            for job in doomed:
                del stored[job.id]
            if doomed:
                self._save(stored)
            return len(doomed)

    # -- periodic ticks and the worker registry ------------------------------------------

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        """Record `tick` and enqueue its job, unless this tick or a later one was."""
        with self._lock:
            stored, now = self._load(), self._now()
            last = stored.ticks.get(schedule)
            if last is not None and last >= tick:
                return False
            stored.ticks[schedule] = tick
            self._add(stored, [job], now)
            self._save(stored)  # the tick and its job are written together
            return True

    def last_tick(self, schedule: str) -> datetime | None:
        """The latest tick recorded for `schedule`."""
        with self._lock:
            return self._load().ticks.get(schedule)

    def save_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a worker's record, seen now."""
        with self._lock:
            stored, now = self._load(), self._now()
            stored.workers[info.id] = replace(info, last_seen=now)
            self._save(stored)

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker."""
        with self._lock:
            stored = self._load()
            if stored.workers.pop(worker_id, None) is not None:
                self._save(stored)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        """Workers seen in the last `seen_within` seconds, by id."""
        with self._lock:
            stored, now = self._load(), self._now()
        since = now - timedelta(seconds=seen_within)
        return sorted(
            (w for w in stored.workers.values() if w.last_seen and w.last_seen >= since),
            key=lambda w: w.id,
        )

    def prune_workers(self, *, older_than: float) -> int:
        """Forget workers not seen for more than `older_than` seconds."""
        with self._lock:
            stored, now = self._load(), self._now()
            cutoff = now - timedelta(seconds=older_than)
            gone = [w.id for w in stored.workers.values() if w.last_seen and w.last_seen < cutoff]
            for worker_id in gone:
                del stored.workers[worker_id]
            if gone:
                self._save(stored)
            return len(gone)

    def now(self) -> datetime:
        """This backend's clock."""
        return self._now()


def _encode_worker(info: WorkerInfo) -> dict[str, Any]:
    record = asdict(info)
    for name in ("started_at", "last_seen"):
        if record[name] is not None:
            record[name] = record[name].isoformat()
    return record


def _decode_worker(record: dict[str, Any]) -> WorkerInfo:
    for name in ("started_at", "last_seen"):
        if record[name] is not None:
            record[name] = datetime.fromisoformat(record[name])
    record["queues"], record["types"] = tuple(record["queues"]), tuple(record["types"])
    return WorkerInfo(**record)


def _finished(now: datetime) -> dict[str, Any]:
    """The changes every move to a terminal state makes."""
    return {"finished_at": now, "updated_at": now, **_RELEASED}


def _after_failure(now: datetime, error: str, retry_in: float | None) -> dict[str, Any]:
    """The changes a failed attempt makes: pending after `retry_in`, or failed."""
    if retry_in is None:
        return {"status": JobStatus.FAILED, "last_error": error, **_finished(now)}
    return {
        "status": JobStatus.PENDING,
        "run_at": now + timedelta(seconds=retry_in),
        "last_error": error,
        "updated_at": now,
        **_RELEASED,
    }


if __name__ == "__main__":
    Path("jobs.json").unlink(missing_ok=True)  # start from an empty file, for the output below
    queue = JobQueue(JsonFileStorage("jobs.json"))  # in the current directory

    @queue.handler("add")
    def add(ctx: JobContext) -> int:
        """Add the payload's two numbers."""
        return int(ctx.payload["a"]) + int(ctx.payload["b"])

    ids = [queue.enqueue("add", {"a": n, "b": 10}) for n in range(3)]
    print("processed", Worker(queue).run_until_empty(), "jobs")
    for job_id in ids:
        job = queue.get_job(job_id)
        print(job.id, job.status, job.result)  # <id> completed 10 (then 11, then 12)
        assert job.status is JobStatus.COMPLETED

    # The jobs are in the file: a new storage object on the same path reads them.
    reopened = JsonFileStorage("jobs.json")
    assert [reopened.get(job_id).result for job_id in ids] == [10, 11, 12]
    print(reopened.count_jobs())  # {('default', <JobStatus.COMPLETED: 'completed'>): 3}
