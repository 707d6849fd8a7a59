"""Worker: a daemon thread that claims jobs and runs their handlers.

The worker is made of parts (`dbjobq._work`): `Batch` claims, `Execution` runs and
watches each job, `Completer` writes outcomes, `Upkeep` keeps the registry record,
rescues and ticks, `Slots` runs jobs side by side. This module holds the options
and the loop, which polls through one step (`PollStep`) in every mode.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, overload

from dbjobq import _clock, _faults
from dbjobq._wakeups import Waiter
from dbjobq._work.batch import Batch, Claims
from dbjobq._work.completer import Completer
from dbjobq._work.execution import GRACE, Execution
from dbjobq._work.options import LONGEST, Options
from dbjobq._work.slots import Slots
from dbjobq._work.upkeep import PollStep, Throttle, Upkeep, note_begun
from dbjobq.events import Event, H, Hooks
from dbjobq.job import Job
from dbjobq.queue import JobQueue
from dbjobq.registry import WorkerInfo

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Worker:
    """Claims jobs from a `JobQueue` and runs their handlers in a background thread.

    ```python
    worker = Worker(queue)
    worker.start()   # returns at once; the daemon thread polls for jobs
    ...
    worker.stop()    # waits (30 s by default) for the current job to finish
    ```

    Or `worker.run()`, which runs the same loop in the calling thread until stopped.

    **Polling.** After an empty poll the worker waits `poll_interval`, and doubles
    the wait after each further empty poll up to `max_poll_interval`; finding a job
    resets it to `poll_interval`. An `enqueue` in the same process wakes idle
    workers at once, and `stop()` interrupts the wait at once.

    **Leases.** A claimed job is leased for `lease_seconds`. While the handler runs,
    the worker renews the lease every `heartbeat_interval`. If the worker dies, the
    lease runs out and any worker rescues the job (retried, or failed when no retry
    is left). Each worker also rescues expired leases as it polls.

    **Which jobs.** A worker takes jobs from `queues` whose type has a handler
    registered on its `JobQueue` (or only the `types` given); jobs of other types
    stay `pending`, untouched, for a worker that knows them. Higher priority goes
    first, then the job due first (`lifo=True`: the job due last).

    **Batches.** While jobs finish quickly, a worker claims several at once (up to
    `prefetch`, sized so that a batch takes about 200 ms) and records their
    outcomes together: fewer round trips and commits per job. It starts with one
    job per claim and grows the batch only as far as jobs stay short. Where the
    storage says it pays (`Capabilities.claims_ahead`: PostgreSQL, MySQL), the next
    batch is claimed on a helper thread while the current one runs. Jobs
    claimed but not started go back to the queue, untouched (`attempts` as it
    was), when the worker stops, when the job ahead of them runs longer than
    `heartbeat_interval`, or when half their lease has gone by. Completions are
    written when the batch is done, or a few milliseconds into the next job, so a
    job shows `completed` a little after its handler returned. `prefetch=1` claims
    and records one job at a time.

    Several workers may share one `JobQueue` in one process; each runs one job at a
    time, unless `concurrency` lets it run several `async def` jobs at once.

    Args:
        queue: Where jobs and handlers come from.
        poll_interval: Seconds to wait after the first empty poll.
        max_poll_interval: Longest wait between polls.
        job_queue: Another name for `queue` (the one dbjobq 0.1 used); give one of
            the two.
        queues: Queue names to take jobs from; defaults to `[queue.default_queue]`.
        types: Take only jobs of these types (each must have a handler on `queue`);
            defaults to every type with a handler.
        lifo: Within a priority, take the newest due job first instead of the
            oldest. Needs a storage whose `claim` takes `newest_first`.
        rescue_orphans: When starting, rescue at once the jobs held by workers of
            this host whose process has ended (see `Worker.start`), instead of
            leaving them until their leases expire.
        lease_seconds: Length of a lease; a job of a dead worker is rescued this long
            after its last heartbeat.
        heartbeat_interval: Seconds between lease renewals; defaults to
            `lease_seconds / 3`.
        worker_id: Identifies this worker in job records; defaults to
            `host:pid:random`. Unique among running workers.
        max_jobs: Stop by itself after this many jobs (`None`: run until stopped).
        prefetch: The most jobs claimed at once. A storage whose
            `capabilities` lack `release` gets 1.
        concurrency: How many jobs the worker runs at once (1 to 1000). Above 1,
            `async def` handlers run side by side as tasks of one event loop,
            each job with its own lease, heartbeat, timeout and outcome; sync
            handlers still run one at a time, on the worker's handler thread,
            alongside them. Jobs are then claimed as slots free up, not in
            batches (`prefetch` is not used).

    Raises:
        ConfigurationError: If an option is out of range, a type in `types` has no
            handler, or `lifo=True` is asked of a storage that cannot claim newest
            first.
    """

    def __init__(
        self,
        queue: JobQueue | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 10.0,
        *,
        job_queue: JobQueue | None = None,
        queues: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        lifo: bool = False,
        rescue_orphans: bool = True,
        lease_seconds: float = 30.0,
        heartbeat_interval: float | None = None,
        worker_id: str | None = None,
        max_jobs: int | None = None,
        prefetch: int = 256,
        concurrency: int = 1,
    ) -> None:
        options = Options.checked(
            queue if job_queue is None or queue is not None else job_queue,
            twice=job_queue is not None and queue is not None,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            queues=queues,
            types=types,
            lifo=lifo,
            rescue_orphans=rescue_orphans,
            lease_seconds=lease_seconds,
            heartbeat_interval=heartbeat_interval,
            worker_id=worker_id,
            max_jobs=max_jobs,
            prefetch=prefetch,
            concurrency=concurrency,
        )
        self.queue: JobQueue = options.queue
        self.types = options.types
        self._types = None if self.types is None else frozenset(self.types)
        self.lifo = options.lifo
        self.rescue_orphans = options.rescue_orphans
        self.concurrency = options.concurrency
        self.queues: tuple[str, ...] = options.queues
        self.poll_interval = options.poll_interval
        self.max_poll_interval = options.max_poll_interval
        self.lease_seconds = options.lease_seconds
        self.heartbeat_interval = options.heartbeat_interval
        self.max_jobs = options.max_jobs
        self.prefetch = options.prefetch
        self.id = options.worker_id
        self._stopping = threading.Event()
        self._ended = threading.Event()  # the loop has returned (start() or run())
        self._own_thread = False  # whether _thread was started by start()
        self._begun_before: frozenset[str] = frozenset()  # see upkeep.note_begun
        self._signals = 0
        self._thread: threading.Thread | None = None
        self._hooks = Hooks()
        self._started_at = _clock.now()
        self._assemble()

    def _assemble(self) -> None:
        """Make the worker's parts (see `dbjobq._work`)."""
        queue, storage = self.queue, self.queue.storage
        self._waiter = Waiter(self.queues, self._handled)
        self._upkeep = Upkeep(
            storage,
            self.id,
            self.info,
            queue.registry.first_retry_delay,
            rescue_interval=max(1.0, self.poll_interval),
        )
        self._poll = PollStep(self._upkeep, self._emit)
        claims = Claims(
            storage,
            self.id,
            self.queues,
            self._handled,
            self.lease_seconds,
            self.lifo,
            queue.registry.limits,
        )
        self._claims = claims
        ahead = self.prefetch > 1 and storage.capabilities.claims_ahead
        self._batch = Batch(claims, self.prefetch, self._left, ahead)
        write_errors = Throttle()
        self._completer = Completer(
            storage, self.id, self._emit, lambda: self._execution.stop_deadline, write_errors
        )
        self._execution = Execution(
            queue,
            self.id,
            self.heartbeat_interval,
            self.concurrency,
            batch=self._batch,
            completer=self._completer,
            upkeep=self._upkeep,
            write_errors=write_errors,
            emit=self._emit,
            wake=self._waiter.event,
        )
        self._slots = Slots(
            self._execution,
            self._poll,
            self._waiter,
            self.concurrency,
            (self.poll_interval, self.max_poll_interval),
            self._left,
        )

    def _handled(self) -> Collection[str]:
        """The job types this worker claims (not a copy: enqueues ask it each time)."""
        if self._types is not None:
            return self._types
        return self.queue.registry.types()

    def _left(self) -> int | None:
        """How many more jobs this worker may take (`max_jobs`); `None`: no limit."""
        return None if self.max_jobs is None else self.max_jobs - self._completer.processed

    @property
    def jobs_processed(self) -> int:
        """How many jobs this worker has processed (their outcome settled)."""
        return self._completer.processed

    @jobs_processed.setter
    def jobs_processed(self, value: int) -> None:
        self._completer.processed = value

    @property
    def rescue_interval(self) -> float:
        """Seconds between looks for expired leases."""
        return self._upkeep.rescue_interval

    @rescue_interval.setter
    def rescue_interval(self, value: float) -> None:
        self._upkeep.rescue_interval = value

    @property
    def _idle(self) -> bool:
        """Whether the worker waits for work right now (tests watch it)."""
        return self._waiter.idle

    @property
    def _stop_deadline(self) -> float | None:
        return self._execution.stop_deadline

    def __repr__(self) -> str:
        state = "running" if self.is_alive else "stopped"
        return f"<Worker {self.id} queues={list(self.queues)} {state}>"

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- public API -------------------------------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, hook: H) -> H: ...

    def on(self, event: str, hook: H | None = None) -> H | Callable[[H], H]:
        """Run `hook(event)` whenever `event` happens in this worker.

        Like `JobQueue.on`, for one worker; see `dbjobq.events`.

        Raises:
            ConfigurationError: If the event name is unknown.
        """
        if hook is None:
            return lambda fn: self._hooks.on(event, fn)
        return self._hooks.on(event, hook)

    def _emit(self, name: str, job: Job | None = None, **fields: Any) -> None:
        if job is not None and name == "job:completed":
            self.queue.waits.finished(job.id)  # the outcome is written: wake its waiters
        elif job is not None and name == "job:failed" and not fields.get("will_retry"):
            # Its waiting children may have been cancelled with it: wake every waiter.
            self.queue.waits.finished_anywhere()
        hooks = self.queue.hooks
        if self._hooks or hooks:
            event = Event(name=name, worker_id=self.id, job=job, **fields)
            hooks.emit(event)
            self._hooks.emit(event)

    def info(self) -> WorkerInfo:
        """This worker's registry record (see `JobQueue.list_workers`)."""
        current = self._execution.current
        return WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            types=tuple(sorted(self._handled())),
            started_at=self._started_at,
            current_job=None if current is None else current.id,
            jobs_processed=self.jobs_processed,
        )

    @property
    def current_job(self) -> Job | None:
        """The job being processed right now, as claimed; `None` when idle.

        Its `max_retries` and `timeout` are the values it runs with (see
        `JobContext.job`). With `concurrency` above 1, the job started last among
        those running.
        """
        job = self._execution.current
        return None if job is None else self.queue.registry.effective(job)

    @property
    def is_alive(self) -> bool:
        """Whether the worker is running: its thread, or `run()` in the calling thread."""
        thread = self._thread
        return thread is not None and not self._ended.is_set() and thread.is_alive()

    @property
    def _worker_thread(self) -> threading.Thread:
        """The thread that runs the loop; no such attribute before `start()`/`run()`.

        The name dbjobq 0.1's documentation used in its health checks. Prefer
        `is_alive`: after `run()` returns, this is still the (live) calling thread.
        """
        if self._thread is None:
            raise AttributeError(f"worker {self.id} was not started")
        return self._thread

    def start(self) -> None:
        """Start the worker thread (a daemon) and return at once.

        Before taking jobs or saving its own registry record, the worker looks for
        workers of its own host that are gone (see `rescue_orphans`): registry
        records with this hostname whose process no longer exists, and which
        either were not saved for 15 seconds (a live worker saves its record every
        5) or have this worker's own id (its predecessor, restarted with the same
        `worker_id`). The jobs they held are rescued at once, as if their leases
        had expired (the attempt counts), and their records are removed. A storage
        whose `capabilities` lack `rescue_workers` leaves such jobs to lease expiry.

        Raises:
            RuntimeError: If the worker was started before; create a new `Worker`.
            StorageError: If the storage cannot be reached to create its tables.
        """
        thread = threading.Thread(target=self._loop, name=f"dbjobq-worker-{self.id}", daemon=True)
        self._begin(thread)
        self._own_thread = True
        thread.start()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run the worker in the calling thread, until it is stopped; then return.

        The same loop as `start()`'s thread, for scripts and `__main__` blocks that
        have nothing else to do. It returns once `stop()` was called (from another
        thread, a hook or a signal) and the current job is done, or after
        `max_jobs`.

        Called on the main thread, it handles SIGINT (Ctrl-C) and SIGTERM while it
        runs, and restores the previous handlers when it returns: the first signal
        stops the worker as `stop()` does (30 s for the current job), a second one
        stops waiting for it (its lease then expires and another worker rescues
        it). Without this a Ctrl-C would raise `KeyboardInterrupt` in the middle
        of the loop and leave the current job to lease expiry.

        Args:
            install_signal_handlers: `False` leaves signal handling alone.

        Raises:
            RuntimeError: If the worker was started before; create a new `Worker`.
            StorageError: If the storage cannot be reached to create its tables.
        """
        self._begin(threading.current_thread())
        previous: dict[int, Any] = {}
        if install_signal_handlers and self._thread is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}
        try:
            self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _begin(self, thread: threading.Thread) -> None:
        """What start() and run() do first: refuse a second start, create the tables."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.id} was already started")
        self.queue.initialize()
        self._begun_before = note_begun(self.id)
        self._thread = thread
        self.queue.wakeups.attach(self._waiter)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        timeout = 30.0 if self._signals == 1 else 0.0
        # A signal handler runs between two bytecodes of the loop, which may hold
        # the lock of one of the events stop() sets: set them from another thread.
        threading.Thread(
            target=self.stop,
            args=(timeout,),
            kwargs={"wait": False},
            name=f"dbjobq-signal-{self.id}",
            daemon=True,
        ).start()

    def stop(self, timeout: float | None = 30.0, *, wait: bool = True) -> bool:
        """Stop taking jobs and wait for the current one to finish.

        Wakes a sleeping worker at once. If the current job is still running when
        `timeout` seconds have passed, its `JobContext.cancelled` is set (with
        `cancel_reason` `shutdown`) and it gets one more second to stop: if its
        handler then raises (`JobContext.raise_if_cancelled`), the job goes back to
        `pending` without using an attempt; if it returns, its result is recorded as
        usual. After that the worker gives up on it: its lease is no longer renewed,
        its outcome will be discarded, and once the lease expires another worker
        rescues the job.

        Safe to call several times, and before `start()`. A later call with a
        shorter timeout brings the deadline forward; a longer one (or `None`) does
        not push it back.

        Args:
            timeout: Seconds to wait for the current job; `None` waits for as long
                as it takes.
            wait: `False` returns at once, without waiting for the thread to end;
                the worker still stops as described. See also `Worker.stop_all`.

        Returns:
            `True` if the worker thread has ended, `False` if it is still busy: with
            `wait=False`, or after the timeout (for example while blocked on an
            unreachable database).
        """
        thread = self._thread
        if thread is None:
            return True
        if timeout is not None:
            deadline = time.monotonic() + min(max(0.0, timeout), LONGEST * 365)
            execution = self._execution
            if execution.stop_deadline is None or deadline < execution.stop_deadline:
                execution.stop_deadline = deadline
        self._stopping.set()
        self._waiter.wake()
        self._execution.signal.set()
        if wait:
            if self._stop_deadline is None:
                self._wait_ended(thread, None)
            else:
                left = max(0.0, self._stop_deadline - time.monotonic()) + GRACE + 0.5
                self._wait_ended(thread, left)
        return not self.is_alive

    def _wait_ended(self, thread: threading.Thread, timeout: float | None) -> None:
        if thread is threading.current_thread():
            return  # stop() from a hook or a signal handler of the loop's own thread
        if self._own_thread:
            thread.join(timeout)
        else:
            self._ended.wait(timeout)  # run()'s caller goes on living after the loop

    @staticmethod
    def stop_all(workers: Iterable[Worker], timeout: float | None = 30.0) -> bool:
        """Stop several workers side by side, within one `timeout` for all of them.

        Stopping workers one after the other would take longer, and the ones not yet
        told to stop would keep taking new jobs meanwhile.

        Args:
            workers: The workers to stop.
            timeout: As for `stop`, counted once for all the workers.

        Returns:
            `True` if every worker thread has ended.
        """
        workers = list(workers)
        for worker in workers:
            worker.stop(timeout, wait=False)
        return all([worker.stop(timeout) for worker in workers])

    def run_until_empty(self) -> int:
        """Process jobs in the calling thread until none is due, then return.

        Meant for tests and scripts: no thread is started.

        Returns:
            How many jobs were processed.

        Raises:
            RuntimeError: If the worker thread is running.
        """
        if self.is_alive:
            raise RuntimeError("run_until_empty() cannot be used while the worker runs")
        self.queue.initialize()
        before = self.jobs_processed
        self._upkeep.rescue_soon()  # always look for expired leases first
        try:
            self._serve(drain=True)
        finally:
            self._wind_down("run_until_empty() ended")
            self._upkeep.save_now()  # the record says it runs nothing now
        return self.jobs_processed - before

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        """The worker's life, in start()'s thread or run()'s caller."""
        try:
            if self.rescue_orphans:
                self._upkeep.rescue_orphans(self._begun_before)
            self._run()
        finally:
            self.queue.wakeups.detach(self._waiter)
            self._ended.set()

    def _run(self) -> None:
        logger.info("worker %s started on queues %s", self.id, ", ".join(self.queues))
        if not self.queue.registry.types():
            logger.warning("worker %s has no handlers registered: it will take no jobs", self.id)
        handlers = self._handled()
        schedules = self.queue.registry.schedules.values()
        self._upkeep.take_part(
            [s for s in schedules if s.queue in self.queues and s.type in handlers]
        )
        self._batch.allow_ahead(True)
        self._poll.live = True
        self._emit("worker:started")
        try:
            self._serve(drain=False)
        except BaseException:
            logger.critical("worker %s crashed", self.id, exc_info=True)
            raise
        finally:
            self.queue.wakeups.detach(self._waiter)
            self._poll.live = False
            self._batch.allow_ahead(False)
            self._wind_down("the worker stopped")
            self._upkeep.remove_record()
            logger.info("worker %s stopped after %d job(s)", self.id, self.jobs_processed)
            self._emit("worker:stopped")

    def _serve(self, *, drain: bool) -> None:
        """Poll and run jobs until stopped, or (`drain`) until none is due.

        Each round is one `PollStep` (upkeep that is due, then a claim). One job
        at a time, the claimed batch then runs here; side by side, `Slots` polls
        through the same step as slots free up.
        """
        if self.concurrency > 1:
            if not self._stopping.is_set() and not self._reached_max_jobs():
                self._slots.serve(self._stopping, drain=drain)
            return
        delay = self.poll_interval
        while not self._stopping.is_set() and not self._reached_max_jobs():
            self._waiter.event.clear()
            try:
                jobs = self._poll(self._batch.claim)
            except Exception as error:  # StorageError, or a bug: back off
                if drain:
                    raise
                self._poll.failed(error)
                self._idle_wait(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.max_poll_interval)
                continue
            if not drain:
                self._poll.recovered()
            if not jobs:
                if drain:
                    return
                logger.debug("worker %s: no job; next poll in %.3fs", self.id, delay)
                self._idle_wait(delay)
                longest = self._claims.longest_wait(self.max_poll_interval, self.poll_interval)
                delay = min(delay * 2, longest)
                continue
            delay = self.poll_interval
            _faults.reach("after_claim")
            self._execution.run_batch(jobs, self._stopping)

    def _wind_down(self, why: str) -> None:
        """Give back the jobs not started, write held outcomes, let runners go."""
        self._batch.release(why)
        self._completer.flush()
        self._execution.retire()

    def _reached_max_jobs(self) -> bool:
        return self.max_jobs is not None and self.jobs_processed >= self.max_jobs

    def _idle_wait(self, seconds: float) -> None:
        """Wait before the next poll; wake early on a wake-up, stop, or a due tick.

        The registry record is refreshed meanwhile without polling, so that the
        adaptive back-off between polls stays as documented.
        """
        deadline = time.monotonic() + seconds
        waiter, upkeep = self._waiter, self._upkeep
        waiter.idle = True
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                until = min(deadline, upkeep.next_save(), upkeep.next_tick)
                if waiter.event.wait(max(0.0, until - now)):
                    return
                now = time.monotonic()
                if now >= deadline or now >= upkeep.next_tick:
                    return
                upkeep.save_if_due()
        finally:
            waiter.idle = False
