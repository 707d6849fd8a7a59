"""The storage interface: what a backend must do for `JobQueue` and `Worker`.

A backend persists jobs and performs state transitions; it decides nothing.
`JobQueue` validates input, picks retry delays and builds `NewJob` records; the
backend records them. Every method is **one atomic operation**: it happens
completely or not at all, and concurrent callers (threads, processes, hosts) never
observe half of it.

The contract has three parts:

* **Required methods** (abstract): sixteen small state transitions and reads. A
  class that leaves one out cannot be instantiated, and the error names it.
* **Defaulted methods**: `count_jobs`, `pending_summary`, `rescue_expired`,
  `rescue_workers`, `prune_workers`, `complete_many`, `release_many`, `now`,
  `initialize`, `close` and `schema_exists` work out of the box, built on the
  required methods. Each default is correct; override it to make it faster, or
  (where its docstring says the default takes two steps) fully atomic.
* **Optional capabilities** (their methods and defaults are in
  `dbjobq.storage.optional`, which `Storage` inherits): `release`, `subscribe`,
  `subscribe_finished`, `enqueue_in_transaction`, `claim(newest_first=True)`,
  claiming ahead, flow control (`claim_limited`, `snooze`), pausing queues, and
  workflows (`enqueue_group`, `get_group`, `parents`, `children`,
  `settle_waiting`). A backend says which it has in `Storage.capabilities` (a
  `Capabilities`), and callers look there and nowhere else before they use one.

Time belongs to the backend. Methods take durations (`lease_seconds`, `retry_in`,
`older_than`) rather than instants and measure them on the backend's own clock (the
database's for SQL backends), so workers on hosts with skewed clocks agree.

Words used below:

* **now**: the backend's current time, read once per operation.
* **the lease is cleared**: `lease_token`, `lease_expires_at` and `worker_id` become
  `None`.
* **holds the lease**: the job is `running` and its `lease_token` equals the given
  token. Unknown ids never hold a lease.

Text compares byte for byte: ids, types, queues, unique keys, schedule names and
worker ids are equal only when they are the same string (no folding of case,
accents, Unicode normalisation or trailing spaces, which many databases do by
default), and any Unicode text can be stored. An id, queue or type that no job can
have (a lone surrogate or NUL, which `JobQueue` refuses at enqueue) is simply not
found: `JobNotFound` from `get`, `cancel` and `retry`, `[]` from `list_jobs`.

The reusable conformance suite in `dbjobq.testing` checks every rule written here.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from dbjobq import _clock
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup
from dbjobq.registry import WorkerInfo
from dbjobq.storage.capabilities import Capabilities, declared_for, derived
from dbjobq.storage.optional import OptionalMethods

__all__ = ["Capabilities", "Storage"]

LEASE_EXPIRED = "lease expired: worker {} stopped heartbeating"
"""`last_error` of a job taken back by `rescue_expired`; `{}` is the worker id."""
WORKER_GONE = "worker {} is gone: rescued without waiting for its lease to expire"
"""`last_error` of a job taken back by `rescue_workers`; `{}` is the worker id."""

_EVER = 100 * 365 * 24 * 3600.0  # seconds: "seen at any time" for list_workers


class Storage(OptionalMethods, abc.ABC):
    """Persists jobs. Each method is atomic: one transaction, no partial effects.

    Subclasses implement the abstract methods, may override the defaulted ones for
    speed, and declare what else they offer in `capabilities`.

    Errors from the underlying store are raised as `dbjobq.errors.StorageError`
    (with the original exception as `__cause__`), and the operation had no effect.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = declared_for(cls, base=Storage)  # TypeError if it cannot hold
        if declared is not None:
            # A class attribute, as the owner declared it (the base's is a property).
            type.__setattr__(cls, "capabilities", declared)

    @property
    def capabilities(self) -> Capabilities:
        """What this backend offers beyond the required methods (see `Capabilities`).

        Declare it in a backend as a class attribute (`capabilities =
        Capabilities(release=True, ...)`, checked against the methods the class
        overrides when the class is defined) or as a property, when it depends on
        the store. `Worker`, `JobQueue` and the conformance suite read this and
        nothing else to decide whether an optional feature is there.

        The default works it out from which optional methods the class overrides
        (and a `claims_ahead` attribute), for backends written before
        `Capabilities` existed: they keep working unchanged.
        """
        return derived(self, base=Storage)

    # -- required: storing and running jobs ------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        """Store new `pending` jobs, all in one transaction.

        A job is due at `NewJob.run_at` if set, else `NewJob.delay` seconds after the
        storage's current time. `attempts` starts at 0; `created_at` and `updated_at`
        are the current time. `max_retries` and `timeout` may be `None` (the
        handler's value applies when the job runs): they are read back as `None`.

        A job with a `unique_key` is not stored when an unfinished (`waiting`,
        `pending` or `running`) job with the same key exists: that job's id is
        returned in its place. The same applies between jobs of one batch: the
        first one wins.

        A backend with `Capabilities.unique_rules` also honours two fields of a
        job with a `unique_key` (`JobQueue` sends them to no other backend):

        * `unique_for`: when no unfinished job holds the key, a job with the key
          that finished (`completed`, `failed` or `cancelled`) less than
          `unique_for` seconds before now holds it (the latest finished, if
          several did).
        * `on_conflict`, what a job met by a holder does: `"return"` the holder's
          id, as above; `"raise"` `DuplicateJobError(unique_key, holder_id)` and
          store nothing of the call (the whole batch is rolled back); `"replace"`
          the holder's `payload`, `concurrency_key` (with the job's, `None` too)
          and `run_at` (as for a new job: `run_at`, else now plus `delay`), with
          `updated_at = now`, if the holder is `pending` or `waiting`; a running
          or finished holder is left as it is. The holder's id is returned
          either way.

        Concurrent enqueues of one key, in any process, still leave one holder:
        each sees the others' committed jobs, and only one of them inserts.

        A job whose id is already stored is not stored again and its id is returned:
        a call retried after a lost commit acknowledgement must not duplicate jobs.
        This holds whatever became of the job since: finished, with its
        `unique_key` held by another job by now, it still returns its own id.

        Jobs of one call become due in the order given: each job's `run_at` (for
        equal `run_at` or `delay`) is equal to or later than the previous one's,
        and ties are broken by id, so they are claimed in that order.

        Jobs with `depends_on` are only given to a backend with
        `Capabilities.workflows`; see "Workflows" below for their rules.

        Args:
            jobs: Validated jobs with their ids already assigned.

        Returns:
            One id per input job, in order: the given id (stored now or before), or
            the id of the existing job that holds the same `unique_key`.

        Raises:
            DuplicateJobError: If a job with `on_conflict="raise"` met a holder
                (nothing of the call is stored).
        """

    @abc.abstractmethod
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
        """Claim up to `limit` due jobs for one worker.

        A job is due when it is `pending`, `run_at <= now`, its queue is in `queues`
        and, unless `types` is `None`, its type is in `types`. Jobs are taken by
        `priority` (highest first), then `run_at`, then `id`: first in, first out
        within a priority. With `newest_first`, the order within a priority is
        reversed (latest `run_at` first, then the highest `id`): last in, first out.
        Priority still comes first.

        `newest_first` is optional for a backend: workers pass it only when they
        were created with `lifo=True`, and such a worker refuses to start on a
        backend whose capabilities do not include `newest_first`. A backend that
        takes it declares `Capabilities(newest_first=True)`; one that does not may
        leave the parameter out of its signature.

        Each claimed job becomes `running` with `attempts + 1`, `worker_id` set,
        `started_at = now`, `lease_expires_at = now + lease_seconds`, `progress` and
        `progress_message` cleared, and a fresh `lease_token` that no earlier claim
        of the job has had. Two concurrent callers never claim the same job, even
        through different storage objects on the same store.

        Returns:
            The claimed jobs as stored after the claim, in claim order; an empty
            list when nothing is due, `queues` is empty, `types` is empty or `limit`
            is below 1.
        """

    @abc.abstractmethod
    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        """Extend a lease to `now + lease_seconds`.

        Returns:
            `True` if the job is `running` under `token` and the lease was extended;
            `False` (and no change) if the lease is gone: the job was rescued,
            cancelled, finished or claimed again.
        """

    @abc.abstractmethod
    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        """Record a running job's progress.

        Returns:
            `True` if stored; `False` (and no change) if `token` no longer holds the
            lease.
        """

    @abc.abstractmethod
    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        """Mark a job `completed` and store its JSON `result`.

        Only the holder of the lease can do this. An expired lease that nobody has
        rescued yet still counts. Sets `finished_at` and `updated_at`, clears the
        lease.

        Returns:
            `True` if recorded; `False` (and no change) if `token` does not hold
            the job, which is how a worker that lost its lease learns that its
            outcome must be discarded.
        """

    @abc.abstractmethod
    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        """Record a failed attempt; same lease rule as `complete`.

        With `retry_in` set, the job goes back to `pending` with
        `run_at = now + retry_in` (and `finished_at` stays `None`). With
        `retry_in=None` it becomes `failed` with `finished_at = now`. Either way
        `last_error` becomes `error` and the lease is cleared.

        Returns:
            `True` if recorded; `False` (and no change) if `token` does not hold
            the job.
        """

    # -- required: reading and managing jobs -----------------------------------------------

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """Return the job with this id.

        Raises:
            JobNotFound: If there is none (also for an id no job can have).
        """

    @abc.abstractmethod
    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the Job field
        limit: int | None = 100,
        newest_first: bool = False,
    ) -> list[Job]:
        """Return jobs matching every given filter, oldest first (by id).

        A `queue` or `type` that no job can have matches nothing: `[]`.

        Args:
            status: Only jobs in this state (a `JobStatus` or its string).
            queue: Only jobs in this queue.
            type: Only jobs of this type.
            limit: At most this many; `None` for all.
            newest_first: Newest first (by id, descending) instead, so that `limit`
                keeps the latest jobs. `JobQueue` passes it only when `True`: a
                backend written before it keeps working for oldest-first lists.
        """

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Move a `pending` or `running` job to `cancelled`, with `finished_at = now`.

        The lease is cleared, so a running job's worker learns at its next heartbeat
        that it lost the job.

        Returns:
            `True` if cancelled; `False` if the job was already finished.

        Raises:
            JobNotFound: If there is no such job.
        """

    @abc.abstractmethod
    def retry(self, job_id: str) -> bool:
        """Move a `failed` or `cancelled` job back to `pending`, due now.

        `attempts` restarts at 0; `finished_at`, `result`, `progress` and
        `progress_message` are cleared and `last_error` is kept.

        Returns:
            `True` if requeued; `False` if the job is not failed or cancelled, or if
            another unfinished job now holds its `unique_key`.

        Raises:
            JobNotFound: If there is no such job.
        """

    @abc.abstractmethod
    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        """Delete finished jobs that finished more than `older_than` seconds ago.

        Only jobs whose status is in `statuses` are deleted; unfinished states in
        `statuses` are ignored. `older_than` may be zero or negative: everything
        finished before `now - older_than`. With `limit`, at most that many jobs are
        deleted (those that finished first), so that callers can purge in short
        transactions.

        Returns:
            How many jobs were deleted.
        """

    # -- required: periodic ticks and the worker registry ----------------------------------

    @abc.abstractmethod
    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        """Enqueue the job of one tick of a periodic schedule, at most once per tick.

        In one transaction: if no tick of `schedule` later than or equal to `tick`
        has been recorded, record `tick` as the schedule's latest and enqueue `job`
        (with `enqueue`'s rules). Otherwise do nothing. However many workers call
        this for the same tick, one job results.

        Returns:
            `True` if the job was enqueued (or its `unique_key` matched an unfinished
            job), `False` if this tick or a later one was already recorded.
        """

    @abc.abstractmethod
    def last_tick(self, schedule: str) -> datetime | None:
        """The latest tick recorded for `schedule`, or `None` if none was."""

    @abc.abstractmethod
    def save_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the record of worker `info.id`, with `last_seen = now`."""

    @abc.abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Delete the record of a worker; nothing happens if there is none."""

    @abc.abstractmethod
    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        """Workers whose `last_seen` is at most `seen_within` seconds ago, by id."""

    # -- defaulted: built on the required methods; override for speed ----------------------

    def initialize(self) -> None:
        """Create tables or other structures if missing.

        Idempotent and safe to call from many processes at once. The default does
        nothing.
        """

    def close(self) -> None:
        """Release connections and other resources. The default does nothing."""

    def schema_exists(self) -> bool:
        """Whether the tables (or other structures) that `initialize` makes are there.

        Looks without creating anything: read-only tools such as `dbjobq stats` call
        it first, so that a mistyped database URL is reported instead of silently
        getting an empty queue of its own. Optional: the default, for backends with
        nothing to create, returns `True`.

        Raises:
            StorageError: If the store cannot be reached.
        """
        return True

    def now(self) -> datetime:
        """The storage's current time (aware, UTC): the clock leases and schedules use.

        The default is the host's clock; SQL backends ask the database.
        """
        return _clock.now()

    def complete_many(self, outcomes: Sequence[tuple[str, str, Any]]) -> list[bool]:
        """Complete several jobs at once: `complete` for each `(job_id, token, result)`.

        Workers that run short jobs record their outcomes in batches through this.
        The default calls `complete` once per job; a backend may override it to write
        them in one transaction. Either way each job follows `complete`'s rules on
        its own: a job whose lease is gone is left as it is, and does not stop the
        others from being recorded.

        Outcomes are taken in order, as one `complete` after another: the same
        lease given twice is recorded once, with the first result, and its later
        occurrences return `False`.

        Returns:
            One flag per outcome, in order, as `complete` returns it.
        """
        return [self.complete(job_id, token, result=result) for job_id, token, result in outcomes]

    def rescue_expired(self, *, retry_in: float = 0.0) -> int:
        """Recover `running` jobs whose lease has expired (`lease_expires_at <= now`).

        A job with retries left (`attempts <= max_retries`) goes back to `pending`,
        due `retry_in` seconds from now; one without becomes `failed`. A job whose
        `max_retries` is `None` (its handler's value, which the storage does not
        know) always goes back to `pending`, its lost attempt counted; the worker
        that claims it next fails it at once if its handler allows no more. In both
        cases the lease is cleared (so the old holder's `complete`/`fail` return
        `False`) and `last_error` says that the lease expired, naming the worker that
        held it. A failed job gets `finished_at = now`.

        The default lists the running jobs and fails each expired one through
        `fail` with its own token (so two rescuers never take one job back twice).
        It takes two steps: a lease renewed between them may still be taken back,
        which its worker learns at its next heartbeat. Override it to do it in one.

        Returns:
            How many jobs were rescued.
        """
        now = self.now()
        return self._take_back(
            (j for j in self._running() if j.lease_expires_at and j.lease_expires_at <= now),
            LEASE_EXPIRED,
            retry_in,
        )

    def rescue_workers(self, worker_ids: Collection[str], *, retry_in: float = 0.0) -> int:
        """Recover the `running` jobs held by these workers now, whatever their leases.

        For workers known to be dead (a worker that finds, on its own host, the
        registry record of a process that no longer exists), so that their jobs need
        not wait for their leases to expire. Each job is rescued exactly as
        `rescue_expired` would: back to `pending`, due `retry_in` seconds from now,
        with retries left, else `failed`; the attempt counts, the lease is cleared
        and `last_error` names the worker. Jobs of other workers are left alone.

        Workers call it only when `capabilities.rescue_workers` says so; otherwise
        they leave such jobs to `rescue_expired` once their leases run out. The
        default lists the running jobs and fails those of these workers through
        `fail`, as the default `rescue_expired` does.

        Returns:
            How many jobs were rescued.
        """
        gone = set(worker_ids)
        return self._take_back(
            (job for job in self._running() if job.worker_id in gone), WORKER_GONE, retry_in
        )

    def _running(self) -> list[Job]:
        return self.list_jobs(status=JobStatus.RUNNING, limit=None)

    def _take_back(self, jobs: Iterable[Job], why: str, retry_in: float) -> int:
        """Retry or fail jobs whose worker is lost, each under its own lease token."""
        taken = 0
        for job in jobs:
            # max_retries None is the handler's to apply: always back to pending.
            left = job.max_retries is None or job.attempts <= job.max_retries
            error = why.format(job.worker_id)
            delay = retry_in if left else None
            taken += self.fail(job.id, job.lease_token or "", error=error, retry_in=delay)
        return taken

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        """Count jobs per `(queue, status)`; pairs with no job are left out.

        Args:
            finished_within: Count only jobs whose `finished_at` is at most this
                many seconds ago (for throughput); `None` counts every job.

        The default counts what one `list_jobs(limit=None)` returns.
        """
        since = None
        if finished_within is not None:
            since = self.now() - timedelta(seconds=finished_within)
        counts: dict[tuple[str, JobStatus], int] = {}
        for job in self.list_jobs(limit=None):
            if since is None or (job.finished_at is not None and job.finished_at >= since):
                key = (job.queue, JobStatus(job.status))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def pending_summary(self) -> list[PendingGroup]:
        """Summarise pending jobs per `(queue, type)`.

        Returns:
            One group per pair that has pending jobs: how many, and the earliest
            `run_at`, ordered by queue, then type. The default groups what one
            `list_jobs(status="pending", limit=None)` returns.
        """
        groups: dict[tuple[str, str], list[datetime]] = {}
        for job in self.list_jobs(status=JobStatus.PENDING, limit=None):
            groups.setdefault((job.queue, job.type), []).append(job.run_at)
        return [
            PendingGroup(queue, job_type, len(times), min(times))
            for (queue, job_type), times in sorted(groups.items())
        ]

    def prune_workers(self, *, older_than: float) -> int:
        """Delete worker records not seen for more than `older_than` seconds.

        The default lists every record with `list_workers` and removes the stale
        ones with `remove_worker`. It takes two steps: a worker that saves its
        record between them may lose it until its next save, a few seconds later.

        Returns:
            How many were deleted.
        """
        cutoff = self.now() - timedelta(seconds=older_than)
        every = self.list_workers(seen_within=_EVER)
        stale = [w.id for w in every if w.last_seen is not None and w.last_seen < cutoff]
        for worker_id in stale:
            self.remove_worker(worker_id)
        return len(stale)
