"""Handlers and schedules of a queue, and what a failed attempt of their jobs means.

A `JobQueue` keeps one `HandlerRegistry`; its workers ask it which types they can
run, which handler runs a job, with which `max_retries` and `timeout`, and, after a
failed attempt, whether and when the job runs again (`HandlerRegistry.decide`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable, KeysView, Mapping
from typing import Any

from dbjobq._checks import check_seconds
from dbjobq.context import JobContext
from dbjobq.errors import ConfigurationError, InvalidJobError, JobError, PayloadError
from dbjobq.flow import Concurrency, Limits, RateLimit
from dbjobq.job import Job
from dbjobq.payload import clean_text
from dbjobq.periodic import Schedule
from dbjobq.retry import RetryPolicy

__all__ = ["Decision", "Handler", "HandlerRegistry"]

logger = logging.getLogger("dbjobq.queue")


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its per-type policy (see `JobQueue.handler`)."""

    type: str
    """The job type it handles."""
    fn: Callable[[JobContext], Any]
    """The function; a coroutine function runs on the worker's event loop."""
    max_retries: int | None
    """`max_retries` of the jobs of this type that do not set their own, wherever they
    were enqueued; `None`: the queue's `max_retries`."""
    timeout: float | None
    """Seconds an attempt may run; a job's own `timeout` takes precedence."""
    retry_policy: RetryPolicy | None
    """Back-off between attempts; `None` uses the queue's policy."""
    concurrency: Concurrency | None = None
    """At most so many jobs of one concurrency key run at once; `None`: no limit."""
    rate_limit: RateLimit | None = None
    """At most so many jobs (of one rate key) start per window; `None`: no limit."""

    @property
    def limits(self) -> Limits | None:
        """What `Storage.claim` enforces for this type; `None` without limits."""
        if self.concurrency is None and self.rate_limit is None:
            return None
        return Limits(self.concurrency, self.rate_limit)

    @property
    def is_async(self) -> bool:
        """Whether `fn` is a coroutine function."""
        return inspect.iscoroutinefunction(self.fn)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What a failed attempt means: the error text to store, and when to retry."""

    error: str
    """The error as stored on the job: its summary line, then the traceback."""
    retry_in: float | None
    """Seconds until the next attempt; `None`: the job fails for good."""


class HandlerRegistry:
    """The handlers and schedules of one queue, with the queue-wide defaults.

    Args:
        max_retries: Retries of jobs that set none and whose handler sets none.
        retry_policy: Back-off of handlers without their own.
    """

    def __init__(self, max_retries: int, retry_policy: RetryPolicy) -> None:
        self.max_retries = max_retries
        self.retry_policy = retry_policy
        self._handlers: dict[str, Handler] = {}
        self._schedules: dict[str, Schedule] = {}

    def copy(self) -> HandlerRegistry:
        """A registry with the same defaults, handlers and schedules."""
        other = HandlerRegistry(self.max_retries, self.retry_policy)
        other._handlers = dict(self._handlers)
        other._schedules = dict(self._schedules)
        return other

    # -- registration ---------------------------------------------------------------

    def add(self, handler: Handler) -> Handler:
        """Register a handler (checked by `JobQueue.register`) under its type.

        Raises:
            ConfigurationError: If the type already has a handler.
        """
        if handler.type in self._handlers:
            raise ConfigurationError(f"job type {handler.type!r} already has a handler")
        self._handlers[handler.type] = handler
        return handler

    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Register a schedule under its name.

        Raises:
            ConfigurationError: If the name is taken.
        """
        if schedule.name in self._schedules:
            raise ConfigurationError(f"a schedule named {schedule.name!r} exists already")
        self._schedules[schedule.name] = schedule
        return schedule

    # -- lookup -----------------------------------------------------------------------

    def get(self, job_type: str) -> Handler | None:
        """The handler of `job_type`, or `None`."""
        return self._handlers.get(job_type)

    def types(self) -> KeysView[str]:
        """The handled job types: a live view, not a copy (workers ask it per claim)."""
        return self._handlers.keys()

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The handlers by job type (a copy)."""
        return dict(self._handlers)

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """The schedules by name (a copy)."""
        return dict(self._schedules)

    # -- what a job runs with -----------------------------------------------------------

    def concurrency_of(self, job_type: str) -> Concurrency | None:
        """The `Concurrency` of the handler of `job_type` here, or `None`."""
        handler = self._handlers.get(job_type)
        return None if handler is None else handler.concurrency

    def limits(self, types: Iterable[str]) -> dict[str, Limits]:
        """The limits of those of `types` whose handlers have any (for a claim)."""
        found = {}
        for job_type in types:
            handler = self._handlers.get(job_type)
            if handler is not None and (limits := handler.limits) is not None:
                found[job_type] = limits
        return found

    def max_retries_of(self, job: Job) -> int:
        """The job's `max_retries` as run here: its own, else its handler's, else the default."""
        if job.max_retries is not None:
            return job.max_retries
        handler = self._handlers.get(job.type)
        if handler is not None and handler.max_retries is not None:
            return handler.max_retries
        return self.max_retries

    def timeout_of(self, job: Job) -> float | None:
        """The job's `timeout` as run here: its own, else its handler's."""
        if job.timeout is not None:
            return job.timeout
        handler = self._handlers.get(job.type)
        return None if handler is None else handler.timeout

    def effective(self, job: Job) -> Job:
        """The job with the `max_retries` and `timeout` it runs with filled in."""
        max_retries, timeout = self.max_retries_of(job), self.timeout_of(job)
        if max_retries == job.max_retries and timeout == job.timeout:
            return job
        return dataclasses.replace(job, max_retries=max_retries, timeout=timeout)

    def exhausted(self, job: Job) -> bool:
        """Whether `job` was claimed past its last allowed attempt.

        A job that leaves `max_retries` to its handler is rescued to `pending`
        whatever its attempts (the storage does not know the handler's value); the
        worker that claims it next settles it without running it.
        """
        # A first attempt never is: max_retries is at least 0 (the usual case, cheaply).
        return (
            job.attempts > 1
            and job.max_retries is None
            and job.attempts > self.max_retries_of(job) + 1
        )

    def first_retry_delay(self) -> float:
        """The back-off of a first retry: what a rescued job waits."""
        return self.retry_policy.delay(1)

    def decide(self, job: Job, error: BaseException, trace: str) -> Decision:
        """What a failed attempt means: the error text and the retry delay.

        Never raises: whatever the handler threw, the outcome must be recordable.
        """
        try:
            summary = f"{type(error).__name__}: {error}".rstrip(": ")
        except Exception:  # noqa: BLE001 - a broken __str__ must not lose the outcome
            summary = type(error).__name__
        text = clean_text(f"{summary}\n\n{trace}" if trace else summary)
        if isinstance(error, JobError) and not error.retryable:
            return Decision(text, None)
        if isinstance(error, PayloadError):
            return Decision(text, None)  # a bad result: running the job again will not fix it
        if job.attempts > self.max_retries_of(job):
            return Decision(text, None)
        handler = self._handlers.get(job.type)
        policy = (handler and handler.retry_policy) or self.retry_policy
        delay = policy.delay(job.attempts)
        if isinstance(error, JobError) and error.retry_in is not None:
            try:
                delay = check_seconds(error.retry_in, "JobError.retry_in")
            except InvalidJobError as bad:
                logger.warning("job %s (%s): ignoring %s", job.id, job.type, bad)
        return Decision(text, delay)
