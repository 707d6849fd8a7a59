"""The job record, its states, and what it takes to create one."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime, timedelta
from typing import Any, Literal, Union

from dbjobq.payload import dumps

__all__ = [
    "JSON",
    "Insertion",
    "Job",
    "JobSpec",
    "JobStatus",
    "NewJob",
    "PendingGroup",
    "claim_order",
]

JSON = Union[dict[str, Any], list[Any], str, int, float, bool, None]
"""Any strict-JSON value (see `dbjobq.errors.PayloadError` for what strict means)."""

OnConflict = Literal["return", "raise", "replace"]
"""What an enqueue does when its unique key is held (see `JobQueue.enqueue`)."""


class JobStatus(str, enum.Enum):
    """Where a job is in its life.

    ```text
    enqueue ──▶ pending ──claim──▶ running ──▶ completed
       │           ▲                  │  └────▶ failed      (retries spent, or not retryable)
       │           └── retry / rescue ┘
       └─(depends_on)─▶ waiting ──parents completed──▶ pending
                           └──────a parent failed────▶ cancelled
    waiting, pending or running ──cancel──▶ cancelled
    failed or cancelled ──JobQueue.retry──▶ pending
    ```

    Members compare equal to their string values (`JobStatus.PENDING == "pending"`).
    """

    WAITING = "waiting"
    """Enqueued with `depends_on`: waits until its parents have completed, then
    becomes `pending`. Cancelled instead when a parent fails or is cancelled
    (unless it was enqueued with `on_parent_failure="run"`)."""

    PENDING = "pending"
    """Waiting to run; eligible once `run_at` has passed. Entered by enqueue, by a retry
    after a failed attempt, by rescue of an expired lease, and by `JobQueue.retry`."""

    RUNNING = "running"
    """Claimed by a worker that holds a lease on it. Left by completion, failure, retry,
    cancellation, or rescue once the lease expires."""

    COMPLETED = "completed"
    """Terminal: the handler returned; its return value is in `Job.result`."""

    FAILED = "failed"
    """Terminal: the last attempt failed and no retry is left (or the error was not
    retryable). `Job.last_error` says why. `JobQueue.retry` can revive it."""

    CANCELLED = "cancelled"
    """Terminal: cancelled with `JobQueue.cancel`. A running handler sees
    `JobContext.cancelled` set and its outcome is discarded."""

    @property
    def is_finished(self) -> bool:
        """Whether the state is terminal (completed, failed or cancelled)."""
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A snapshot of one job as stored. Immutable: read it again to see changes."""

    id: str
    """Opaque, unique, roughly time-ordered string."""
    type: str
    """The job type: selects the handler."""
    payload: dict[str, Any]
    """The JSON object given at enqueue."""
    queue: str
    """Name of the queue the job is in."""
    priority: int
    """Higher runs first; FIFO (by `run_at`, then id) within one priority."""
    status: JobStatus
    """Current state."""
    attempts: int
    """How many times the job has been claimed (the current attempt included)."""
    max_retries: int | None
    """How many retries are allowed after the first attempt; `None`: as many as the
    handler allows (its `max_retries`, else its queue's) when the job runs."""
    run_at: datetime
    """Not to run before this time (UTC)."""
    created_at: datetime
    """When the job was enqueued (UTC)."""
    updated_at: datetime
    """When the record last changed (UTC)."""
    started_at: datetime | None = None
    """When the latest attempt was claimed."""
    finished_at: datetime | None = None
    """When the job reached a terminal state."""
    timeout: float | None = None
    """Seconds an attempt may run before it fails with `JobTimeoutError`; `None`: the
    handler's `timeout` when the job runs (none if the handler has none)."""
    last_error: str | None = None
    """The latest failure: a summary line, then the traceback."""
    result: Any = None
    """The JSON value the handler returned."""
    unique_key: str | None = None
    """While a job with this key is unfinished, enqueueing the key again returns this job."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Free-form JSON object for the caller (correlation ids, tenant, ...)."""
    progress: float | None = None
    """Last value reported with `JobContext.progress`."""
    progress_message: str | None = None
    """Message reported with the last progress value."""
    worker_id: str | None = None
    """The worker holding the lease while running."""
    lease_token: str | None = None
    """Fencing token of the current lease; finishing the job requires it."""
    lease_expires_at: datetime | None = None
    """When the current lease runs out unless renewed by a heartbeat."""
    concurrency_key: str | None = None
    """The key its handler's `Concurrency` limit counts it under: given at enqueue,
    or worked out from the payload (by the enqueueing queue, else at the first
    claim that sees it); `None` for a job without a concurrency limit."""
    group_id: str | None = None
    """The group the job is a member of (`JobQueue.group`), or `None`."""

    @property
    def retries_left(self) -> int | None:
        """How many more attempts a failure of the current attempt would allow.

        `None` when the job leaves `max_retries` to its handler
        (`JobQueue.handlers` has the handler's value).
        """
        if self.max_retries is None:
            return None
        return max(0, self.max_retries + 1 - self.attempts)


