"""What a handler receives: the job and the means to report on it."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from dbjobq.errors import InvalidJobError, StorageError
from dbjobq.job import Job
from dbjobq.payload import check_json

if TYPE_CHECKING:
    from dbjobq.queue import JobQueue

__all__ = ["JobContext"]

_lazy = threading.Lock()  # creates a context's cancellation event once, whoever asks first


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
        job: The job as claimed (status `running`, `attempts` counting this attempt).
        queue: The `JobQueue` running the job, e.g. to enqueue follow-up jobs.
    """

    def __init__(
        self,
        job: Job,
        queue: JobQueue,
        *,
        report_progress: Callable[[float, str | None], bool],
        cancelled: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.queue = queue
        # Both made on first use: most short handlers never look at them.
        self._cancelled = cancelled
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._report_progress = report_progress

    @property
    def cancelled(self) -> threading.Event:
        """Set when the handler should stop.

        The job was cancelled, its timeout passed, its lease was lost, or the worker
        is shutting down past its grace period. Long handlers should check it
        (`ctx.cancelled.is_set()`) or wait on it instead of sleeping
        (`ctx.cancelled.wait(5)`).
        """
        event = self._cancelled
        if event is None:
            with _lazy:
                event = self._cancelled
                if event is None:
                    event = self._cancelled = threading.Event()
        return event

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger for the handler's own messages.

        Its records carry `job_id` and `job_type` attributes, and its messages
        start with `[type id]`.
        """
        if self._logger is None:
            job = self.job
            self._logger = _JobLogger(
                logging.getLogger("dbjobq.job"), {"job_id": job.id, "job_type": job.type}
            )
        return self._logger

    @property
    def payload(self) -> dict[str, Any]:
        """The job's payload (a JSON object)."""
        return self.job.payload

    @property
    def meta(self) -> dict[str, Any]:
        """The job's free-form metadata."""
        return self.job.meta

    @property
    def attempt(self) -> int:
        """Which attempt this is, starting at 1."""
        return self.job.attempts

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
            self.cancelled.set()

    def __repr__(self) -> str:
        return f"<JobContext {self.job.type} {self.job.id} attempt {self.attempt}>"
