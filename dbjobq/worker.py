"""Worker: a daemon thread that claims jobs and runs their handlers."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
import random
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any, overload

from dbjobq import _clock, _faults
from dbjobq._checks import check_name
from dbjobq._runner import Attempt, LoopRunner, Runner
from dbjobq.context import CancelReason, JobContext
from dbjobq.errors import (
    ConfigurationError,
    InvalidJobError,
    JobError,
    JobTimeoutError,
    PayloadError,
    StorageError,
)
from dbjobq.events import Event, H, Hooks
from dbjobq.job import Job
from dbjobq.payload import checked_dumps
from dbjobq.periodic import Ticker
from dbjobq.queue import JobQueue
from dbjobq.registry import WorkerInfo

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

_GRACE = 1.0  # seconds a cancelled handler gets to return before its thread is abandoned
_LONGEST = 86400.0  # upper bound of intervals and leases: catches unit mistakes
_REGISTRY_EVERY = 5.0  # seconds between saves of a worker's registry record
_REGISTRY_CHANGED = 1.0  # ... or after its current job changed
_FORGET_AFTER = 86400.0  # seconds after which a silent worker's record is deleted
# A record of another worker id counts as orphaned only once it is this many seconds
# old (storage clock): a live worker saves its record every _REGISTRY_EVERY seconds,
# so it does not get this old, even where the pid is invisible to us (another pid
# namespace with the same hostname). Well under the default 30 s lease. Tests shorten
# it (monkeypatch) rather than wait.
_ORPHAN_AFTER = 3 * _REGISTRY_EVERY
_BATCH_SECONDS = 0.2  # a batch of claimed jobs should take about this long to run
_FLUSH_AFTER = 0.005  # seconds into a handler after which earlier outcomes are written
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_AHEAD_FROM = 16  # batches at least this big have the next one claimed ahead
# Ids of the workers begun in this process. A registry record with this process's pid
# belongs to an earlier process that had the same pid (a restarted container's pid 1)
# only if no worker of this process had its id: clocks are not compared, since they
# may be skewed or stepped, and a sibling worker must never lose its jobs.
_BEGUN_HERE: set[str] = set()
_BEGUN_LOCK = threading.Lock()


def _process_gone(info: WorkerInfo, begun_here: Collection[str] = ()) -> bool:
    """Whether the process of a registry record of this host no longer exists.

    `begun_here`: ids of workers this process has begun (before the one asking).
    """
    if os.name != "posix" or isinstance(info.pid, bool) or info.pid <= 0:
        return False  # no way to tell here (and os.kill(pid, 0) is no probe on Windows)
    if info.pid == os.getpid():
        return info.id not in begun_here
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, as another user's process
        return False
    return False


def _extra(job: Job) -> dict[str, str]:
    """Attributes that put the job on a log record, for structured formatters."""
    return {"job_id": job.id, "job_type": job.type}


@dataclasses.dataclass
class _Lease:
    """A claimed job, its fencing token, and until when (monotonic) we hold it."""

    job: Job
    token: str
    until: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    ended: float = 0.0


class _Throttle:
    """Log a repeating error in full once, then at most every `every` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.failures = 0
        self._last = -math.inf

    def failed(self, what: str, error: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            logger.error("%s failed: %s", what, error, exc_info=error)
            self._last = now
        elif now - self._last >= self.every:
            logger.error("%s still failing (%d times): %s", what, self.failures, error)
            self._last = now

    def recovered(self, what: str) -> None:
        if self.failures:
            logger.warning("%s recovered after %d failures", what, self.failures)
            self.failures = 0


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
        prefetch: The most jobs claimed at once. A storage without
            `Storage.release` gets 1.
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
        if job_queue is not None:
            if queue is not None:
                raise ConfigurationError("give the JobQueue once: as queue or as job_queue")
            queue = job_queue
        if not isinstance(queue, JobQueue):
            raise ConfigurationError(f"Worker needs a JobQueue, got {type(queue).__name__}")
        self.types = self._checked_types(queue, types)
        self._types = None if self.types is None else frozenset(self.types)
        for what, flag in (("lifo", lifo), ("rescue_orphans", rescue_orphans)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{what} must be True or False, got {flag!r}")
        if lifo and not queue.storage.capabilities.newest_first:
            raise ConfigurationError(
                f"lifo=True needs a storage whose claim() takes newest_first; "
                f"{type(queue.storage).__name__}.claim does not"
            )
        self.lifo = lifo
        self.rescue_orphans = rescue_orphans
        names = [queue.default_queue] if queues is None else list(queues)
        if isinstance(queues, str) or not names:
            raise ConfigurationError(f"queues must be a non-empty list of names, got {queues!r}")
        try:
            for name in names:
                check_name(name, "queue name")
            if worker_id is not None:
                check_name(worker_id, "worker_id")
        except InvalidJobError as error:
            raise ConfigurationError(str(error)) from None
        for what, value in (
            ("poll_interval", poll_interval),
            ("max_poll_interval", max_poll_interval),
            ("lease_seconds", lease_seconds),
            ("heartbeat_interval", heartbeat_interval),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0 < value <= _LONGEST
            ):
                raise ConfigurationError(
                    f"{what} must be a positive number of seconds (at most a day), got {value!r}"
                )
        if max_poll_interval < poll_interval:
            raise ConfigurationError("max_poll_interval must not be less than poll_interval")
        heartbeat_interval = heartbeat_interval or lease_seconds / 3
        if heartbeat_interval >= lease_seconds:
            raise ConfigurationError("heartbeat_interval must be shorter than lease_seconds")
        if max_jobs is not None and (
            isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1
        ):
            raise ConfigurationError(f"max_jobs must be a positive int, got {max_jobs!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigurationError(f"prefetch must be a positive int, got {prefetch!r}")
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= 1000
        ):
            raise ConfigurationError(
                f"concurrency must be an int from 1 to 1000, got {concurrency!r}"
            )
        self.concurrency = concurrency
        self._loop_runner: LoopRunner | None = None  # async handlers, with concurrency > 1
        self._next_beat = 0.0  # when (monotonic) the running jobs' leases are renewed
        self.queue = queue
        self.queues: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_interval = float(heartbeat_interval)
        self.max_jobs = max_jobs
        releases = queue.storage.capabilities.release
        self._releases = releases  # whether claimed jobs can be given back
        # Passed only when asked: a storage whose claim() lacks newest_first still works.
        self._order: dict[str, bool] = {"newest_first": True} if lifo else {}
        self.prefetch = prefetch if releases else 1
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.rescue_interval = max(1.0, self.poll_interval)
        self.jobs_processed = 0
        self._current: Job | None = None
        self._batch: collections.deque[Job] = collections.deque()  # claimed, not started
        self._claimed_at = 0.0  # when (monotonic) the batch was claimed
        self._done: list[tuple[_Lease, Any]] = []  # completed; outcome not written yet
        self._deferred = False  # whether the current job's outcome went into _done
        self._given_up = 0  # outcomes not written in the current storage outage
        self._ahead: dict[str, Attempt] = {}  # attempts of the batch, handed to the runner
        self._per_job: float | None = None  # seconds per job in the last batch
        self._last_batch = 1
        self._requested = 1  # jobs asked for by the latest claim
        self._next_batch: concurrent.futures.Future[tuple[list[Job], float]] | None = None
        self._ahead_allowed = False  # claim ahead: only in the worker thread's loop
        self._stopping = threading.Event()
        self._ended = threading.Event()  # the loop has returned (start() or run())
        self._own_thread = False  # whether _thread was started by start()
        self._begun_before: frozenset[str] = frozenset()  # see _BEGUN_HERE
        self._signals = 0
        self._wake = threading.Event()
        self._signal = threading.Event()  # wakes _watch: handler returned, or stop()
        self._idle = False
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._runner: Runner | None = None
        self._runners = 0
        self._hooks = Hooks()
        self._ticker: Ticker | None = None
        self._next_tick = -math.inf
        self._last_saved = -math.inf
        self._info_dirty = True
        self._last_pruned = -math.inf
        self._started_at = _clock.now()
        self._last_rescue = -math.inf
        self._poll_errors = _Throttle()
        self._write_errors = _Throttle()
        self._registry_errors = _Throttle()

    @staticmethod
    def _checked_types(queue: JobQueue, types: Iterable[str] | None) -> tuple[str, ...] | None:
        if types is None:
            return None
        names = [] if isinstance(types, str) else list(types)
        if not names or not all(isinstance(name, str) for name in names):
            raise ConfigurationError(f"types must be a non-empty list of job types, got {types!r}")
        unknown = sorted(set(names) - set(queue._handlers))
        if unknown:
            known = ", ".join(sorted(queue._handlers)) or "none"
            raise ConfigurationError(
                f"types {unknown} have no handler on this JobQueue (it has: {known})"
            )
        return tuple(dict.fromkeys(names))

    def _handled(self) -> Collection[str]:
        """The job types this worker claims (not a copy: enqueues ask it each time)."""
        if self._types is not None:
            return self._types
        return self.queue._handlers.keys()

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
        if self._hooks or self.queue._hooks:
            event = Event(name=name, worker_id=self.id, job=job, **fields)
            self.queue._hooks.emit(event)
            self._hooks.emit(event)

    def info(self) -> WorkerInfo:
        """This worker's registry record (see `JobQueue.list_workers`)."""
        current = self._current
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

    def _next_save(self) -> float:
        """When (monotonic) the registry record is due to be saved again."""
        return self._last_saved + (_REGISTRY_CHANGED if self._info_dirty else _REGISTRY_EVERY)

    def _save_info_if_due(self) -> None:
        """Keep this worker's registry record fresh (and prune dead workers' hourly).

        Saved every few seconds, and about a second after the current job changed:
        current without a write per job.
        """
        now = time.monotonic()
        if now < self._next_save():
            return
        self._info_dirty = False
        self._last_saved = now
        storage = self.queue.storage
        try:
            storage.save_worker(self.info())
            if now - self._last_pruned >= 3600:
                self._last_pruned = now
                storage.prune_workers(older_than=_FORGET_AFTER)
        except StorageError as error:
            self._registry_errors.failed(f"worker {self.id}: saving its registry record", error)
            return
        self._registry_errors.recovered(f"worker {self.id}: saving its registry record")

    def _tick_if_due(self) -> None:
        """Enqueue due ticks of the schedules this worker takes part in."""
        if self._ticker is None or time.monotonic() < self._next_tick:
            return
        wait = self._ticker.run()
        # A little after the tick, so that it is due on the storage's clock too.
        self._next_tick = time.monotonic() + wait + 0.005

    @property
    def current_job(self) -> Job | None:
        """The job being processed right now, as claimed; `None` when idle.

        Its `max_retries` and `timeout` are the values it runs with (see
        `JobContext.job`). With `concurrency` above 1, the job started last among
        those running.
        """
        job = self._current
        return None if job is None else self.queue._effective(job)

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
        without `Storage.rescue_workers` leaves such jobs to lease expiry.

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
        with _BEGUN_LOCK:
            self._begun_before = frozenset(_BEGUN_HERE)
            _BEGUN_HERE.add(self.id)
        self._thread = thread
        self.queue._attach(self)

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

    def _loop(self) -> None:
        """The worker's life, in start()'s thread or run()'s caller."""
        try:
            if self.rescue_orphans:
                self._rescue_orphans()
            self._run()
        finally:
            self._ended.set()

    def _rescue_orphans(self) -> None:
        """Rescue the jobs of this host's workers whose process is gone."""
        storage = self.queue.storage
        if not storage.capabilities.rescue_workers or os.name != "posix":
            return
        host = socket.gethostname()
        try:
            records = [
                w
                for w in storage.list_workers(seen_within=_FORGET_AFTER)
                if w.hostname == host and _process_gone(w, self._begun_before)
            ]
            if not records:
                return  # the usual start: no second look at the registry
            # Asked after the first list: a record saved in between counts as fresh.
            fresh = {w.id for w in storage.list_workers(seen_within=_ORPHAN_AFTER)}
            gone = [
                w.id
                for w in records
                # Our own id is our predecessor's (ids are unique among running
                # workers), however recent: a restart with the same --worker-id.
                if w.id == self.id or w.id not in fresh
            ]
            if not gone:
                return
            rescued = storage.rescue_workers(gone, retry_in=self.queue.retry_policy.delay(1))
            for worker_id in gone:
                storage.remove_worker(worker_id)
        except Exception as error:  # noqa: BLE001 - leases still expire: nothing is lost
            logger.warning(
                "worker %s: could not rescue the jobs of workers gone from this host: %s",
                self.id,
                error,
            )
            return
        logger.warning(
            "worker %s: %d worker(s) of this host are gone (%s); rescued %d job(s) they held",
            self.id,
            len(gone),
            ", ".join(gone),
            rescued,
        )

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
            deadline = time.monotonic() + min(max(0.0, timeout), _LONGEST * 365)
            if self._stop_deadline is None or deadline < self._stop_deadline:
                self._stop_deadline = deadline
        self._stopping.set()
        self._wake.set()
        self._signal.set()
        if wait:
            if self._stop_deadline is None:
                self._wait_ended(thread, None)
            else:
                left = max(0.0, self._stop_deadline - time.monotonic()) + _GRACE + 0.5
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
        self._last_rescue = -math.inf  # always look for expired leases first
        try:
            while not self._stopping.is_set() and not self._reached_max_jobs():
                if self.concurrency > 1:
                    self._serve_concurrently(drain=True)
                    break
                self._rescue_if_due()
                jobs = self._claim()
                if not jobs:
                    break
                _faults.reach("after_claim")
                self._run_batch(jobs)
        finally:
            self._release_batch("run_until_empty() ended")
            self._flush()
            if self._runner is not None:
                self._runner.retire()
                self._runner = None
            if self._loop_runner is not None:
                self._loop_runner.retire()
                self._loop_runner = None
        return self.jobs_processed - before

    # -- the loop ---------------------------------------------------------------------

    def _wants(self, wanted: set[tuple[str, str]]) -> bool:
        handlers = self._handled()
        return any(q in self.queues and t in handlers for q, t in wanted)

    def _reached_max_jobs(self) -> bool:
        return self.max_jobs is not None and self.jobs_processed >= self.max_jobs

    def _batch_size(self, last: int, in_hand: int = 0) -> int:
        """How many jobs to claim: as many as run in about `_BATCH_SECONDS`.

        Starts at one and at most doubles from one batch (`last` jobs) to the next,
        so that a worker does not hoard slow jobs that other workers could run.
        `in_hand` jobs, claimed and not yet run, count against `max_jobs`; the
        result is below 1 when they use it up.
        """
        n = 1
        if self.prefetch > 1 and self._per_job is not None:
            fits = int(_BATCH_SECONDS / max(self._per_job, 1e-6))
            n = max(1, min(self.prefetch, fits, 2 * last))
        if self.max_jobs is not None:
            n = min(n, self.max_jobs - self.jobs_processed - in_hand)
        return n

    def _claim(self) -> list[Job]:
        ahead = self._take_ahead()
        if ahead is None:
            self._requested = max(1, self._batch_size(self._last_batch))
            ahead = self._claim_jobs(self._requested)
        jobs, self._claimed_at = ahead
        self._last_batch = max(1, len(jobs))
        return jobs

    def _claim_jobs(self, limit: int) -> tuple[list[Job], float]:
        """Claim up to `limit` jobs; with the time (monotonic) their leases began."""
        types = set(self._handled())  # a copy: handlers may be registered meanwhile
        if not types:
            return [], time.monotonic()
        began = time.monotonic()
        return self._claim_of(types, limit), began

    def _claim_of(self, types: Collection[str], limit: int) -> list[Job]:
        """Claim up to `limit` due jobs of these types from this worker's queues."""
        return self.queue._store().claim(
            queues=self.queues,
            types=types,
            worker_id=self.id,
            lease_seconds=self.lease_seconds,
            limit=limit,
            **self._order,
        )

    def _claim_ahead(self, jobs: list[Job]) -> None:
        """Start claiming the next batch in the background while `jobs` run.

        Only while batches come back full (the queue has more) and the storage's
        claims wait on a server: the wait then overlaps this thread's own work.
        """
        if (
            not self._ahead_allowed
            or self._stopping.is_set()
            or len(jobs) < _AHEAD_FROM
            or len(jobs) < self._requested
        ):
            return
        limit = self._batch_size(len(jobs), in_hand=len(jobs))
        if limit < 1:
            return
        self._requested = limit
        future: concurrent.futures.Future[tuple[list[Job], float]] = concurrent.futures.Future()

        def claim() -> None:
            try:
                future.set_result(self._claim_jobs(limit))
            except BaseException as error:  # noqa: BLE001 - handed to the worker thread
                future.set_exception(error)

        # A daemon thread per batch (not a pool): like the worker, it must never hold
        # up the interpreter's exit, even while a claim waits on a lost database.
        threading.Thread(target=claim, name=f"dbjobq-claim-{self.id}", daemon=True).start()
        self._next_batch = future

    def _take_ahead(self) -> tuple[list[Job], float] | None:
        """The batch claimed ahead, once it is in; `None` if there is none."""
        future, self._next_batch = self._next_batch, None
        if future is None:
            return None
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - the claim is simply made again
            logger.debug("worker %s: claiming ahead failed: %s", self.id, error)
            return None

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run claimed jobs one after the other, and record their outcomes.

        The handlers of the whole batch are handed to the runner thread at once, so
        it goes from one to the next while this thread watches and records.
        """
        self._batch.extend(jobs)
        if len(jobs) > 1:
            for job in jobs:
                if self._exhausted(job):
                    continue  # settled by _run_job, never run
                attempt = self._attempt(job)
                if attempt is not None:
                    self._ahead[job.id] = attempt
                    self._submit(attempt)
            self._claim_ahead(jobs)
        began, ran = time.monotonic(), 0
        while self._batch:
            if self._stopping.is_set():
                self._release_batch("the worker is stopping")
            elif time.monotonic() - self._claimed_at > self.lease_seconds / 2:
                self._release_batch("their leases are half gone")
            if not self._batch:
                break
            job = self._batch.popleft()
            ran += 1
            try:
                self._process(job)
            except Exception as error:  # a bug of ours must not end the worker
                logger.exception(
                    "worker %s: error while processing job %s", self.id, job.id, extra=_extra(job)
                )
                self._fail_after_bug(job, error)
        self._flush()
        if ran:
            self._per_job = (time.monotonic() - began) / ran

    def _release_batch(self, why: str) -> None:
        """Give back the claimed jobs not started yet; their leases expire otherwise.

        Jobs whose handler the runner has already started stay in the batch, to be
        watched and recorded as usual. A batch claimed ahead goes back whole.
        """
        ahead = self._take_ahead()
        if ahead is not None and ahead[0]:
            self._batch.extend(ahead[0])
        if not self._batch:
            return
        storage = self.queue.storage
        jobs, started = [], []
        for job in self._batch:
            attempt = self._ahead.get(job.id)
            if attempt is None or attempt.skip():
                self._ahead.pop(job.id, None)
                jobs.append(job)
            else:
                started.append(job)
        self._batch = collections.deque(started)
        if not jobs:
            return
        try:
            released = sum(storage.release_many([(j.id, j.lease_token or "") for j in jobs]))
        except StorageError as error:
            logger.warning(
                "worker %s: could not give back %d unstarted job(s) (%s); they will be "
                "rescued when their leases expire",
                self.id,
                len(jobs),
                error,
            )
            return
        logger.debug("worker %s gave back %d unstarted job(s): %s", self.id, released, why)

    def _rescue_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_rescue < self.rescue_interval:
            return
        self._last_rescue = now
        # Back off like a failed attempt: a job that killed its worker (out of memory,
        # a segfault) should not take down the next one at once.
        rescued = self.queue._store().rescue_expired(retry_in=self.queue.retry_policy.delay(1))
        if rescued:
            logger.warning("worker %s rescued %d job(s) with expired leases", self.id, rescued)

    def _idle_wait(self, seconds: float) -> None:
        """Wait before the next poll; wake early on a wake-up, stop, or a due tick.

        The registry record is refreshed meanwhile without polling, so that the
        adaptive back-off between polls stays as documented.
        """
        deadline = time.monotonic() + seconds
        self._idle = True
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                until = [deadline, self._next_save()]
                if self._ticker is not None:
                    until.append(self._next_tick)
                if self._wake.wait(max(0.0, min(until) - now)):
                    return
                now = time.monotonic()
                if now >= deadline or (self._ticker is not None and now >= self._next_tick):
                    return
                self._save_info_if_due()
        finally:
            self._idle = False

    def _run(self) -> None:
        logger.info("worker %s started on queues %s", self.id, ", ".join(self.queues))
        if not self.queue._handlers:
            logger.warning("worker %s has no handlers registered: it will take no jobs", self.id)
        handlers = self._handled()
        schedules = [
            s
            for s in self.queue._schedules.values()
            if s.queue in self.queues and s.type in handlers
        ]
        self._ticker = Ticker(self.queue.storage, schedules) if schedules else None
        self._ahead_allowed = self.prefetch > 1 and self.queue.storage.capabilities.claims_ahead
        self._emit("worker:started")
        delay = self.poll_interval
        try:
            while not self._stopping.is_set() and not self._reached_max_jobs():
                if self.concurrency > 1:  # jobs side by side: a loop of its own
                    self._serve_concurrently(drain=False)
                    break
                self._wake.clear()
                try:
                    self._save_info_if_due()
                    self._tick_if_due()
                    self._rescue_if_due()
                    jobs = self._claim()
                except Exception as error:  # noqa: BLE001 - StorageError, or a bug: back off
                    self._poll_errors.failed(f"worker {self.id}: polling", error)
                    self._emit("worker:error", error=f"{type(error).__name__}: {error}")
                    self._idle_wait(delay * (0.5 + random.random() / 2))
                    delay = min(delay * 2, self.max_poll_interval)
                    continue
                self._poll_errors.recovered(f"worker {self.id}: polling")
                if not jobs:
                    logger.debug("worker %s: no job; next poll in %.3fs", self.id, delay)
                    self._idle_wait(delay)
                    delay = min(delay * 2, self.max_poll_interval)
                    continue
                delay = self.poll_interval
                _faults.reach("after_claim")
                self._run_batch(jobs)
        except BaseException:
            logger.critical("worker %s crashed", self.id, exc_info=True)
            raise
        finally:
            self.queue._detach(self)
            self._ahead_allowed = False
            self._release_batch("the worker stopped")
            self._flush()
            if self._runner is not None:
                self._runner.retire()
            if self._loop_runner is not None:
                self._loop_runner.retire()
                self._loop_runner = None
            try:
                self.queue.storage.remove_worker(self.id)
            except Exception as error:  # noqa: BLE001 - the record will be pruned later
                logger.warning(
                    "worker %s: could not remove its registry record: %s", self.id, error
                )
            logger.info("worker %s stopped after %d job(s)", self.id, self.jobs_processed)
            self._emit("worker:stopped")

    # -- several jobs at once (concurrency > 1) -----------------------------------------

    def _serve_concurrently(self, *, drain: bool) -> None:
        """Run up to `concurrency` jobs at once until stopped (or, `drain`, until idle).

        Jobs are claimed as slots free up. Async handlers run as tasks of one event
        loop (`LoopRunner`); a sync handler runs on the runner thread, at most one at
        a time. This thread renews every lease, enforces timeouts and the stop
        deadline, and records each outcome. Handlers finishing, enqueues and `stop()`
        all set `_wake`, which is what it waits on.
        """
        flights: dict[str, _Lease] = {}
        attempts: dict[str, Attempt] = {}
        delay, next_poll = self.poll_interval, -math.inf
        self._next_beat = time.monotonic() + self.heartbeat_interval
        while True:
            self._wake.clear()
            self._settle(flights, attempts)
            stopping = self._stopping.is_set() or self._reached_max_jobs()
            if stopping and not flights:
                return
            now = time.monotonic()
            free = self.concurrency - len(flights)
            if self.max_jobs is not None:
                free = min(free, self.max_jobs - self.jobs_processed - len(flights))
            if not stopping and free > 0 and now >= next_poll:
                try:
                    self._save_info_if_due()
                    self._tick_if_due()
                    self._rescue_if_due()
                    jobs = self._claim_for_slots(free, attempts)
                except Exception as error:  # StorageError, or a bug: back off
                    if drain and not flights:
                        raise  # run_until_empty() reports it, as with one job at a time
                    self._poll_errors.failed(f"worker {self.id}: polling", error)
                    self._emit("worker:error", error=f"{type(error).__name__}: {error}")
                    next_poll = now + delay * (0.5 + random.random() / 2)
                    delay = min(delay * 2, self.max_poll_interval)
                else:
                    self._poll_errors.recovered(f"worker {self.id}: polling")
                    for job in jobs:
                        self._launch(job, flights, attempts)
                    if jobs:
                        delay = self.poll_interval
                    if len(jobs) < free:  # nothing more due for now
                        if drain and not flights:
                            return
                        next_poll = now + delay
                        delay = min(delay * 2, self.max_poll_interval)
                    continue  # settle what was launched, and fill what is left
            self._idle = not flights
            until = [self._next_save()]
            if not stopping and free > 0:
                until.append(next_poll)
                if self._ticker is not None:
                    until.append(self._next_tick)
            if flights:
                until.append(self._next_beat)
                for job_id, attempt in attempts.items():
                    timeout = self.queue._timeout(flights[job_id].job)
                    if timeout is not None and attempt.started_at is not None:
                        until.append(attempt.started_at + timeout)
                if self._stop_deadline is not None:
                    until.append(self._stop_deadline)
            if self._wake.wait(max(0.0, min(until) - time.monotonic())):
                next_poll = -math.inf  # a slot freed, an enqueue, or stop(): look again
            self._idle = False
            if not flights:
                self._save_info_if_due()

    def _claim_for_slots(self, free: int, attempts: dict[str, Attempt]) -> list[Job]:
        """Claim up to `free` jobs of this worker's types, priority first across all.

        Async jobs take any free slot; a sync job only the one sync slot, while no
        sync job runs. With that slot free, one claim over every handled type takes
        the `free` jobs first in line, whether async or sync; of the sync jobs among
        them the first is kept and the others are given back (`release_many`), and
        their slots go to the async jobs next in line. On a storage that cannot give
        jobs back, the claims go one job at a time until a sync job comes, so that
        none is claimed that cannot run.
        """
        handlers = self.queue._handlers
        types = set(self._handled())  # a copy: handlers may be registered meanwhile
        sync_types = {t for t in types if not handlers[t].is_async}  # types= are all handled
        async_types = types - sync_types
        began = time.monotonic()

        def claim(of: set[str], limit: int) -> list[Job]:
            return self._claim_of(of, limit) if of and limit >= 1 else []

        self._claimed_at = began
        sync_busy = any(not a.handler.is_async for a in attempts.values())
        if not sync_types or sync_busy:
            return claim(async_types, free)
        if self._releases:
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
            self.queue._store().release_many([(j.id, j.lease_token or "") for j in jobs])
        except StorageError as error:
            logger.warning(
                "worker %s: could not give back %d sync job(s) it cannot start yet (%s); "
                "they will be rescued when their leases expire",
                self.id,
                len(jobs),
                error,
            )

    def _launch(self, job: Job, flights: dict[str, _Lease], attempts: dict[str, Attempt]) -> None:
        """Start a claimed job's handler, or settle the job at once if it cannot run."""
        lease = _Lease(job, job.lease_token or "", self._claimed_at + self.lease_seconds)
        self._current = job
        self._info_dirty = True
        self._emit("job:claimed", job)
        if self._exhausted(job):
            self._counted(lambda: self._fail_exhausted(lease))
            return
        attempt = self._attempt(job)
        if attempt is None:
            self._counted(lambda: self._no_handler(lease))
            return
        if attempt.handler.is_async:
            if self._loop_runner is None:
                self._runners += 1
                self._loop_runner = LoopRunner(f"dbjobq-loop-{self.id}-{self._runners}")
            self._loop_runner.submit(attempt)
        else:
            self._submit(attempt)
        flights[job.id] = lease
        attempts[job.id] = attempt
        self._emit("job:started", job)

    def _counted(self, settle: Callable[[], None]) -> None:
        """Settle one job (record its outcome), counting it as processed once."""
        self._deferred = False
        try:
            settle()
        finally:
            if not self._deferred:  # else counted when its outcome is written
                self.jobs_processed += 1

    def _settle(self, flights: dict[str, _Lease], attempts: dict[str, Attempt]) -> None:
        """Record what finished; renew leases; enforce timeouts and the stop deadline."""
        done = [job_id for job_id, attempt in attempts.items() if attempt.done.is_set()]
        for job_id in done:
            self._land(flights.pop(job_id), attempts.pop(job_id))
        now = time.monotonic()
        if flights and self._stop_deadline is not None and now >= self._stop_deadline:
            for attempt in attempts.values():
                attempt.abort(CancelReason.SHUTDOWN)
            grace_until = now + _GRACE
            while not all(a.done.is_set() for a in attempts.values()):
                left = grace_until - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
                self._wake.clear()
            for job_id in list(flights):
                lease, attempt = flights.pop(job_id), attempts.pop(job_id)
                if attempt.done.is_set():
                    self._land(lease, attempt)
                    continue
                logger.warning(
                    "worker %s: stop timeout reached during job %s; leaving it to be "
                    "rescued when its lease expires",
                    self.id,
                    job_id,
                    extra=_extra(lease.job),
                )
                self._abandon(attempt, "the stop timeout", CancelReason.SHUTDOWN, grace=0)
                self.jobs_processed += 1
        for job_id in list(flights):
            lease, attempt = flights[job_id], attempts[job_id]
            timeout = self.queue._timeout(lease.job)
            started = attempt.started_at
            if timeout is None or started is None or now < started + timeout:
                continue
            del flights[job_id], attempts[job_id]
            lease.started = started
            attempt.abort(CancelReason.TIMEOUT)
            error = JobTimeoutError(f"job exceeded its timeout of {timeout:g}s")
            text, retry_in = self.queue._failure(lease.job, error, "")
            logger.error("job %s (%s): %s", job_id, lease.job.type, error, extra=_extra(lease.job))
            self._counted(lambda: self._record(lease, error=text, retry_in=retry_in))  # noqa: B023
            self._abandon(attempt, "its timeout", CancelReason.TIMEOUT)
        if flights and now >= self._next_beat:
            self._next_beat = now + self.heartbeat_interval
            for job_id in list(flights):
                if not self._beat(flights[job_id], attempts[job_id], now):
                    del flights[job_id], attempts[job_id]
                    self.jobs_processed += 1
        self._flush()
        current = self._current
        if current is not None and current.id not in flights:
            # The job started last among those still running (dicts keep that order).
            self._current = flights[next(reversed(flights))].job if flights else None
            self._info_dirty = True
        if flights:
            self._save_info_if_due()

    def _land(self, lease: _Lease, attempt: Attempt) -> None:
        """Record the outcome of a handler that returned or raised."""
        lease.started = attempt.started_at or lease.started
        job = lease.job

        def finish() -> None:
            try:
                self._finish(lease, attempt)
            except Exception as error:  # a bug of ours must not end the worker
                logger.exception(
                    "worker %s: error while processing job %s", self.id, job.id, extra=_extra(job)
                )
                self._fail_after_bug(job, error)

        self._counted(finish)

    # -- one job ------------------------------------------------------------------------

    def _new_runner(self) -> Runner:
        self._runners += 1
        return Runner(f"dbjobq-runner-{self.id}-{self._runners}")

    def _abandon(
        self, attempt: Attempt, why: str, reason: CancelReason, grace: float = _GRACE
    ) -> None:
        """Give up on a handler that will not return; its thread keeps running alone."""
        attempt.abort(reason)
        on_loop = self.concurrency > 1 and attempt.handler.is_async  # not on the runner
        if not attempt.done.wait(grace) and self._runner is not None and not on_loop:
            logger.error(
                "job %s (%s): handler did not return after %s; its thread is abandoned "
                "and its outcome will be discarded",
                attempt.ctx.job.id,
                attempt.ctx.job.type,
                why,
                extra=_extra(attempt.ctx.job),
            )
            self._runner.retire()
            self._runner = None
            # Attempts queued on that runner go to the next one, unless already begun.
            for job_id, queued in list(self._ahead.items()):
                if queued.skip():
                    del self._ahead[job_id]

    def _submit(self, attempt: Attempt) -> None:
        if self._runner is None:
            self._runner = self._new_runner()
        self._runner.submit(attempt)

    def _attempt(self, job: Job) -> Attempt | None:
        """The call of `job`'s handler, not started yet; `None` if there is no handler."""
        handler = self.queue._handlers.get(job.type)
        if handler is None:
            return None
        token = job.lease_token or ""
        storage = self.queue.storage

        def report_progress(value: float, message: str | None) -> bool:
            return storage.set_progress(job.id, token, progress=value, message=message)

        ctx = JobContext(
            job,
            self.queue,
            report_progress=report_progress,
            lost_reason=lambda: self._lost_reason(job),
        )
        # Side by side, the worker waits on _wake, which enqueues and stop() set too.
        return Attempt(handler, ctx, self._wake if self.concurrency > 1 else self._signal)

    def _process(self, job: Job) -> None:
        self._current = job
        self._info_dirty = True
        self._emit("job:claimed", job)
        self._save_info_if_due()
        self._deferred = False
        try:
            self._run_job(job)
        finally:
            if not self._deferred:  # else counted when its outcome is written
                self.jobs_processed += 1
            if not self._batch:
                self._flush()  # before current_job shows the worker idle
            self._current = None
            self._info_dirty = True

    def _exhausted(self, job: Job) -> bool:
        """Whether `job` was claimed past its last allowed attempt.

        A job that leaves `max_retries` to its handler is rescued to `pending`
        whatever its attempts (the storage does not know the handler's value); the
        worker that claims it next settles it here.
        """
        # A first attempt never is: max_retries is at least 0 (the usual case, cheaply).
        return (
            job.attempts > 1
            and job.max_retries is None
            and job.attempts > self.queue._max_retries(job) + 1
        )

    def _fail_exhausted(self, lease: _Lease) -> None:
        """Fail a job claimed past its last attempt, without running it."""
        job = lease.job
        logger.error(
            "job %s (%s) failed: no retry left after %d attempts",
            job.id,
            job.type,
            job.attempts - 1,
            extra=_extra(job),
        )
        error = job.last_error or f"no retry left after {job.attempts - 1} attempts"
        self._record(lease, error=error, retry_in=None)

    def _no_handler(self, lease: _Lease) -> None:
        """Record a claimed job that this worker has no handler for.

        Claims only ask for registered types, but a database that compares names
        loosely (case, trailing spaces) can still hand over another type. Back off
        as for a failure: retrying at once would spin.
        """
        job = lease.job
        problem = JobError(f"no handler for job type {job.type!r} in worker {self.id}")
        text, retry_in = self.queue._failure(job, problem, "")
        logger.error("job %s: %s", job.id, text, extra=_extra(job))
        self._record(lease, error=text, retry_in=retry_in)

    def _run_job(self, job: Job) -> None:
        lease = _Lease(job, job.lease_token or "", self._claimed_at + self.lease_seconds)
        # _run_batch hands no exhausted job to the runner: only the others need a look.
        attempt = self._ahead.pop(job.id, None)
        if attempt is None:
            if self._exhausted(job):
                self._fail_exhausted(lease)
                return
            attempt = self._attempt(job)
            if attempt is None:
                self._no_handler(lease)
                return
            self._submit(attempt)
        self._emit("job:started", job)
        timeout = job.timeout if job.timeout is not None else attempt.handler.timeout
        if self._watch(lease, attempt, timeout):
            self._finish(lease, attempt)

    def _watch(self, lease: _Lease, attempt: Attempt, timeout: float | None) -> bool:
        """Heartbeat until the handler returns (`True`) or must be given up (`False`)."""
        job = lease.job
        # The runner may have started it already, right after the job before it.
        started = lease.started = attempt.started_at or time.monotonic()
        next_beat = started + self.heartbeat_interval
        while True:
            if attempt.done.is_set():  # before waiting: its signal may be spent already
                return True
            now = time.monotonic()
            until = [next_beat, self._next_save()]
            if self._done:
                until.append(started + _FLUSH_AFTER)
            if timeout is not None:
                until.append(started + timeout)
            if self._stop_deadline is not None:
                until.append(self._stop_deadline)
            # The signal is set when the handler returns and when stop() sets or
            # moves the deadline, so neither waits for the next heartbeat.
            self._signal.wait(max(0.0, min(until) - now))
            self._signal.clear()
            if attempt.done.is_set():
                return True
            now = time.monotonic()
            if self._done and now >= started + _FLUSH_AFTER:
                self._flush()  # the handler takes a while: write earlier outcomes meanwhile
                continue
            self._save_info_if_due()
            if self._stop_deadline is not None and now >= self._stop_deadline:
                attempt.abort(CancelReason.SHUTDOWN)
                if attempt.done.wait(_GRACE):
                    return True  # it stopped when asked: record its outcome as usual
                logger.warning(
                    "worker %s: stop timeout reached during job %s; leaving it to be "
                    "rescued when its lease expires",
                    self.id,
                    job.id,
                    extra=_extra(job),
                )
                self._abandon(attempt, "the stop timeout", CancelReason.SHUTDOWN, grace=0)
                return False
            if timeout is not None and now >= started + timeout:
                attempt.abort(CancelReason.TIMEOUT)
                error = JobTimeoutError(f"job exceeded its timeout of {timeout:g}s")
                text, retry_in = self.queue._failure(job, error, "")
                logger.error("job %s (%s): %s", job.id, job.type, error, extra=_extra(job))
                self._record(lease, error=text, retry_in=retry_in)
                self._abandon(attempt, "its timeout", CancelReason.TIMEOUT)
                return False
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                # A slow job: the jobs claimed with it should not wait for it.
                self._release_batch(f"job {job.id} is taking long")
                if self._beat(lease, attempt, now):
                    self._save_info_if_due()
                    continue
                return False

    def _beat(self, lease: _Lease, attempt: Attempt, now: float) -> bool:
        """Renew a running job's lease; `False` if it is lost (the handler given up)."""
        job = lease.job
        try:
            _faults.reach("heartbeat")
            held = self.queue.storage.heartbeat(
                job.id, lease.token, lease_seconds=self.lease_seconds
            )
        except StorageError as error:
            self._write_errors.failed(f"worker {self.id}: heartbeat", error)
            if now >= lease.until and not attempt.ctx.cancelled.is_set():
                # Another worker may have rescued the job by now: ask the handler
                # to stop. Its outcome is still recorded if the lease turns out
                # to be ours after all (the fence decides).
                logger.warning(
                    "job %s (%s): lease could not be renewed before it expired; "
                    "signalling the handler to stop",
                    job.id,
                    job.type,
                    extra=_extra(job),
                )
                attempt.ctx._interrupt(CancelReason.LEASE_LOST)
            return True
        self._write_errors.recovered(f"worker {self.id}: heartbeat")
        if held:
            lease.until = now + self.lease_seconds
            return True
        logger.warning(
            "job %s (%s): lease lost (cancelled or rescued); stopping the handler "
            "and discarding its outcome",
            job.id,
            job.type,
            extra=_extra(job),
        )
        self._abandon(attempt, "its lease was lost", self._lost_reason(job))
        return False

    def _finish(self, lease: _Lease, attempt: Attempt) -> None:
        job = lease.job
        error = attempt.error
        if error is None and attempt.result is not None:
            try:
                checked_dumps(
                    attempt.result, what="handler result", max_bytes=self.queue.max_payload_bytes
                )
            except PayloadError as invalid:
                error, attempt.trace = invalid, ""
            except Exception as invalid:  # noqa: BLE001 - e.g. a result whose str() fails
                error = PayloadError(f"handler result is not storable: {invalid}")
                attempt.trace = ""
        lease.ended = attempt.finished_at or time.monotonic()
        if error is not None and (reason := attempt.ctx.cancel_reason) is not None:
            self._interrupted(lease, reason, error, attempt.trace)
            return
        if error is None:
            logger.debug("job %s (%s) completed", job.id, job.type, extra=_extra(job))
            if self.prefetch > 1:
                self._done.append((lease, attempt.result))  # written with its batch
                self._deferred = True
            else:
                self._record(lease, result=attempt.result)
            return
        text, retry_in = self.queue._failure(job, error, attempt.trace)
        if not isinstance(error, Exception):
            logger.error(
                "job %s (%s): handler raised %s",
                job.id,
                job.type,
                type(error).__name__,
                extra=_extra(job),
            )
        if retry_in is None:
            logger.error(
                "job %s (%s) failed: %s", job.id, job.type, text.splitlines()[0], extra=_extra(job)
            )
        else:
            logger.warning(
                "job %s (%s) attempt %d failed, retrying in %.1fs: %s",
                job.id,
                job.type,
                job.attempts,
                retry_in,
                text.splitlines()[0],
                extra=_extra(job),
            )
        self._record(lease, error=text, retry_in=retry_in)

    def _interrupted(
        self, lease: _Lease, reason: CancelReason, error: BaseException, trace: str
    ) -> None:
        """A handler that raised once asked to stop: unfinished work, not a failure.

        After a shutdown (or a lease that could not be renewed) the job is given
        back: `pending`, its attempt not counted. The fence decides, as for any
        outcome: a job cancelled or rescued meanwhile is left as it is.
        """
        job, storage = lease.job, self.queue.storage
        if reason not in (CancelReason.SHUTDOWN, CancelReason.LEASE_LOST):
            # Cancelled: the job stays so. (A timeout was recorded when it struck.)
            logger.info(
                "job %s (%s) stopped (%s); outcome discarded",
                job.id,
                job.type,
                reason,
                extra=_extra(job),
            )
            return
        if not self._releases:  # the backend cannot give jobs back
            text, retry_in = self.queue._failure(job, error, trace)
            self._record(lease, error=text, retry_in=retry_in)
            return
        held = self._write([lease], lambda: [storage.release(job.id, lease.token)])
        if held is None:
            return
        if not held[0]:
            self._lease_lost(job)
            return
        logger.warning(
            "job %s (%s) interrupted (%s): back to pending, attempt not counted",
            job.id,
            job.type,
            reason,
            extra=_extra(job),
        )

    def _lost_reason(self, job: Job) -> CancelReason:
        """Why this worker no longer holds `job`: cancelled, or rescued or taken over."""
        try:
            status = self.queue.storage.get(job.id).status
        except Exception:  # noqa: BLE001 - only decides which reason to report
            return CancelReason.LEASE_LOST
        return CancelReason.CANCELLED if status == "cancelled" else CancelReason.LEASE_LOST

    def _fail_after_bug(self, job: Job, error: Exception) -> None:
        """Record an attempt dbjobq itself could not finish, so it is not re-run blindly."""
        token = job.lease_token or ""
        text, retry_in = self.queue._failure(job, error, traceback.format_exc())
        try:
            self.queue.storage.fail(
                job.id, token, error=f"internal error: {text}", retry_in=retry_in
            )
        except Exception:
            logger.exception(
                "worker %s: could not record the failure of job %s",
                self.id,
                job.id,
                extra=_extra(job),
            )

    def _flush(self) -> None:
        """Write the completions held back to be recorded together."""
        if not self._done:
            return
        done, self._done = self._done, []
        storage = self.queue.storage
        outcomes = [(lease.job.id, lease.token, result) for lease, result in done]
        try:
            held = self._write(
                [lease for lease, _ in done], lambda: storage.complete_many(outcomes)
            )
        finally:
            self.jobs_processed += len(done)
        for (lease, result), kept in zip(done, held or [], strict=False):
            if kept:
                duration = lease.ended - lease.started
                self._emit("job:completed", lease.job, result=result, duration=duration)
            else:
                self._lease_lost(lease.job)

    def _record(
        self,
        lease: _Lease,
        *,
        result: Any = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        """Write one outcome (`error=None`: completed), retrying while the lease holds."""
        job, storage = lease.job, self.queue.storage
        if not lease.ended:
            lease.ended = time.monotonic()

        def write() -> list[bool]:
            if error is None:
                return [storage.complete(job.id, lease.token, result=result)]
            return [storage.fail(job.id, lease.token, error=error, retry_in=retry_in)]

        held = self._write([lease], write)
        if held is None:
            return
        if not held[0]:
            self._lease_lost(job)
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

    def _lease_lost(self, job: Job) -> None:
        logger.warning(
            "job %s (%s): lease lost before the outcome was recorded; outcome "
            "discarded (the job was cancelled or rescued)",
            job.id,
            job.type,
            extra=_extra(job),
        )

    def _write(self, leases: list[_Lease], write: Callable[[], list[bool]]) -> list[bool] | None:
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
                self._write_errors.failed(f"worker {self.id}: recording job {what}", failure)
                job = leases[0].job if len(leases) == 1 else None
                self._emit("worker:error", job, error=f"StorageError: {failure}")
                stop_by = self._stop_deadline if self._stop_deadline is not None else math.inf
                until = min(lease.until for lease in leases)
                if time.monotonic() + delay >= min(until, stop_by):
                    # One record for the whole batch: a log line per job would grow
                    # with the batch size during an outage.
                    # Logged in full once per outage: the jobs queued behind go on
                    # finishing and giving up too. The recovery message counts them all.
                    first = leases[0].job
                    self._given_up += len(leases)
                    logger.log(
                        logging.ERROR if self._given_up == len(leases) else logging.DEBUG,
                        "%s: could not record the outcome before the lease ran out; it will "
                        "be rescued and run again",
                        f"job {first.id} ({first.type})"
                        if len(leases) == 1
                        else f"{len(leases)} jobs ({what})",
                        extra=_extra(first),
                    )
                    return None
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 2.0)
                continue
            given_up, self._given_up = self._given_up, 0
            lost = f" ({given_up} outcome(s) given up, to be run again)" if given_up else ""
            self._write_errors.recovered(f"worker {self.id}: recording{lost}")
            return held
