"""JobQueue: the facade your application talks to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, overload

from dbjobq._checks import (
    check_int,
    check_name,
    check_seconds,
    check_str,
)
from dbjobq._enqueue import EnqueueMethods
from dbjobq._validate import (
    checked_filter,
    checked_handler,
    checked_schedule,
    finished_statuses,
)
from dbjobq._waiting import WaitMethods, Waits
from dbjobq._wakeups import Wakeups
from dbjobq.context import JobContext
from dbjobq.errors import ConfigurationError, InvalidJobError
from dbjobq.events import H, Hooks
from dbjobq.explain import Explanation, explain
from dbjobq.flow import Concurrency, RateLimit
from dbjobq.handlers import Handler, HandlerRegistry
from dbjobq.job import Job, JobSpec, JobStatus
from dbjobq.periodic import Schedule
from dbjobq.registry import WorkerInfo
from dbjobq.retry import RetryPolicy
from dbjobq.stats import Stats, collect_stats
from dbjobq.storage.base import Storage
from dbjobq.workflow import WorkflowMethods

__all__ = ["DEFAULT_URL", "Handler", "JobQueue"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///jobs.db"
"""The storage used by `JobQueue()` when none is given: a SQLite file in the current
directory."""


F = TypeVar("F", bound=Callable[..., Any])


class JobQueue(EnqueueMethods, WorkflowMethods, WaitMethods):
    """Enqueue jobs, register their handlers, and inspect or manage them.

    A `JobQueue` is thread-safe; share one per application. Workers (`Worker`) take
    jobs from it. The storage's tables are created on first use.

    Args:
        storage: A `Storage` backend, or a database URL or SQLAlchemy `Engine` for
            `SQLAlchemyStorage`. Defaults to `sqlite:///jobs.db` in the current
            directory.
        default_queue: Queue name used when `enqueue` gets none.
        max_retries: Retries allowed after a failed first attempt, for jobs that do
            not set their own and whose handler here has no `max_retries`. Applied
            when the job runs, by the queue object whose worker runs it.
        retry_policy: Back-off between attempts for handlers without their own.
        max_payload_bytes: Largest accepted payload (as UTF-8 JSON); `None` for no
            limit. The same limit applies to `meta` and to handler results.

    Raises:
        ConfigurationError: If the URL is invalid or an option is out of range.
    """

    def __init__(
        self,
        storage: Storage | str | Any | None = None,
        *,
        default_queue: str = "default",
        max_retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        max_payload_bytes: int | None = 1_048_576,
    ) -> None:
        if not isinstance(storage, Storage):
            # A URL, a sqlalchemy URL or Engine: SQLAlchemyStorage says if it is none.
            from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

            storage = SQLAlchemyStorage(DEFAULT_URL if storage is None else storage)
        try:
            self.default_queue = check_name(default_queue, "default_queue")
            max_retries = check_int(max_retries, "max_retries", 0, 1000)
        except InvalidJobError as error:
            raise ConfigurationError(str(error)) from None
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ConfigurationError(
                f"retry_policy must be a RetryPolicy or None, got {type(retry_policy).__name__}"
            )
        if max_payload_bytes is not None and (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 1
        ):
            raise ConfigurationError("max_payload_bytes must be a positive int or None")
        self.storage = storage
        self.max_payload_bytes = max_payload_bytes
        self.registry = HandlerRegistry(max_retries, retry_policy or RetryPolicy())
        """The handlers and schedules, and what a failed attempt means (workers ask it)."""
        self.hooks = Hooks()
        """The hooks registered with `on`; workers run them."""
        self.wakeups = Wakeups(storage)
        """The idle-worker signalling of this queue's workers in this process."""
        self.waits = Waits.of(storage)
        """The jobs waited on (`wait`) in this process, shared by the queues on `storage`."""
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JobQueue({self.storage!r})"

    @property
    def max_retries(self) -> int:
        """Retries of jobs that set none and whose handler here sets none."""
        return self.registry.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self.registry.max_retries = value

    @property
    def retry_policy(self) -> RetryPolicy:
        """Back-off between attempts for handlers without their own."""
        return self.registry.retry_policy

    @retry_policy.setter
    def retry_policy(self, value: RetryPolicy) -> None:
        self.registry.retry_policy = value

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the storage (its connections). Stop workers first."""
        self.storage.close()

    def initialize(self) -> None:
        """Create the storage's tables now rather than on first use (idempotent).

        Raises:
            StorageError: If the storage cannot be reached.
        """
        with self._ready_lock:
            if not self._ready:
                self.storage.initialize()
                self._ready = True

    def _store(self) -> Storage:
        if not self._ready:
            self.initialize()
        return self.storage

    # -- handlers ---------------------------------------------------------------------

    def handler(
        self,
        type: str,  # noqa: A002 - the job field's name
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of a job type.

        The function takes one argument, a `JobContext`, and returns a JSON value
        (stored as `Job.result`) or `None`. It may be an `async def` function.

        ```python
        @queue.handler("send_email", max_retries=5, timeout=60)
        def send_email(ctx: JobContext) -> dict:
            ...
        ```

        Args:
            type: The job type.
            max_retries: Retries for jobs of this type, applied when they run
                wherever they were enqueued (a job's own `max_retries` wins).
            timeout: Seconds an attempt may run before it fails with
                `JobTimeoutError`, applied when the job runs (a job's own
                `timeout` wins).
            retry_policy: Back-off for this type instead of the queue's.
            concurrency: At most `limit` jobs per concurrency key run at once,
                across every worker on the database (see `Concurrency`).
            rate_limit: At most `count` jobs (per key) start in any `per` seconds,
                across every worker on the database (see `RateLimit`).

        Raises:
            ConfigurationError: If the type already has a handler, an option is
                invalid, or the storage cannot enforce a limit
                (`Capabilities.limits`).
        """

        def register(fn: F) -> F:
            self.register(
                type,
                fn,
                max_retries=max_retries,
                timeout=timeout,
                retry_policy=retry_policy,
                concurrency=concurrency,
                rate_limit=rate_limit,
            )
            return fn

        return register

    def register(
        self,
        type: str,  # noqa: A002 - the job field's name
        fn: Callable[[JobContext], Any],
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
    ) -> Handler:
        """Register `fn` as the handler of `type`; the non-decorator form of `handler`.

        Returns:
            The registered `Handler`.

        Raises:
            ConfigurationError: If the type already has a handler, an option is
                invalid, or the storage cannot enforce a limit
                (`Capabilities.limits`).
        """
        handler = checked_handler(
            type, fn, max_retries, timeout, retry_policy, concurrency, rate_limit
        )
        if handler.limits is not None and not self.storage.capabilities.limits:
            raise ConfigurationError(
                f"{self.storage.__class__.__name__} cannot enforce concurrency or rate limits "
                f"(Capabilities.limits), which the handler of {handler.type!r} asks for"
            )
        return self.registry.add(handler)

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The registered handlers by job type (read-only view)."""
        return self.registry.handlers

    # -- periodic jobs --------------------------------------------------------------------

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        name: str | None = None,
        type: str | None = None,  # noqa: A002 - the job field's name
        tz: str = "UTC",
        payload: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a handler and run it on a schedule.

        ```python
        @queue.periodic("0 3 * * *", tz="Europe/Berlin")   # every night at 03:00
        def nightly_report(ctx: JobContext) -> None: ...

        @queue.periodic(every=timedelta(minutes=5))
        def refresh_cache(ctx: JobContext) -> None: ...
        ```

        Each tick enqueues one job of type `type` (by default the schedule's name,
        by default the function's name), however many workers run; see
        `dbjobq.periodic` for how ticks are chosen and caught up. Workers that handle
        the type and the queue enqueue the ticks, so run at least one.

        Args:
            cron: A five-field cron expression (needs the `cron` extra).
            every: Or a fixed interval, seconds or a `timedelta` (at least 1 s);
                ticks fall on multiples of it counted from 1970-01-01 UTC.
            name: The schedule's name, unique per queue object.
            type: The job type; the function becomes its handler unless that type
                already has one.
            tz: IANA time zone for `cron`.
            payload: Payload of each job.
            queue: Queue of each job.
            priority: Priority of each job.
            max_retries: Retries of each job.
            timeout: Timeout of each attempt.
            unique_key: Set it to skip a tick while the previous tick's job is
                still unfinished.

        Raises:
            ConfigurationError: If the schedule is invalid or its name is taken.
        """

        def register(fn: F) -> F:
            schedule_name = name or type or fn.__name__
            job_type = type or schedule_name
            if self.registry.get(job_type) is None:
                self.register(job_type, fn, max_retries=max_retries, timeout=timeout)
            self.schedule(
                job_type,
                cron=cron,
                every=every,
                name=schedule_name,
                tz=tz,
                payload=payload,
                queue=queue,
                priority=priority,
                max_retries=max_retries,
                timeout=timeout,
                unique_key=unique_key,
            )
            return fn

        return register

    def schedule(
        self,
        type: str,  # noqa: A002 - the job field's name
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        name: str | None = None,
        tz: str = "UTC",
        payload: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
    ) -> Schedule:
        """Enqueue a job of `type` on a schedule; the non-decorator form of `periodic`.

        Returns:
            The `Schedule`.

        Raises:
            ConfigurationError: If the schedule is invalid or its name is taken.
        """
        jobs = JobSpec(
            type=type,
            payload=payload,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            unique_key=unique_key,
            timeout=timeout,
        )
        schedule = checked_schedule(
            jobs, name, cron, every, tz, self.default_queue, self.max_payload_bytes
        )
        return self.registry.add_schedule(schedule)

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """The schedules by name (read-only view)."""
        return self.registry.schedules

    # -- events and workers ------------------------------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, hook: H) -> H: ...

    def on(self, event: str, hook: H | None = None) -> H | Callable[[H], H]:
        """Run `hook(event)` whenever `event` happens in any worker of this queue.

        Use it directly (`queue.on("job:failed", alert)`) or as a decorator
        (`@queue.on("job:failed")`). See `dbjobq.events` for the events and what
        each carries.

        Raises:
            ConfigurationError: If the event name is unknown.
        """
        if hook is None:
            return lambda fn: self.hooks.on(event, fn)
        return self.hooks.on(event, hook)

    def list_workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        """Live workers of every process, with their queues, types and current job.

        A worker is listed if it saved its record in the last `seen_within` seconds;
        running workers do so every few seconds.

        Raises:
            StorageError: If the storage cannot be reached.
        """
        return self._store().list_workers(seen_within=seen_within)

    def stats(self) -> Stats:
        """A snapshot of the queue for monitoring.

        Per queue: counts per status, the age of the oldest due job, throughput over
        the last 1, 5 and 15 minutes, and pending job types that no live worker
        handles; and the live workers.

        Raises:
            StorageError: If the storage cannot be reached.
        """
        return collect_stats(self._store())

    # -- inspect and manage -------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        """Return the job with this id.

        Raises:
            InvalidJobError: If `job_id` is not a `str`.
            JobNotFound: If there is no such job (or it was purged, or the id is a
                string no job can have, such as one with a lone surrogate).
            StorageError: If the storage cannot be reached.
        """
        return self._store().get(check_str(job_id, "job id"))

    def explain(self, job_id: str) -> Explanation:
        """Why the job is where it is: what holds a pending job back, or what happened.

        A pending job may be not due yet, in a paused queue, in a queue or of a type
        no live worker takes, held back by its handler's concurrency or rate limit
        (the handlers registered here decide: without them limits are not checked),
        or behind other due jobs; a running job's worker may have stopped
        heartbeating. See `dbjobq.explain` for every reason's code and detail.

        Raises:
            InvalidJobError: If `job_id` is not a `str`.
            JobNotFound: If there is no such job.
            StorageError: If the storage cannot be reached.
        """
        return explain(self._store(), self.registry, check_str(job_id, "job id"))

    def list_jobs(
        self,
        status: JobStatus | str | None = None,
        *,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - the job field's name
        limit: int | None = 100,
        newest_first: bool = False,
        correlation_id: str | None = None,
    ) -> list[Job]:
        """Return jobs, oldest first, filtered by status, queue and type.

        Unlike the `get_*_jobs` helpers, which return every job in their state, this
        browsing call stops at 100 jobs unless told otherwise.

        Args:
            status: A `JobStatus` or its string (`"failed"`, ...).
            queue: Only this queue.
            type: Only this job type.
            limit: At most this many (`None` for all).
            newest_first: Newest first instead, so that `limit` keeps the latest
                (the last 20 failures, say).
            correlation_id: Only jobs whose `meta["correlation_id"]` is this
                string: a job and what its handlers enqueued with
                `JobContext.enqueue` (needs `Capabilities.workflows`).

        Raises:
            InvalidJobError: If `status` is not a known status, `queue` or `type` is
                not a `str`, or `limit` is negative. (A `queue` or `type` that no job
                can have, such as one with a lone surrogate, finds nothing.)
            StorageError: If the storage cannot be reached.
        """
        state = checked_filter(status, queue, type, limit)
        extra: dict[str, Any] = {"newest_first": True} if newest_first else {}
        if correlation_id is not None:
            extra["correlation_id"] = check_str(correlation_id, "correlation_id")
            storage = self._workflow_storage()
        else:
            storage = self._store()
        return storage.list_jobs(status=state, queue=queue, type=type, limit=limit, **extra)

    def get_pending_jobs(self, limit: int | None = None) -> list[Job]:
        """Jobs waiting to run, oldest first: all of them unless `limit` is given."""
        return self.list_jobs(JobStatus.PENDING, limit=limit)

    def get_running_jobs(self, limit: int | None = None) -> list[Job]:
        """Jobs a worker holds right now, oldest first: all of them unless `limit` is given."""
        return self.list_jobs(JobStatus.RUNNING, limit=limit)

    def get_completed_jobs(self, limit: int | None = None) -> list[Job]:
        """Jobs that completed, oldest first: all of them unless `limit` is given."""
        return self.list_jobs(JobStatus.COMPLETED, limit=limit)

    def get_failed_jobs(self, limit: int | None = None) -> list[Job]:
        """Jobs that failed for good, oldest first: all of them unless `limit` is given."""
        return self.list_jobs(JobStatus.FAILED, limit=limit)

    def counts(self) -> dict[str, dict[str, int]]:
        """Job counts per queue and status, e.g. `{"default": {"pending": 3, ...}}`.

        Every status appears for every queue that has jobs, zeros included.
        """
        raw = self._store().count_jobs()
        result: dict[str, dict[str, int]] = {}
        for (queue, status), n in sorted(raw.items()):
            per_queue = result.setdefault(queue, {s.value: 0 for s in JobStatus})
            per_queue[JobStatus(status).value] += n
        return result

    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting, pending or running job.

        A running job's handler sees `JobContext.cancelled` set at its worker's next
        heartbeat, and whatever it returns is discarded. The jobs that wait for it
        (`depends_on`) are cancelled too, unless they run anyway.

        Returns:
            `True` if the job was cancelled, `False` if it had already finished.

        Raises:
            InvalidJobError: If `job_id` is not a `str`.
            JobNotFound: If there is no such job.
            StorageError: If the storage cannot be reached.
        """
        cancelled = self._store().cancel(check_str(job_id, "job id"))
        if cancelled:  # the jobs that wait for it may be cancelled with it: wake every waiter
            self.waits.finished_anywhere()
        return cancelled

    def retry(self, job_id: str) -> bool:
        """Run a failed or cancelled job again: back to pending, due now, attempts reset.

        Returns:
            `True` if requeued; `False` if the job is not failed or cancelled, or an
            unfinished job holds its `unique_key`.

        Raises:
            InvalidJobError: If `job_id` is not a `str`.
            JobNotFound: If there is no such job.
            StorageError: If the storage cannot be reached.
        """
        done = self._store().retry(check_str(job_id, "job id"))
        if done:
            job = self.storage.get(job_id)
            self.wakeups.notify({(job.queue, job.type)}, 1)
        return done

    def pause(self, queue: str) -> bool:
        """Pause a queue: no worker, in any process, claims its jobs until `resume`.

        Stored in the database, so every worker on it honours the pause from its
        next poll. Jobs already running finish; enqueueing into a paused queue
        still works, and its jobs wait (`pending`, no attempt used).

        Returns:
            `True` if the queue was paused now; `False` if it was paused already.

        Raises:
            InvalidJobError: If `queue` is not a valid queue name.
            ConfigurationError: If the storage cannot pause queues
                (`Capabilities.pauses`).
        """
        return self._pauses().pause_queue(check_name(queue, "queue"))

    def resume(self, queue: str) -> bool:
        """Let workers claim from a paused queue again.

        Returns:
            `True` if the queue was paused; `False` if it was not.

        Raises:
            InvalidJobError: If `queue` is not a valid queue name.
            ConfigurationError: If the storage cannot pause queues.
        """
        return self._pauses().resume_queue(check_name(queue, "queue"))

    def paused_queues(self) -> set[str]:
        """The names of the paused queues (an empty set where pausing is not offered)."""
        storage = self._store()
        return storage.paused_queues() if storage.capabilities.pauses else set()

    def _pauses(self) -> Storage:
        storage = self._store()
        if not storage.capabilities.pauses:
            raise ConfigurationError(f"{type(storage).__name__} cannot pause queues")
        return storage

    def purge(
        self,
        older_than: float | timedelta,
        *,
        statuses: Iterable[JobStatus | str] = (JobStatus.COMPLETED, JobStatus.CANCELLED),
        batch_size: int = 1000,
    ) -> int:
        """Delete finished jobs that finished more than `older_than` ago.

        Args:
            older_than: Age in seconds or as a `timedelta`.
            statuses: Which finished states to delete; failed jobs are kept unless
                asked for, since they usually need a look first.
            batch_size: Jobs deleted per transaction.

        Returns:
            How many jobs were deleted.

        Raises:
            InvalidJobError: If the age is negative or a status is unknown or
                unfinished.
            StorageError: If the storage cannot be reached.
        """
        age = check_seconds(older_than, "older_than")
        check_int(batch_size, "batch_size", 1, 1_000_000)
        states = finished_statuses(statuses)
        storage = self._store()
        total = 0
        # Short transactions: a big delete would hold locks, and on SQLite the whole
        # file, for as long as it takes.
        while True:
            deleted = storage.purge(statuses=states, older_than=age, limit=batch_size)
            total += deleted
            if deleted < batch_size:
                return total
