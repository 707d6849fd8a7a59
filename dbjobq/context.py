"""What a handler receives: the job and the means to report on it."""

from __future__ import annotations

import enum
import logging
import math
import threading
import types
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from dbjobq.errors import InvalidJobError, JobInterrupted, StorageError
from dbjobq.job import Job
from dbjobq.payload import check_json

if TYPE_CHECKING:
    from dbjobq.queue import JobQueue

__all__ = ["CancelReason", "JobContext"]

_lazy = threading.Lock()  # creates a context's cancellation event once, whoever asks first


class CancelReason(str, enum.Enum):
    """Why a handler was asked to stop (`JobContext.cancel_reason`).

    Members compare equal to their string values (`CancelReason.SHUTDOWN == "shutdown"`).
    What becomes of the attempt depends on the reason, if the handler then raises
    (for example through `JobContext.raise_if_cancelled`):
    """

    SHUTDOWN = "shutdown"
    """The worker is stopping and its stop timeout has passed. If the handler raises,
    the job goes back to `pending` without using an attempt; if it returns, its
    result is recorded as usual."""

    CANCELLED = "cancelled"
    """The job was cancelled (`JobQueue.cancel`); it stays `cancelled` and the
    handler's outcome is discarded."""

    TIMEOUT = "timeout"
    """The attempt outlived its timeout; it was recorded as a `JobTimeoutError`
    failure (retried per the retry policy) and the handler's outcome is discarded."""

    LEASE_LOST = "lease_lost"
    """The worker lost its lease (another worker rescued the job) or could not renew
    it (the database was out of reach), so another worker may run the job. What the
    handler does next is written only if the lease turns out to be this worker's
    still: a result is recorded, a raise gives the job back to `pending` without
    using an attempt (as after a shutdown); otherwise it is discarded."""

    def __str__(self) -> str:
        return self.value


class _JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the job and puts `job_id`/`job_type` on each record."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra['job_type']} {extra['job_id']}] {msg}", kwargs


