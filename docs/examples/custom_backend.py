"""JsonFileStorage: an example storage backend that keeps every job in one JSON file.

Each operation locks, reads the file, makes its change and writes the file back
atomically: one atomic operation, at the price of speed (a few thousand jobs, one
process). The sixteen required methods and `release`; the rest are `Storage`'s.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dbjobq.errors import JobNotFound, StorageError
from dbjobq.job import Job, JobStatus, NewJob
from dbjobq.registry import WorkerInfo
from dbjobq.storage import Capabilities, Storage

# The fields of a NewJob that its Job takes over as they are.
_COPIED = "id type payload queue priority max_retries timeout unique_key meta".split()  # noqa: SIM905

# Completing, failing, cancelling or giving back a job takes its lease away.
_RELEASED: Mapping[str, Any] = {"lease_token": None, "lease_expires_at": None, "worker_id": None}


@dataclass
class _State:
    """The file's content: jobs by id, periodic ticks, registered workers."""

    jobs: dict[str, Job]
    ticks: dict[str, datetime]
    workers: dict[str, WorkerInfo]


def _times(record: dict[str, Any]) -> dict[str, Any]:
    """Turn the ISO texts of a record's times (`*_at`, `last_seen`) back into datetimes."""
    times = {k: v for k, v in record.items() if v and (k.endswith("_at") or k == "last_seen")}
    return {**record, **{k: datetime.fromisoformat(v) for k, v in times.items()}}


def _decode(text: str) -> _State:
    """The file's content as a `_State`; an empty one if there is no file yet."""
    data = json.loads(text or '{"jobs": [], "ticks": {}, "workers": []}')
    jobs = (Job(**{**_times(r), "status": JobStatus(r["status"])}) for r in data["jobs"])
    workers = (
        WorkerInfo(**{**_times(w), "queues": tuple(w["queues"]), "types": tuple(w["types"])})
        for w in data["workers"]
    )
    ticks = {name: datetime.fromisoformat(tick) for name, tick in data["ticks"].items()}
    return _State({j.id: j for j in jobs}, ticks, {w.id: w for w in workers})


def _finished(now: datetime) -> dict[str, Any]:
    """The changes every move to a terminal state makes."""
    return {"finished_at": now, "updated_at": now, **_RELEASED}


def _find(state: _State, job_id: str) -> Job:
    if job_id not in state.jobs:
        raise JobNotFound(job_id)
    return state.jobs[job_id]


