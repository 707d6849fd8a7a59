"""Writing job outcomes: one at a time, or held back and written together.

Each outcome write is fenced by the job's lease token: a job cancelled or rescued
meanwhile keeps its new state and the outcome is discarded. Storage errors are
retried while the lease holds. The job events (`job:completed`, `job:failed`,
`job:retried`) are emitted once the write went through.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from dbjobq import _faults
from dbjobq._work.upkeep import Throttle
from dbjobq.errors import StorageError
from dbjobq.job import Job
from dbjobq.storage.base import Storage

__all__ = ["Completer", "Emit", "Lease", "log_extra"]

logger = logging.getLogger("dbjobq.worker")

Emit = Callable[..., None]
"""`emit(name, job=None, **fields)`: run the hooks of an event."""


def log_extra(job: Job) -> dict[str, str]:
    """Attributes that put the job on a log record, for structured formatters."""
    return {"job_id": job.id, "job_type": job.type}


@dataclasses.dataclass(slots=True)
class Lease:
    """A claimed job, its fencing token, and until when (monotonic) we hold it."""

    job: Job
    token: str
    until: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    ended: float = 0.0


class Completer:
    """Records the outcomes of one worker's jobs and counts them.

    Args:
        storage: Where outcomes are written.
        worker_id: The worker's id, for log messages.
        emit: Runs the hooks of the job events.
        stop_deadline: When (monotonic) the worker must have stopped, if it must.
        errors: The throttle of the worker's write errors (heartbeats share it).
    """

    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        emit: Emit,
        stop_deadline: Callable[[], float | None],
        errors: Throttle,
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.processed = 0  # jobs whose outcome was settled (Worker.jobs_processed)
        self.held: list[tuple[Lease, Any]] = []  # completed; outcome not written yet
        self._emit = emit
        self._stop_deadline = stop_deadline
        self._errors = errors
        self._given_up = 0  # outcomes not written in the current storage outage

    def complete_later(self, lease: Lease, result: Any) -> None:
        """Hold a completion back, to be written with the others (`flush`)."""
        self.held.append((lease, result))

    def flush(self) -> None:
        """Write the completions held back to be recorded together."""
        if not self.held:
            return
        done, self.held = self.held, []
        storage = self.storage
        outcomes = [(lease.job.id, lease.token, result) for lease, result in done]
        try:
            held = self.write([lease for lease, _ in done], lambda: storage.complete_many(outcomes))
        finally:
            self.processed += len(done)
        for (lease, result), kept in zip(done, held or [], strict=False):
            if kept:
                duration = lease.ended - lease.started
                self._emit("job:completed", lease.job, result=result, duration=duration)
            else:
                self.lease_lost(lease.job)

    def record(
        self,
        lease: Lease,
        *,
        result: Any = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        """Write one outcome (`error=None`: completed), retrying while the lease holds."""
        job, storage = lease.job, self.storage
        if not lease.ended:
            lease.ended = time.monotonic()

        def write() -> list[bool]:
            if error is None:
                return [storage.complete(job.id, lease.token, result=result)]
            return [storage.fail(job.id, lease.token, error=error, retry_in=retry_in)]

        held = self.write([lease], write)
        if held is None:
            return
        if not held[0]:
            self.lease_lost(job)
            return
        duration = lease.ended - lease.started
        if error is None:
            self._emit("job:completed", job, result=result, duration=duration)
            return
        will_retry = retry_in is not None
        summary = error.splitlines()[0] if error else error
        fields = {"error": summary, "will_retry": will_retry, "retry_in": retry_in}
        self._emit("job:failed", job, duration=duration, **fields)
        if will_retry:
            self._emit("job:retried", job, **fields)

    def give_back(self, lease: Lease) -> bool | None:
        """Release an interrupted job to `pending`: whether the lease held (`None`: unknown)."""
        job = lease.job
        held = self.write([lease], lambda: [self.storage.release(job.id, lease.token)])
        return None if held is None else held[0]

    def snooze(self, lease: Lease, seconds: float) -> None:
        """Put a snoozing job back to `pending`, due in `seconds`, its attempt not counted."""
        job = lease.job
        if not lease.ended:
            lease.ended = time.monotonic()
        held = self.write(
            [lease], lambda: [self.storage.snooze(job.id, lease.token, delay=seconds)]
        )
        if held is None:
            return
        if not held[0]:
            self.lease_lost(job)
            return
        duration = lease.ended - lease.started
        self._emit("job:snoozed", job, retry_in=seconds, duration=duration)

    def fail_after_bug(self, job: Job, error: str, retry_in: float | None) -> None:
        """Record an attempt dbjobq itself could not finish, so it is not re-run blindly."""
        try:
            self.storage.fail(
                job.id, job.lease_token or "", error=f"internal error: {error}", retry_in=retry_in
            )
        except Exception:
            logger.exception(
                "worker %s: could not record the failure of job %s",
                self.worker_id,
                job.id,
                extra=log_extra(job),
            )

    def lease_lost(self, job: Job) -> None:
        """Log an outcome discarded because the lease was gone."""
        logger.warning(
            "job %s (%s): lease lost before the outcome was recorded; outcome "
            "discarded (the job was cancelled or rescued)",
            job.id,
            job.type,
            extra=log_extra(job),
        )

    def write(self, leases: list[Lease], write: Callable[[], list[bool]]) -> list[bool] | None:
        """Run an outcome write, retrying storage errors while the leases hold.

        Returns:
            Whether each lease was still held, or `None` when the write was given up:
            the jobs will be rescued and run again.
        """
        what = ", ".join(lease.job.id for lease in leases)
        delay = 0.05
        while True:
            try:
                _faults.reach("before_outcome")
                held = write()
                _faults.reach("after_outcome")
            except StorageError as failure:
                self._errors.failed(f"worker {self.worker_id}: recording job {what}", failure)
                job = leases[0].job if len(leases) == 1 else None
                self._emit("worker:error", job, error=f"StorageError: {failure}")
                deadline = self._stop_deadline()
                stop_by = deadline if deadline is not None else math.inf
                until = min(lease.until for lease in leases)
                if time.monotonic() + delay >= min(until, stop_by):
                    self._give_up(leases, what)
                    return None
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 2.0)
                continue
            given_up, self._given_up = self._given_up, 0
            lost = f" ({given_up} outcome(s) given up, to be run again)" if given_up else ""
            self._errors.recovered(f"worker {self.worker_id}: recording{lost}")
            return held

    def _give_up(self, leases: list[Lease], what: str) -> None:
        # One record for the whole batch: a log line per job would grow with the
        # batch size during an outage. Logged in full once per outage: the jobs
        # queued behind go on finishing and giving up too. The recovery message
        # counts them all.
        first = leases[0].job
        self._given_up += len(leases)
        logger.log(
            logging.ERROR if self._given_up == len(leases) else logging.DEBUG,
            "%s: could not record the outcome before the lease ran out; it will "
            "be rescued and run again",
            f"job {first.id} ({first.type})"
            if len(leases) == 1
            else f"{len(leases)} jobs ({what})",
            extra=log_extra(first),
        )