class JobContext:
    """Handed to every handler call: the job, a cancellation signal, progress, logging.

    Attributes:
        queue: The `JobQueue` running the job, e.g. to enqueue follow-up jobs.
    """

    def __init__(
        self,
        job: Job,
        queue: JobQueue,
        *,
        report_progress: Callable[[float, str | None], bool],
        cancelled: threading.Event | None = None,
        lost_reason: Callable[[], CancelReason] | None = None,
        effective: Callable[[Job], Job] | None = None,
    ) -> None:
        self._claimed = job
        self._job: Job | None = None  # with the values it runs with, made on first use
        self.queue = queue
        # Both made on first use: most short handlers never look at them.
        self._cancelled = cancelled
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._report_progress = report_progress
        self._reason: CancelReason | None = None
        # Asked when progress() finds the lease gone: cancelled, or lost?
        self._lost_reason = lost_reason
        # Fills in the max_retries and timeout the job runs with (its handler's).
        self._effective = effective
        self._parent_results: Mapping[str, Any] | None = None

    @property
    def job(self) -> Job:
        """The job as claimed: status `running`, `attempts` counting this attempt.

        `max_retries` and `timeout` are the values the job runs with: its own if it
        was enqueued with them, else its handler's (never `None` for `max_retries`).
        """
        job = self._job
        if job is None:
            # A context built by hand (to test a handler) asks the queue's registry.
            effective = self._effective or self.queue.registry.effective
            job = self._job = effective(self._claimed)
        return job

    @property
    def cancelled(self) -> threading.Event:
        """Set when the handler should stop.

        The job was cancelled, its timeout passed, its lease was lost, or the worker
        is shutting down past its stop timeout; `cancel_reason` says which. Long
        handlers should wait on it instead of sleeping (`ctx.cancelled.wait(5)`)
        and then call `raise_if_cancelled`, so that the attempt is not recorded as
        done.
        """
        event = self._cancelled
        if event is None:
            with _lazy:
                event = self._cancelled
                if event is None:
                    event = self._cancelled = threading.Event()
        return event

    @property
    def cancel_reason(self) -> CancelReason | None:
        """Why `cancelled` was set; `None` while it is not (or if user code set it)."""
        return self._reason

    def raise_if_cancelled(self) -> None:
        """Raise `JobInterrupted` if the handler has been asked to stop.

        Call it at safe points of a long handler (between batches, after waiting on
        `cancelled`): the exception tells the worker that the work is unfinished.
        A job interrupted by a shutdown goes back to `pending` without using an
        attempt; see `CancelReason` for the other reasons.

        Raises:
            JobInterrupted: If `cancelled` is set; its `reason` is `cancel_reason`.
        """
        event = self._cancelled
        if event is not None and event.is_set():
            reason = self._reason
            raise JobInterrupted(
                f"job {self._claimed.id} interrupted ({reason or 'cancelled'})",
                reason=reason,
            )

    def _interrupt(self, reason: CancelReason) -> None:
        """Ask the handler to stop; the first reason given is the one kept."""
        with _lazy:
            if self._reason is None:
                self._reason = reason
        self.cancelled.set()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger for the handler's own messages.

        Its records carry `job_id` and `job_type` attributes, and its messages
        start with `[type id]`.
        """
        if self._logger is None:
            job = self._claimed
            self._logger = _JobLogger(
                logging.getLogger("dbjobq.job"), {"job_id": job.id, "job_type": job.type}
            )
        return self._logger

    @property
    def payload(self) -> dict[str, Any]:
        """The job's payload (a JSON object)."""
        return self._claimed.payload

    @property
    def meta(self) -> dict[str, Any]:
        """The job's free-form metadata."""
        return self._claimed.meta

    @property
    def attempt(self) -> int:
        """Which attempt this is, starting at 1."""
        return self._claimed.attempts

    @property
    def parent_results(self) -> Mapping[str, Any]:
        """The results of the jobs this one depends on: a read-only mapping id -> result.

        For a job enqueued with `depends_on` (a step of `JobQueue.chain`, a
        group's callback): every parent's `Job.result` (`None` for a parent that
        returned nothing, or that failed or was cancelled, if the job was
        enqueued with `on_parent_failure="run"`). Empty for a job without
        parents. Read from storage on first use, then kept.
        """
        if self._parent_results is None:
            storage = self.queue.storage
            parents = storage.parents(self._claimed.id) if storage.capabilities.workflows else []
            self._parent_results = types.MappingProxyType({p.id: p.result for p in parents})
        return self._parent_results

    def enqueue(
        self,
        type: str,  # noqa: A002 - the job field's name
        payload: dict[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Enqueue a follow-up job that records this one as its parent.

        As `JobQueue.enqueue` (any of its keyword arguments), on this job's queue
        object, with two entries added to `meta` unless given there:
        `parent_id` (this job's id) and `correlation_id` (this job's
        `meta["correlation_id"]`, or its id if it has none). So every job a
        tree of handlers enqueues shares one correlation id, and
        `JobQueue.list_jobs(correlation_id=...)` lists them. The new job does not
        wait for this one (use `depends_on` for that).

        Returns:
            The new job's id (see `JobQueue.enqueue`).

        Raises:
            InvalidJobError: As `JobQueue.enqueue`; also if `meta` is not a dict.
        """
        meta = options.pop("meta", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise InvalidJobError(f"meta must be a dict (a JSON object), got {meta!r}")
        job = self._claimed
        meta = {
            "parent_id": job.id,
            "correlation_id": job.meta.get("correlation_id", job.id),
            **meta,
        }
        return self.queue.enqueue(type, payload, meta=meta, **options)

    def progress(self, value: float, message: str | None = None) -> None:
        """Store the job's progress (for example a percentage) and an optional message.

        The value is written to storage at once, where `JobQueue.get_job` shows it.
        If the write reveals that this worker no longer holds the job (it was
        cancelled or rescued), `cancelled` is set. Progress is informational: if
        the storage cannot be reached, the failure is logged and the job goes on.

        Args:
            value: Any finite number; dbjobq gives it no unit.
            message: A short human-readable note.

        Raises:
            InvalidJobError: If `value` is not a finite number or `message` is not
                a str without NUL characters.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InvalidJobError(f"progress value must be a finite number, got {value!r}")
        if message is not None:
            if not isinstance(message, str):
                raise InvalidJobError(
                    f"progress message must be a str, got {type(message).__name__}"
                )
            check_json(message, what="progress message")
        try:
            held = self._report_progress(float(value), message)
        except StorageError as error:
            self.logger.warning("progress not stored: %s", error)
            return
        if not held:
            why = self._lost_reason
            self._interrupt(CancelReason.LEASE_LOST if why is None else why())

    def __repr__(self) -> str:
        return f"<JobContext {self._claimed.type} {self._claimed.id} attempt {self.attempt}>"


def interrupt(ctx: JobContext, reason: CancelReason) -> None:
    """Ask the handler running with `ctx` to stop (the worker's side of `cancelled`)."""
    ctx._interrupt(reason)