class JsonFileStorage(Storage):
    """Keeps jobs in the JSON file `path`, for one process: the lock is not shared."""

    # No transactions, no notify: enqueue_in_transaction and subscribe keep their defaults.
    capabilities = Capabilities(release=True, rescue_workers=True, newest_first=True)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- plumbing: the clock, and reading and writing the file -------------------------

    def now(self) -> datetime:
        """This backend's clock (the host's): time belongs to the backend."""
        return datetime.now(timezone.utc)

    @contextmanager
    def _state(self) -> Iterator[_State]:
        """Lock, read the file, and write it back if the operation changed its content."""
        with self._lock:
            try:  # no file yet: nothing written yet
                text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
                state = _decode(text)
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise StorageError(f"cannot read jobs from {self.path}: {error}") from error
            yield state  # an exception raised by the operation writes nothing
            self._save(state, text)

    def _save(self, state: _State, old: str) -> None:
        # Write a temporary file, flush it to disk, then rename it over the old one:
        # a reader (or a crash) sees the old file or the new one, never half of one.
        temp = self.path.with_name(self.path.name + ".tmp")
        jobs, workers = ([asdict(v) for v in d.values()] for d in (state.jobs, state.workers))
        content = {"jobs": jobs, "ticks": state.ticks, "workers": workers}
        try:
            text = json.dumps(content, default=datetime.isoformat, ensure_ascii=False)
            if text == old:
                return  # nothing changed
            temp.parent.mkdir(parents=True, exist_ok=True)  # the first write makes it all
            with temp.open("w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except (OSError, TypeError, ValueError) as error:
            # The old file is still in place: the operation had no effect.
            raise StorageError(f"cannot write {self.path}: {error}") from error

    # -- the required methods, and release (`initialize` keeps its default: nothing) ---

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        with self._state() as state:
            return self._add(state, jobs)

    def _add(self, state: _State, jobs: Sequence[NewJob]) -> list[str]:
        now = self.now()
        # Only unfinished jobs hold their unique key.
        holders = {j.unique_key: j.id for j in state.jobs.values() if not j.status.is_finished}
        ids: list[str] = []
        for new in jobs:
            if new.id in state.jobs:  # the same job again (a retried call): kept once
                ids.append(new.id)
            elif new.unique_key is not None and new.unique_key in holders:
                ids.append(holders[new.unique_key])
            else:
                ids.append(new.id)
                run_at = (new.run_at or now + timedelta(seconds=new.delay)).astimezone(timezone.utc)
                copied = {name: getattr(new, name) for name in _COPIED}
                fresh: dict[str, Any] = {"run_at": run_at, "created_at": now, "updated_at": now}
                state.jobs[new.id] = Job(**copied, **fresh, status=JobStatus.PENDING, attempts=0)
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
        # Highest priority first, then run_at and id: ascending (FIFO) or not (LIFO).
        with self._state() as state:
            now = self.now()
            due = [j for j in state.jobs.values() if j.status is JobStatus.PENDING]
            due = [j for j in due if j.run_at <= now and j.queue in queues]
            due = [j for j in due if types is None or j.type in types]  # None: every type
            due.sort(key=lambda job: (job.run_at, job.id), reverse=newest_first)
            due.sort(key=lambda job: -job.priority)  # stable: keeps the order above
            taken: dict[str, Any] = {
                "status": JobStatus.RUNNING,
                "worker_id": worker_id,
                "started_at": now,
            }
            taken |= {"updated_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
            taken |= {"progress": None, "progress_message": None}  # a new attempt starts afresh
            claimed = [  # each claim gets a token of its own: the fencing token
                replace(job, **taken, attempts=job.attempts + 1, lease_token=uuid.uuid4().hex)
                for job in due[: max(limit, 0)]
            ]
            state.jobs.update((job.id, job) for job in claimed)
            return claimed

    def _change(self, job_id: str, allowed: Callable[[Job, _State], bool], **changes: Any) -> bool:
        """Make `changes` to a job if `allowed`: every transition reads, checks, writes."""
        with self._state() as state:
            job = _find(state, job_id)
            if not allowed(job, state):
                return False
            if changes.pop("undo_claim", False):  # release: the claim's attempt is undone
                changes["attempts"] = job.attempts - 1
            state.jobs[job_id] = replace(job, **changes)
            return True

    def _fenced(self, job_id: str, token: str, **changes: Any) -> bool:
        # The fence: only the holder of the current lease may change a running job.
        # An expired lease still counts until a rescue takes it away.
        def held(job: Job, state: _State) -> bool:
            return job.status is JobStatus.RUNNING and job.lease_token == token

        try:
            return self._change(job_id, held, **changes)
        except JobNotFound:
            return False  # unknown ids hold no lease

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        until = self.now() + timedelta(seconds=lease_seconds)
        return self._fenced(job_id, token, lease_expires_at=until)

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        changes = {"progress": progress, "progress_message": message, "updated_at": self.now()}
        return self._fenced(job_id, token, **changes)

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        done = _finished(self.now())
        return self._fenced(job_id, token, status=JobStatus.COMPLETED, result=result, **done)

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        now = self.now()
        if retry_in is None:  # final
            return self._fenced(
                job_id, token, status=JobStatus.FAILED, last_error=error, **_finished(now)
            )
        run_at = now + timedelta(seconds=retry_in)
        back = {"status": JobStatus.PENDING, "run_at": run_at, "updated_at": now, **_RELEASED}
        return self._fenced(job_id, token, last_error=error, **back)

    def release(self, job_id: str, token: str) -> bool:
        # Declared in `capabilities`: the claim is undone, its attempt not counted.
        back = {"status": JobStatus.PENDING, "started_at": None, "updated_at": self.now()}
        return self._fenced(job_id, token, undo_claim=True, **back, **_RELEASED)

    def get(self, job_id: str) -> Job:
        with self._state() as state:
            return _find(state, job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the Job field
        limit: int | None = 100,
        newest_first: bool = False,
    ) -> list[Job]:
        with self._state() as state:
            found = [j for j in state.jobs.values() if status in (None, j.status)]  # or its str
            found = [j for j in found if queue in (None, j.queue) and type in (None, j.type)]
        return sorted(found, key=lambda job: job.id, reverse=newest_first)[:limit]

    def cancel(self, job_id: str) -> bool:
        # Clearing the lease fences out the worker that runs the job, if any.
        done = {"status": JobStatus.CANCELLED, **_finished(self.now())}
        return self._change(job_id, lambda job, state: not job.status.is_finished, **done)

    def retry(self, job_id: str) -> bool:
        def allowed(job: Job, state: _State) -> bool:  # unless its key was enqueued again
            held = {j.unique_key for j in state.jobs.values() if not j.status.is_finished}
            failed = job.status in (JobStatus.FAILED, JobStatus.CANCELLED)
            return failed and (job.unique_key is None or job.unique_key not in held)

        now = self.now()  # last_error stays: it says why the job needed a retry
        cleared = dict.fromkeys(("finished_at", "result", "progress", "progress_message"))
        again = {"status": JobStatus.PENDING, "attempts": 0, "run_at": now, "updated_at": now}
        return self._change(job_id, allowed, **again, **cleared)

    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        with self._state() as state:
            cutoff = self.now() - timedelta(seconds=older_than)
            # Finished jobs only (never pending or running ones), first finished first.
            old = [j for j in state.jobs.values() if j.status in statuses and j.status.is_finished]
            ends = {j.id: j.finished_at for j in old if j.finished_at and j.finished_at < cutoff}
            doomed = sorted(ends, key=lambda job_id: (ends[job_id], job_id))[:limit]
            for job_id in doomed:
                del state.jobs[job_id]
            return len(doomed)

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        with self._state() as state:
            if schedule in state.ticks and state.ticks[schedule] >= tick:
                return False
            state.ticks[schedule] = tick  # written to the file together with its job
            self._add(state, [job])
            return True

    def last_tick(self, schedule: str) -> datetime | None:
        with self._state() as state:
            return state.ticks.get(schedule)

    def save_worker(self, info: WorkerInfo) -> None:
        with self._state() as state:
            state.workers[info.id] = replace(info, last_seen=self.now())

    def remove_worker(self, worker_id: str) -> None:
        with self._state() as state:
            state.workers.pop(worker_id, None)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        with self._state() as state:
            since = self.now() - timedelta(seconds=seen_within)
            seen = [w for w in state.workers.values() if w.last_seen and w.last_seen >= since]
        return sorted(seen, key=lambda w: w.id)
