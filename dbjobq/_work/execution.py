"""Running claimed jobs: one handler call at a time, watched while it runs.

`Execution` hands a batch's handlers to the runner thread, and for each job in turn
renews its lease every `heartbeat_interval`, enforces its timeout and the stop
deadline, notices a lost lease, and has the outcome recorded (`Completer`). The
same pieces serve the side-by-side jobs of `concurrency` above 1 (`slots.py`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from dbjobq import _faults
from dbjobq._work.batch import Batch
from dbjobq._work.completer import Completer, Emit, Lease, log_extra
from dbjobq._work.runner import Attempt, LoopRunner, Runner
from dbjobq._work.upkeep import Throttle, Upkeep
from dbjobq.context import CancelReason, JobContext, interrupt
from dbjobq.errors import JobError, JobTimeoutError, PayloadError, StorageError
from dbjobq.flow import Snooze
from dbjobq.job import Job
from dbjobq.payload import checked_dumps
from dbjobq.queue import JobQueue

__all__ = ["GRACE", "Execution"]

logger = logging.getLogger("dbjobq.worker")

GRACE = 1.0  # seconds a cancelled handler gets to return before its thread is abandoned
FLUSH_AFTER = 0.005  # seconds into a handler after which earlier outcomes are written


class Execution:
    """Runs one worker's jobs and watches each while its handler runs.

    Args:
        queue: Where handlers come from (and what handlers see as `ctx.queue`).
        worker_id: The worker's id.
        heartbeat_interval: Seconds between lease renewals.
        concurrency: Jobs run side by side (async handlers on a `LoopRunner`).
        batch: The worker's claimed-not-started jobs.
        completer: Writes the outcomes.
        upkeep: The registry record, rescues and ticks.
        write_errors: Throttles the log of failed outcome writes.
        emit: Runs the hooks of an event.
        wake: What the worker waits on side by side (set when a handler returns).
    """

    def __init__(
        self,
        queue: JobQueue,
        worker_id: str,
        heartbeat_interval: float,
        concurrency: int,
        *,
        batch: Batch,
        completer: Completer,
        upkeep: Upkeep,
        write_errors: Throttle,
        emit: Emit,
        wake: threading.Event,
    ) -> None:
        self.queue = queue
        self.registry = queue.registry
        self._effective = self.registry.effective  # bound once, handed to every context
        self.storage = queue.storage
        self.worker_id = worker_id
        self.heartbeat_interval = heartbeat_interval
        self.lease_seconds = batch.claims.lease_seconds
        self.concurrency = concurrency
        self.batch, self.completer, self.upkeep = batch, completer, upkeep
        self._write_errors = write_errors
        self.current: Job | None = None  # the job being processed (Worker.current_job)
        self.signal = threading.Event()  # wakes watch(): handler returned, or stop()
        self.stop_deadline: float | None = None  # when (monotonic) the worker must stop
        self.emit = emit  # runs the hooks of an event
        self._wake = wake
        self._batched = batch.prefetch > 1
        self._deferred = False  # whether the current job's outcome was held back
        self._runner: Runner | None = None
        self.loop_runner: LoopRunner | None = None  # async handlers, concurrency > 1
        self._runners = 0

    # -- runner threads ---------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        """Hand an attempt to the runner thread (started on first use)."""
        if self._runner is None:
            self._runners += 1
            self._runner = Runner(f"dbjobq-runner-{self.worker_id}-{self._runners}")
        self._runner.submit(attempt)

    def submit_async(self, attempt: Attempt) -> None:
        """Start an async attempt on the event loop shared by side-by-side jobs."""
        if self.loop_runner is None:
            self._runners += 1
            self.loop_runner = LoopRunner(f"dbjobq-loop-{self.worker_id}-{self._runners}")
        self.loop_runner.submit(attempt)

    def retire(self) -> None:
        """Let the runner threads end once their current handler returns."""
        if self._runner is not None:
            self._runner.retire()
            self._runner = None
        if self.loop_runner is not None:
            self.loop_runner.retire()
            self.loop_runner = None

    def attempt(self, job: Job) -> Attempt | None:
        """The call of `job`'s handler, not started yet; `None` if there is no handler."""
        handler = self.registry.get(job.type)
        if handler is None:
            return None
        token = job.lease_token or ""
        storage = self.storage

        def report_progress(value: float, message: str | None) -> bool:
            return storage.set_progress(job.id, token, progress=value, message=message)

        ctx = JobContext(
            job,
            self.queue,
            report_progress=report_progress,
            lost_reason=lambda: self.lost_reason(job),
            effective=self._effective,
        )
        # Side by side, the worker waits on its wake-up event, which enqueues and
        # stop() set too.
        return Attempt(handler, ctx, self._wake if self.concurrency > 1 else self.signal)

    def abandon(
        self, attempt: Attempt, why: str, reason: CancelReason, grace: float = GRACE
    ) -> None:
        """Give up on a handler that will not return; its thread keeps running alone."""
        attempt.abort(reason)
        on_loop = self.concurrency > 1 and attempt.handler.is_async  # not on the runner
        if not attempt.done.wait(grace) and self._runner is not None and not on_loop:
            job = attempt.ctx.job
            logger.error(
                "job %s (%s): handler did not return after %s; its thread is abandoned "
                "and its outcome will be discarded",
                job.id,
                job.type,
                why,
                extra=log_extra(job),
            )
            self._runner.retire()
            self._runner = None
            self.batch.skip_queued()

    # -- a batch, one job after the other ---------------------------------------------

    def run_batch(self, jobs: list[Job], stopping: threading.Event) -> None:
        """Run claimed jobs one after the other, and record their outcomes.

        The handlers of the whole batch are handed to the runner thread at once, so
        it goes from one to the next while this thread watches and records.
        """
        batch = self.batch
        batch.jobs.extend(jobs)
        if len(jobs) > 1:
            for job in jobs:
                if self.registry.exhausted(job):
                    continue  # settled by run_job, never run
                attempt = self.attempt(job)
                if attempt is not None:
                    batch.attempts[job.id] = attempt
                    self.submit(attempt)
            batch.claim_ahead(jobs, stopping)
        began, ran = time.monotonic(), 0
        while batch.jobs:
            if stopping.is_set():
                batch.release("the worker is stopping")
            elif time.monotonic() - batch.claimed_at > self.lease_seconds / 2:
                batch.release("their leases are half gone")
            if not batch.jobs:
                break
            job = batch.jobs.popleft()
            ran += 1
            try:
                self._process(job)
            except Exception as error:  # noqa: BLE001 - a bug of ours must not end the worker (logged)
                self.after_bug(job, error)
        self.completer.flush()
        if ran:
            batch.per_job = (time.monotonic() - began) / ran

    def after_bug(self, job: Job, error: Exception) -> None:
        """Log an error of dbjobq's own and record the attempt as failed."""
        logger.exception(
            "worker %s: error while processing job %s", self.worker_id, job.id, extra=log_extra(job)
        )
        decision = self.registry.decide(job, error, traceback.format_exc())
        self.completer.fail_after_bug(job, decision.error, decision.retry_in)

    def show(self, job: Job | None) -> None:
        """Make `job` the one `Worker.current_job` shows (and the registry record names)."""
        self.current = job
        self.upkeep.changed()

    def _process(self, job: Job) -> None:
        self.show(job)
        self.emit("job:claimed", job)
        self.upkeep.save_if_due()
        self._deferred = False
        try:
            self._run_job(job)
        finally:
            if not self._deferred:  # else counted when its outcome is written
                self.completer.processed += 1
            if not self.batch.jobs:
                self.completer.flush()  # before current_job shows the worker idle
            self.show(None)

    def counted(self, settle: Callable[[], None]) -> None:
        """Settle one job (record its outcome), counting it as processed once."""
        self._deferred = False
        try:
            settle()
        finally:
            if not self._deferred:  # else counted when its outcome is written
                self.completer.processed += 1

    def lease(self, job: Job) -> Lease:
        """The lease of a job of the batch claimed last."""
        return Lease(job, job.lease_token or "", self.batch.claimed_at + self.lease_seconds)

    def _run_job(self, job: Job) -> None:
        lease = self.lease(job)
        # run_batch hands no exhausted job to the runner: only the others need a look.
        attempt = self.batch.attempts.pop(job.id, None)
        if attempt is None:
            if self.registry.exhausted(job):
                self.fail_exhausted(lease)
                return
            attempt = self.attempt(job)
            if attempt is None:
                self.no_handler(lease)
                return
            self.submit(attempt)
        self.emit("job:started", job)
        if self._watch(lease, attempt):
            self.finish(lease, attempt)

    # -- watching one job ---------------------------------------------------------------

    def _watch(self, lease: Lease, attempt: Attempt) -> bool:
        """Heartbeat until the handler returns (`True`) or must be given up (`False`)."""
        job = lease.job
        timeout = job.timeout if job.timeout is not None else attempt.handler.timeout
        # The runner may have started it already, right after the job before it.
        started = lease.started = attempt.started_at or time.monotonic()
        next_beat = started + self.heartbeat_interval
        completer, signal = self.completer, self.signal
        while True:
            if attempt.done.is_set():  # before waiting: its signal may be spent already
                return True
            now = time.monotonic()
            until = [next_beat, self.upkeep.next_save()]
            if completer.held:
                until.append(started + FLUSH_AFTER)
            if timeout is not None:
                until.append(started + timeout)
            stop_deadline = self.stop_deadline
            if stop_deadline is not None:
                until.append(stop_deadline)
            # The signal is set when the handler returns and when stop() sets or
            # moves the deadline, so neither waits for the next heartbeat.
            signal.wait(max(0.0, min(until) - now))
            signal.clear()
            if attempt.done.is_set():
                return True
            now = time.monotonic()
            if completer.held and now >= started + FLUSH_AFTER:
                completer.flush()  # the handler takes a while: write earlier outcomes meanwhile
                continue
            self.upkeep.save_if_due()
            stop_deadline = self.stop_deadline
            if stop_deadline is not None and now >= stop_deadline:
                return self._stop_timeout(attempt)
            if timeout is not None and now >= started + timeout:
                self.timed_out(lease, attempt, timeout, count=False)
                return False
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                # A slow job: the jobs claimed with it should not wait for it.
                self.batch.release(f"job {job.id} is taking long")
                if self.beat(lease, attempt, now):
                    self.upkeep.save_if_due()
                    continue
                return False

    def _stop_timeout(self, attempt: Attempt) -> bool:
        """The stop deadline passed: ask the handler to stop; `True` if it did."""
        attempt.abort(CancelReason.SHUTDOWN)
        if attempt.done.wait(GRACE):
            return True  # it stopped when asked: record its outcome as usual
        self.stop_timeout_reached(attempt)
        return False

    def stop_timeout_reached(self, attempt: Attempt) -> None:
        """Leave a handler that outlived the stop deadline to lease expiry."""
        job = attempt.ctx.job
        logger.warning(
            "worker %s: stop timeout reached during job %s; leaving it to be "
            "rescued when its lease expires",
            self.worker_id,
            job.id,
            extra=log_extra(job),
        )
        self.abandon(attempt, "the stop timeout", CancelReason.SHUTDOWN, grace=0)

    def timed_out(self, lease: Lease, attempt: Attempt, timeout: float, *, count: bool) -> None:
        """Record an attempt that outlived its timeout, and give up on its handler.

        `count`: count the job as processed once its outcome is written.
        """
        job = lease.job
        attempt.abort(CancelReason.TIMEOUT)
        error = JobTimeoutError(f"job exceeded its timeout of {timeout:g}s")
        decision = self.registry.decide(job, error, "")
        logger.error("job %s (%s): %s", job.id, job.type, error, extra=log_extra(job))
        if count:
            self.counted(
                lambda: self.completer.record(
                    lease, error=decision.error, retry_in=decision.retry_in
                )
            )
        else:
            self.completer.record(lease, error=decision.error, retry_in=decision.retry_in)
        self.abandon(attempt, "its timeout", CancelReason.TIMEOUT)

    def beat(self, lease: Lease, attempt: Attempt, now: float) -> bool:
        """Renew a running job's lease; `False` if it is lost (the handler given up)."""
        job = lease.job
        try:
            _faults.reach("heartbeat")
            held = self.storage.heartbeat(job.id, lease.token, lease_seconds=self.lease_seconds)
        except StorageError as error:
            self._write_errors.failed(f"worker {self.worker_id}: heartbeat", error)
            if now >= lease.until and not attempt.ctx.cancelled.is_set():
                # Another worker may have rescued the job by now: ask the handler
                # to stop. Its outcome is still recorded if the lease turns out
                # to be ours after all (the fence decides).
                logger.warning(
                    "job %s (%s): lease could not be renewed before it expired; "
                    "signalling the handler to stop",
                    job.id,
                    job.type,
                    extra=log_extra(job),
                )
                interrupt(attempt.ctx, CancelReason.LEASE_LOST)
            return True
        self._write_errors.recovered(f"worker {self.worker_id}: heartbeat")
        if held:
            lease.until = now + self.lease_seconds
            return True
        logger.warning(
            "job %s (%s): lease lost (cancelled or rescued); stopping the handler "
            "and discarding its outcome",
            job.id,
            job.type,
            extra=log_extra(job),
        )
        self.abandon(attempt, "its lease was lost", self.lost_reason(job))
        return False

    def lost_reason(self, job: Job) -> CancelReason:
        """Why this worker no longer holds `job`: cancelled, or rescued or taken over."""
        try:
            status = self.storage.get(job.id).status
        except Exception:  # noqa: BLE001 - only decides which reason to report
            return CancelReason.LEASE_LOST
        return CancelReason.CANCELLED if status == "cancelled" else CancelReason.LEASE_LOST

    # -- outcomes -----------------------------------------------------------------------

    def finish(self, lease: Lease, attempt: Attempt) -> None:
        """Record the outcome of a handler that returned or raised."""
        job = lease.job
        error = attempt.error
        if error is None and attempt.result is not None:
            error = self._unstorable(attempt)
        lease.ended = attempt.finished_at or time.monotonic()
        if error is not None and (reason := attempt.ctx.cancel_reason) is not None:
            self._interrupted(lease, reason, error, attempt.trace)
            return
        if error is None:
            logger.debug("job %s (%s) completed", job.id, job.type, extra=log_extra(job))
            if self._batched:
                self.completer.complete_later(lease, attempt.result)  # with its batch
                self._deferred = True
            else:
                self.completer.record(lease, result=attempt.result)
            return
        if isinstance(error, Snooze):
            self._snoozed(lease, error, attempt.trace)
            return
        decision = self.registry.decide(job, error, attempt.trace)
        text, retry_in = decision.error, decision.retry_in
        extra = log_extra(job)
        if not isinstance(error, Exception):
            name = type(error).__name__
            logger.error("job %s (%s): handler raised %s", job.id, job.type, name, extra=extra)
        first_line = text.splitlines()[0]
        if retry_in is None:
            logger.error("job %s (%s) failed: %s", job.id, job.type, first_line, extra=extra)
        else:
            logger.warning(
                "job %s (%s) attempt %d failed, retrying in %.1fs: %s",
                job.id,
                job.type,
                job.attempts,
                retry_in,
                first_line,
                extra=extra,
            )
        self.completer.record(lease, error=text, retry_in=retry_in)

    def _snoozed(self, lease: Lease, snooze: Snooze, trace: str) -> None:
        """A handler that raised `Snooze`: pending again later, not a failure."""
        job, seconds = lease.job, snooze.seconds
        if self.queue.storage.capabilities.snooze:
            logger.info(
                "job %s (%s) snoozed for %gs", job.id, job.type, seconds, extra=log_extra(job)
            )
            self.completer.snooze(lease, seconds)
            return
        logger.warning(
            "job %s (%s) snoozed for %gs; %s cannot snooze (Capabilities.snooze), so "
            "this is recorded as a retry that counts the attempt",
            job.id,
            job.type,
            seconds,
            type(self.queue.storage).__name__,
            extra=log_extra(job),
        )
        text = self.registry.decide(job, snooze, trace).error
        self.completer.record(lease, error=text, retry_in=seconds)

    def _unstorable(self, attempt: Attempt) -> BaseException | None:
        """The error of a result that cannot be stored (`None`: it can)."""
        try:
            checked_dumps(
                attempt.result, what="handler result", max_bytes=self.queue.max_payload_bytes
            )
        except PayloadError as invalid:
            attempt.trace = ""
            return invalid
        except Exception as invalid:  # noqa: BLE001 - e.g. a result whose str() fails
            attempt.trace = ""
            return PayloadError(f"handler result is not storable: {invalid}")
        return None

    def _interrupted(
        self, lease: Lease, reason: CancelReason, error: BaseException, trace: str
    ) -> None:
        """A handler that raised once asked to stop: unfinished work, not a failure.

        After a shutdown (or a lease that could not be renewed) the job is given
        back: `pending`, its attempt not counted. The fence decides, as for any
        outcome: a job cancelled or rescued meanwhile is left as it is.
        """
        job = lease.job
        if reason not in (CancelReason.SHUTDOWN, CancelReason.LEASE_LOST):
            # Cancelled: the job stays so. (A timeout was recorded when it struck.)
            logger.info(
                "job %s (%s) stopped (%s); outcome discarded",
                job.id,
                job.type,
                reason,
                extra=log_extra(job),
            )
            return
        if not self.batch.claims.releases:  # the backend cannot give jobs back
            decision = self.registry.decide(job, error, trace)
            self.completer.record(lease, error=decision.error, retry_in=decision.retry_in)
            return
        held = self.completer.give_back(lease)
        if held is None:
            return
        if not held:
            self.completer.lease_lost(job)
            return
        logger.warning(
            "job %s (%s) interrupted (%s): back to pending, attempt not counted",
            job.id,
            job.type,
            reason,
            extra=log_extra(job),
        )

    def fail_exhausted(self, lease: Lease) -> None:
        """Fail a job claimed past its last attempt, without running it."""
        job = lease.job
        logger.error(
            "job %s (%s) failed: no retry left after %d attempts",
            job.id,
            job.type,
            job.attempts - 1,
            extra=log_extra(job),
        )
        error = job.last_error or f"no retry left after {job.attempts - 1} attempts"
        self.completer.record(lease, error=error, retry_in=None)

    def no_handler(self, lease: Lease) -> None:
        """Record a claimed job that this worker has no handler for.

        Claims only ask for registered types, but a database that compares names
        loosely (case, trailing spaces) can still hand over another type. Back off
        as for a failure: retrying at once would spin.
        """
        job = lease.job
        problem = JobError(f"no handler for job type {job.type!r} in worker {self.worker_id}")
        decision = self.registry.decide(job, problem, "")
        logger.error("job %s: %s", job.id, decision.error, extra=log_extra(job))
        self.completer.record(lease, error=decision.error, retry_in=decision.retry_in)
