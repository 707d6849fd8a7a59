"""Every exception dbjobq raises, in one place.

```text
DBJobQError                     root: `except DBJobQError` catches everything below
├── ConfigurationError          bad URL, missing driver, bad option (also ValueError)
├── InvalidJobError             bad enqueue argument (also ValueError and TypeError)
│   └── PayloadError            payload or result is not strict JSON, too big or too deep
├── DuplicateJobError           `on_conflict="raise"` met a job holding the unique key
├── JobNotFound                 no job with that id (also LookupError)
├── GroupNotFound               no group with that id (also LookupError)
├── StorageError                the database failed; the driver error is on __cause__
├── JobInterrupted              raised in a handler by `ctx.raise_if_cancelled()`
└── JobError                    raise from a handler to fail the attempt on purpose
    ├── JobValidationError      never retried: the input itself is wrong
    └── JobTimeoutError         recorded when a job outlives its timeout
```

Handlers may raise any exception; `JobError` only exists so that a handler can say
*how* it failed (retryable or not, retry after how long).
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "ConfigurationError",
    "DBJobQError",
    "DuplicateJobError",
    "GroupNotFound",
    "InvalidJobError",
    "JobError",
    "JobInterrupted",
    "JobNotFound",
    "JobTimeoutError",
    "JobValidationError",
    "PayloadError",
    "StorageError",
]


class DBJobQError(Exception):
    """Base class of every dbjobq error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigurationError(DBJobQError, ValueError):
    """dbjobq is configured wrongly: a bad database URL, a missing driver or a bad option.

    Raised when the object is built (`SQLAlchemyStorage(...)`, `Worker(...)`,
    `JobQueue.handler(...)`), before anything touches the database.
    """


class InvalidJobError(DBJobQError, ValueError, TypeError):
    """An argument to `JobQueue.enqueue` is wrong; nothing was written.

    It is both a `ValueError` (a negative delay, an empty type name) and a `TypeError`
    (a priority that is not an `int`), so code that catches either keeps working.
    """


class PayloadError(InvalidJobError):
    r"""A payload, `meta` or handler result is not strict JSON, or is too large or too deep.

    Strict JSON means: objects with string keys, arrays (`list`), strings of valid
    Unicode without `\u0000`, integers within 64 bits, finite floats, booleans and
    `None`. Tuples, sets, bytes, dates,
    `NaN` and `Infinity` are rejected rather than silently converted, so a handler
    always receives exactly what was enqueued.
    """


class JobNotFound(DBJobQError, LookupError):
    """No job has the given id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class GroupNotFound(DBJobQError, LookupError):
    """No group has the given id (`JobQueue.get_group`)."""

    def __init__(self, group_id: str) -> None:
        super().__init__(f"no group with id {group_id!r}")
        self.group_id = group_id


class DuplicateJobError(DBJobQError):
    """An enqueue with `on_conflict="raise"` met a job that holds its unique key.

    Nothing of the call was written. `job_id` is the id of the job that holds the
    key, `unique_key` the key.
    """

    def __init__(self, unique_key: str, job_id: str) -> None:
        super().__init__(f"job {job_id!r} already holds unique key {unique_key!r}")
        self.unique_key = unique_key
        self.job_id = job_id


class StorageError(DBJobQError):
    """The storage backend failed (connection lost, database locked for too long, ...).

    The original driver exception is available as `__cause__`. Operations that raise
    it had no effect: each storage operation is one transaction.
    """


class JobInterrupted(DBJobQError):
    """The handler was asked to stop and did: the attempt is unfinished, not failed.

    Raised by `JobContext.raise_if_cancelled` once `JobContext.cancelled` is set.
    Let it propagate out of the handler. What the worker records depends on
    `reason` (see `dbjobq.CancelReason`): after a shutdown the job goes back to
    `pending` without using an attempt; a cancelled job stays `cancelled`; a
    timeout is recorded as a `JobTimeoutError` failure; after a lost lease
    nothing is recorded.

    Args:
        message: What was interrupted.
        reason: The `CancelReason` value, or `None` if unknown.
    """

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class JobError(DBJobQError):
    """Raise from a handler to fail the current attempt with a reason.

    Args:
        message: Why the attempt failed; stored in `Job.last_error`.
        retryable: `False` fails the job at once, whatever retries are left.
        retry_in: Seconds (or a `timedelta`) to wait before the next attempt,
            instead of the retry policy's back-off; at most 100 years. Ignored when
            `retryable` is false.
    """

    retryable_default = True

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool | None = None,
        retry_in: float | timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = self.retryable_default if retryable is None else retryable
        self.retry_in = retry_in


class JobValidationError(JobError):
    """The job's input is invalid; the job fails at once and is never retried."""

    retryable_default = False


class JobTimeoutError(JobError):
    """The job ran longer than its timeout; retried according to the retry policy."""
