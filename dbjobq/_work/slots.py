"""Several jobs side by side (`concurrency` above 1).

Jobs are claimed as slots free up. Async handlers run as tasks of one event loop
(`LoopRunner`); a sync handler runs on the runner thread, at most one at a time.
The worker thread renews every lease, enforces timeouts and the stop deadline, and
records each outcome, through the same `Execution` as one job at a time. Handlers
finishing, enqueues and `stop()` all set the worker's wake-up event, which is what
it waits on.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable

from dbjobq._wakeups import Waiter
from dbjobq._work.completer import Lease
from dbjobq._work.execution import GRACE, Execution
from dbjobq._work.runner import Attempt
from dbjobq._work.upkeep import PollStep
from dbjobq.context import CancelReason
from dbjobq.errors import StorageError
from dbjobq.handlers import Handler
from dbjobq.job import Job

__all__ = ["Slots"]

logger = logging.getLogger("dbjobq.worker")


class Slots:
    """The jobs running side by side in one worker, and the loop that watches them.

    Args:
        execution: Runs and records the jobs.
        poll: The worker's poll step.
        waiter: What the loop waits on.
        concurrency: How many jobs run at once.
        intervals: `poll_interval` and `max_poll_interval`.
        left: How many jobs the worker may still take (`max_jobs`), or `None`.
    """

    def __init__(
        self,
        execution: Execution,
        poll: PollStep,
        waiter: Waiter,
        concurrency: int,
        intervals: tuple[float, float],
        left: Callable[[], int | None],
    ) -> None:
        self.ex = execution
        self.poll = poll
        self.waiter = waiter
        self.concurrency = concurrency
        self.poll_interval, self.max_poll_interval = intervals
        self._left = left
        self.flights: dict[str, Lease] = {}
        self.attempts: dict[str, Attempt] = {}
        self._next_beat = 0.0  # when (monotonic) the running jobs' leases are renewed

    def serve(self, stopping: threading.Event, *, drain: bool) -> None:
        """Run up to `concurrency` jobs at once until stopped (or, `drain`, until idle)."""
        flights, wake = self.flights, self.waiter.event
        delay, next_poll = self.poll_interval, -math.inf
        self._next_beat = time.monotonic() + self.ex.heartbeat_interval
        while True:
            wake.clear()
            self._settle()
            left = self._left()
            stopping_now = stopping.is_set() or (left is not None and left <= 0)
            if stopping_now and not flights:
                return
            now = time.monotonic()
            free = self.concurrency - len(flights)
            if left is not None:
                free = min(free, left - len(flights))
            if not stopping_now and free > 0 and now >= next_poll:
                try:
                    jobs = self.poll(lambda: self._claim_for_slots(free))  # noqa: B023
                except Exception as error:  # StorageError, or a bug: back off
                    if drain and not flights:
                        raise  # run_until_empty() reports it, as with one job at a time
                    self.poll.failed(error)
                    next_poll = now + delay * (0.5 + random.random() / 2)
                    delay = min(delay * 2, self.max_poll_interval)
                else:
                    self.poll.recovered()
                    for job in jobs:
                        self._launch(job)
                    if jobs:
                        delay = self.poll_interval
                    if len(jobs) < free:  # nothing more due for now
                        if drain and not flights:
                            return
                        next_poll = now + delay
                        longest = self.ex.batch.claims.longest_wait(
                            self.max_poll_interval, self.poll_interval
                        )
                        delay = min(delay * 2, longest)
                    continue  # settle what was launched, and fill what is left
            self.waiter.idle = not flights
            until = self._wait_until(stopping_now, free, next_poll)
            if wake.wait(max(0.0, until - time.monotonic())):
                next_poll = -math.inf  # a slot freed, an enqueue, or stop(): look again
            self.waiter.idle = False
            if not flights:
                self.ex.upkeep.save_if_due()

    def _wait_until(self, stopping: bool, free: int, next_poll: float) -> float:
        """When (monotonic) the loop has something to do, if nothing wakes it before."""
        upkeep = self.ex.upkeep
        until = [upkeep.next_save()]
        if not stopping and free > 0:
            until.append(next_poll)
            until.append(upkeep.next_tick)
        if self.flights:
            until.append(self._next_beat)
            for job_id, attempt in self.attempts.items():
                timeout = self.ex.registry.timeout_of(self.flights[job_id].job)
                if timeout is not None and attempt.started_at is not None:
                    until.append(attempt.started_at + timeout)
            if self.ex.stop_deadline is not None:
                until.append(self.ex.stop_deadline)
        return min(until)

    def _claim_for_slots(self, free: int) -> list[Job]:
        """Claim up to `free` jobs of this worker's types, priority first across all.

        Async jobs take any free slot; a sync job only the one sync slot, while no
        sync job runs. With that slot free, one claim over every handled type takes
        the `free` jobs first in line, whether async or sync; of the sync jobs among
        them the first is kept and the others are given back (`release_many`), and
        their slots go to the async jobs next in line. On a storage that cannot give
        jobs back, the claims go one job at a time until a sync job comes, so that
        none is claimed that cannot run.
        """
        registry, claims = self.ex.registry, self.ex.batch.claims
        types = set(claims.types())  # a copy: handlers may be registered meanwhile
        sync_types = {t for t in types if not _runs_async(registry.get(t))}
        async_types = types - sync_types

        def claim(of: set[str], limit: int) -> list[Job]:
            return claims.of(of, limit) if of and limit >= 1 else []

        self.ex.batch.claimed_at = time.monotonic()
        sync_busy = any(not a.handler.is_async for a in self.attempts.values())
        if not sync_types or sync_busy:
            return claim(async_types, free)
        if claims.releases:
            jobs = claim(types, free)
            extra = [j for j in jobs if j.type in sync_types][1:]
            if not extra:
                return jobs
            self._give_back(extra)
            given = {j.id for j in extra}
            kept = [j for j in jobs if j.id not in given]
            return kept + claim(async_types, free - len(kept))
        jobs = []
        while len(jobs) < free:
            got = claim(types, 1)
            jobs += got
            if not got or got[0].type in sync_types:
                break
        return jobs + claim(async_types, free - len(jobs))

    def _give_back(self, jobs: list[Job]) -> None:
        """Release claimed jobs this worker will not start (their leases expire else)."""
        try:
            self.ex.batch.claims.give_back(jobs)
        except StorageError as error:
            logger.warning(
                "worker %s: could not give back %d sync job(s) it cannot start yet (%s); "
                "they will be rescued when their leases expire",
                self.ex.worker_id,
                len(jobs),
                error,
            )

    def _launch(self, job: Job) -> None:
        """Start a claimed job's handler, or settle the job at once if it cannot run."""
        ex = self.ex
        lease = ex.lease(job)
        ex.show(job)
        ex.emit("job:claimed", job)
        if ex.registry.exhausted(job):
            ex.counted(lambda: ex.fail_exhausted(lease))
            return
        attempt = ex.attempt(job)
        if attempt is None:
            ex.counted(lambda: ex.no_handler(lease))
            return
        if attempt.handler.is_async:
            ex.submit_async(attempt)
        else:
            ex.submit(attempt)
        self.flights[job.id] = lease
        self.attempts[job.id] = attempt
        ex.emit("job:started", job)

    def _settle(self) -> None:
        """Record what finished; renew leases; enforce timeouts and the stop deadline."""
        flights, attempts, ex = self.flights, self.attempts, self.ex
        done = [job_id for job_id, attempt in attempts.items() if attempt.done.is_set()]
        for job_id in done:
            self._land(flights.pop(job_id), attempts.pop(job_id))
        now = time.monotonic()
        if flights and ex.stop_deadline is not None and now >= ex.stop_deadline:
            self._stop_all(now)
        self._time_out(now)
        if flights and now >= self._next_beat:
            self._next_beat = now + ex.heartbeat_interval
            for job_id in list(flights):
                if not ex.beat(flights[job_id], attempts[job_id], now):
                    del flights[job_id], attempts[job_id]
                    ex.completer.processed += 1
        ex.completer.flush()
        current = ex.current
        if current is not None and current.id not in flights:
            # The job started last among those still running (dicts keep that order).
            ex.show(flights[next(reversed(flights))].job if flights else None)
        if flights:
            ex.upkeep.save_if_due()

    def _stop_all(self, now: float) -> None:
        """The stop deadline passed: ask every handler to stop, give up on the rest."""
        flights, attempts = self.flights, self.attempts
        for attempt in attempts.values():
            attempt.abort(CancelReason.SHUTDOWN)
        grace_until = now + GRACE
        while not all(a.done.is_set() for a in attempts.values()):
            left = grace_until - time.monotonic()
            if left <= 0:
                break
            self.waiter.event.wait(left)
            self.waiter.event.clear()
        for job_id in list(flights):
            lease, attempt = flights.pop(job_id), attempts.pop(job_id)
            if attempt.done.is_set():
                self._land(lease, attempt)
                continue
            self.ex.stop_timeout_reached(attempt)
            self.ex.completer.processed += 1

    def _time_out(self, now: float) -> None:
        """Record the attempts that outlived their timeout."""
        flights, attempts, ex = self.flights, self.attempts, self.ex
        for job_id in list(flights):
            lease, attempt = flights[job_id], attempts[job_id]
            timeout = ex.registry.timeout_of(lease.job)
            started = attempt.started_at
            if timeout is None or started is None or now < started + timeout:
                continue
            del flights[job_id], attempts[job_id]
            lease.started = started
            ex.timed_out(lease, attempt, timeout, count=True)

    def _land(self, lease: Lease, attempt: Attempt) -> None:
        """Record the outcome of a handler that returned or raised."""
        lease.started = attempt.started_at or lease.started
        ex = self.ex

        def finish() -> None:
            try:
                ex.finish(lease, attempt)
            except Exception as error:  # noqa: BLE001 - a bug of ours must not end the worker (logged)
                ex.after_bug(lease.job, error)

        ex.counted(finish)


def _runs_async(handler: Handler | None) -> bool:
    return handler is not None and handler.is_async