def claim_order(jobs: list[Job], newest_first: bool = False) -> list[Job]:
    """Sort `jobs` in place as a claim takes them, and return the list.

    Priority first (highest), then `run_at` and `id`: ascending (first in, first
    out), or with `newest_first` descending (last in, first out). Ids are unique,
    so the order is total.
    """
    if newest_first:
        jobs.sort(key=lambda j: (j.priority, j.run_at, j.id), reverse=True)
    else:
        jobs.sort(key=lambda j: (-j.priority, j.run_at, j.id))
    return jobs


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A job to enqueue with `JobQueue.enqueue_many`; fields mirror `JobQueue.enqueue`.

    `None` fields take the same defaults as in `JobQueue.enqueue`.
    """

    type: str
    payload: dict[str, Any] | None = None
    queue: str | None = None
    priority: int = 0
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    max_retries: int | None = None
    unique_key: str | None = None
    meta: dict[str, Any] | None = None
    timeout: float | None = None
    concurrency_key: str | None = None
    depends_on: tuple[str, ...] | list[str] | None = None
    on_parent_failure: str = "cancel"
    unique_for: float | timedelta | None = None
    on_conflict: OnConflict = "return"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A validated job, as `JobQueue` hands it to `Storage.enqueue`.

    Backends store it as given. The job becomes due at `run_at` when that is set,
    otherwise `delay` seconds after the storage's own "now".
    """

    id: str
    type: str
    queue: str
    payload: dict[str, Any]
    priority: int
    max_retries: int | None
    """`None`: the handler's value when the job runs."""
    run_at: datetime | None
    delay: float
    unique_key: str | None
    meta: dict[str, Any]
    timeout: float | None
    concurrency_key: str | None = None
    """The job's concurrency key (see `Job.concurrency_key`), or `None`."""
    depends_on: tuple[str, ...] = ()
    """Ids of the jobs it waits for (distinct, in the caller's order); see
    `Storage.enqueue`."""
    on_parent_failure: str = "cancel"
    """`"cancel"`: a parent that ends failed or cancelled cancels the job;
    `"run"`: the job runs once every parent has finished, however."""
    group_id: str | None = None
    """The group the job is a member of (`Storage.enqueue_group`), or `None`."""
    payload_json: str = dataclasses.field(default="", compare=False, repr=False)
    """`payload` as compact JSON text: what SQL backends store, on every insert
    route alike. `JobQueue` serialises each payload once (to check its size) and
    passes the text; when it is left out, it is made from `payload`."""
    meta_json: str = dataclasses.field(default="", compare=False, repr=False)
    """`meta` as compact JSON text, like `payload_json`."""
    unique_for: float | None = None
    """Seconds after a job with `unique_key` finished during which the key still
    dedupes (see `Storage.enqueue`); `None`: only while that job is unfinished."""
    on_conflict: str = "return"
    """What a job that meets the holder of its `unique_key` does: `"return"` the
    holder's id, `"raise"` `DuplicateJobError`, or `"replace"` a pending or waiting
    holder's payload and `run_at` (see `Storage.enqueue`)."""

    @property
    def has_unique_rules(self) -> bool:
        """Whether the job asks for more than "return the unfinished holder's id"."""
        return self.unique_for is not None or self.on_conflict != "return"

    def __post_init__(self) -> None:
        if not self.payload_json:
            object.__setattr__(self, "payload_json", dumps(self.payload))
        if not self.meta_json:
            object.__setattr__(self, "meta_json", dumps(self.meta))


@dataclasses.dataclass(frozen=True, slots=True)
class Insertion:
    """What `JobQueue.insert` did: the job's id, and whether it is a new job.

    `inserted` is `False` when the unique key was held (the id is the holder's),
    whatever `on_conflict` then did to that job.
    """

    id: str
    """The new job's id, or that of the job holding the unique key."""
    inserted: bool
    """Whether a new job was stored."""


@dataclasses.dataclass(frozen=True, slots=True)
class PendingGroup:
    """Pending jobs of one type in one queue (see `Storage.pending_summary`)."""

    queue: str
    """The queue."""
    type: str
    """The job type."""
    count: int
    """How many jobs are pending."""
    oldest_run_at: datetime
    """The earliest `run_at` among them."""
