"""Waiting for jobs to finish: `JobQueue.wait` and `JobQueue.wait_async`.

A waiter reads its job, and reads it again whenever something says the job may
have finished:

* in this process, a worker that recorded the outcome or a `JobQueue.cancel`
  (`Waits.finished`), for every queue object on the same storage object;
* from other processes, the storage's `subscribe_finished` (SQLite's
  `data_version`, PostgreSQL's NOTIFY), where `Capabilities.notify_finished` says
  it has one;
* and in any case a poll that backs off from 50 ms to a cap (1 s without a
  storage signal, 5 s with one): a lost wake-up only delays the answer.

A wake-up carries no data; it only makes the waiter read its job once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from dbjobq._checks import check_seconds, check_str
from dbjobq.job import Job
from dbjobq.storage.base import Storage

__all__ = ["FIRST_POLL", "LINGER", "POLL_CAP", "POLL_CAP_SIGNALLED", "WaitMethods", "Waits"]

FIRST_POLL = 0.05
"""Seconds before the first poll; each poll that finds the job unfinished doubles it."""
POLL_CAP = 1.0
"""The longest interval between polls where only this process can wake a waiter."""
POLL_CAP_SIGNALLED = 5.0
"""The longest interval between polls where the storage reports other processes' finishes."""
LINGER = 10.0
"""Seconds the storage subscription outlives the last waiter, so that waits in a row
(one per web request, say) share one watcher and its connection."""

_registries: weakref.WeakKeyDictionary[Storage, Waits] = weakref.WeakKeyDictionary()
_registries_lock = threading.Lock()


class Waits:
    """The jobs waited on in this process, for one storage object.

    Shared by every `JobQueue` on that storage object (`Waits.of`), so that a job
    finished through one queue object wakes a waiter on another.
    """

    def __init__(self, storage: Storage) -> None:
        # Weakly: the registry is the value of its storage in a WeakKeyDictionary.
        self._storage = weakref.ref(storage)
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Callable[[], None]]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._idle_since = 0.0  # when the last waiter left (monotonic)
        self._reaper: threading.Timer | None = None  # ends the subscription after LINGER

    @classmethod
    def of(cls, storage: Storage) -> Waits:
        """The registry of `storage`, made on first use."""
        with _registries_lock:
            try:
                waits = _registries.get(storage)
            except TypeError:  # a storage that cannot be weakly referenced: its own
                return cls(storage)
            if waits is None:
                waits = _registries[storage] = cls(storage)
            return waits

    def __bool__(self) -> bool:
        return bool(self._waiters)

    @contextlib.contextmanager
    def watching(self, job_id: str, wake: Callable[[], None]) -> Iterator[None]:
        """Call `wake` whenever `job_id` may have finished, until the block ends."""
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(wake)
            storage = self._storage()
            if self._unsubscribe is None and storage is not None and self.signalled():
                self._unsubscribe = storage.subscribe_finished(self.finished_anywhere)
        try:
            yield
        finally:
            with self._lock:
                wakes = self._waiters.get(job_id)
                if wakes is not None:
                    wakes.discard(wake)
                    if not wakes:
                        del self._waiters[job_id]
                if not self._waiters and self._unsubscribe is not None:
                    self._idle_since = time.monotonic()
                    if self._reaper is None:
                        self._reap_in(LINGER)

    def _reap_in(self, seconds: float) -> None:
        self._reaper = threading.Timer(seconds, self._reap)
        self._reaper.daemon = True
        self._reaper.start()

    def _reap(self) -> None:
        """End the storage subscription if no waiter came back within `LINGER`."""
        with self._lock:
            self._reaper = None
            if self._waiters or self._unsubscribe is None:
                return  # in use again: the next last waiter to leave starts a reaper
            left = self._idle_since + LINGER - time.monotonic()
            if left > 0:
                self._reap_in(left)
                return
            self._unsubscribe()
            self._unsubscribe = None

    def signalled(self) -> bool:
        """Whether the storage reports jobs finished by other processes."""
        storage = self._storage()
        return storage is not None and storage.capabilities.notify_finished

    def finished(self, job_id: str) -> None:
        """This process finished (or cancelled) `job_id`: wake its waiters."""
        if not self._waiters:  # the common case: nobody waits, no lock taken
            return
        with self._lock:
            wakes = list(self._waiters.get(job_id, ()))
        for wake in wakes:
            wake()

    def finished_anywhere(self) -> None:
        """Some jobs may have finished (elsewhere, or down a workflow): every waiter reads again."""
        if not self._waiters:
            return
        with self._lock:
            wakes = [wake for wakes in self._waiters.values() for wake in wakes]
        for wake in wakes:
            wake()


class _Backoff:
    """The intervals between polls: doubling from `FIRST_POLL` up to a cap, or fixed."""

    def __init__(self, fixed: float | None, signalled: bool) -> None:
        self._fixed = fixed
        self._cap = POLL_CAP_SIGNALLED if signalled else POLL_CAP
        self._next = FIRST_POLL if fixed is None else fixed

    def next(self) -> float:
        delay = self._next
        if self._fixed is None:
            self._next = min(self._next * 2, self._cap)
        return delay


def _timed_out(job_id: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"job {job_id} did not finish within {timeout:g} seconds")


def block_until_finished(
    storage: Storage, waits: Waits, job_id: str, timeout: float | None, poll: float | None
) -> Job:
    """Block until the job is finished and return it (see `JobQueue.wait`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    woken = threading.Event()
    backoff = _Backoff(poll, waits.signalled())
    with waits.watching(job_id, woken.set):
        while True:
            woken.clear()  # before the read: a wake-up during it is kept
            job = storage.get(job_id)
            if job.status.is_finished:
                return job
            delay = backoff.next()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _timed_out(job_id, timeout or 0.0)
                delay = min(delay, left)
            woken.wait(delay)


async def await_finished(
    storage: Storage, waits: Waits, job_id: str, timeout: float | None, poll: float | None
) -> Job:
    """Await the job's end without blocking the event loop (see `JobQueue.wait_async`).

    Reads run in the loop's default executor; wake-ups come back to the loop
    through `call_soon_threadsafe`. Each pause between reads is a future that a
    wake-up or a timer resolves and the task awaits directly (no `asyncio.wait_for`,
    which in Python 3.11 can swallow a cancellation that meets a wake-up).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not pause.done():
            pause.set_result(None)

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            loop.call_soon_threadsafe(resolve)

    backoff = _Backoff(poll, waits.signalled())
    with waits.watching(job_id, wake):
        while True:
            pause = loop.create_future()  # before the read: a wake-up during it is kept
            job = await loop.run_in_executor(None, storage.get, job_id)
            if job.status.is_finished:
                return job
            delay = backoff.next()
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise _timed_out(job_id, timeout or 0.0)
                delay = min(delay, left)
            timer = loop.call_later(delay, resolve)
            try:
                await pause
            finally:
                timer.cancel()


class WaitMethods:
    """How `JobQueue` waits for jobs (its `wait` and `wait_async`, documented there)."""

    if TYPE_CHECKING:
        waits: Waits

        def _store(self) -> Storage: ...

    def wait(
        self,
        job_id: str,
        timeout: float | timedelta | None = None,
        *,
        poll_interval: float | None = None,
    ) -> Job:
        """Block until the job is finished (`completed`, `failed` or `cancelled`).

        A job finished in this process (by a worker, or through `cancel`) wakes the
        wait at once; one finished by another process does so through the storage's
        signal where it has one (`Capabilities.notify_finished`: SQLite files and
        PostgreSQL), else at the next poll. Polls back off from 50 ms to 1 s (5 s
        where the storage signals), so an idle wait costs at most a few reads a
        second. A job that is retried is not finished: the wait goes on.

        ```python
        job_id = queue.enqueue("resize", {"image": 42})
        job = queue.wait(job_id, timeout=30)
        if job.status is JobStatus.COMPLETED:
            print(job.result)
        ```

        Args:
            job_id: The job's id.
            timeout: Seconds (or a `timedelta`) to wait at most; `None` waits as
                long as it takes, `0` looks once.
            poll_interval: Seconds between the polls that back up the wake-ups,
                fixed, instead of the back-off.

        Returns:
            The finished job, as `get_job` returns it (`result`, `last_error`).

        Raises:
            TimeoutError: If the job is not finished when `timeout` passes.
            InvalidJobError: If `job_id` is not a `str`, or `timeout` or
                `poll_interval` is not a number of seconds (negative, NaN, ...).
            JobNotFound: If there is no such job (or it was purged meanwhile).
            StorageError: If the storage cannot be reached.
        """
        limit, poll = self._wait_args(job_id, timeout, poll_interval)
        return block_until_finished(self._store(), self.waits, job_id, limit, poll)

    async def wait_async(
        self,
        job_id: str,
        timeout: float | timedelta | None = None,
        *,
        poll_interval: float | None = None,
    ) -> Job:
        """`wait`, for `asyncio`: the event loop runs other tasks meanwhile.

        The reads of the job run in the loop's default executor, so the loop is
        never blocked on the storage. Arguments, return value and errors are those
        of `wait`; cancelling the awaiting task ends the wait.

        ```python
        async def result_of(job_id: str) -> dict:
            job = await queue.wait_async(job_id, timeout=10)
            return {"status": job.status.value, "result": job.result}
        ```
        """
        limit, poll = self._wait_args(job_id, timeout, poll_interval)
        return await await_finished(self._store(), self.waits, job_id, limit, poll)

    def _wait_args(
        self, job_id: Any, timeout: Any, poll_interval: Any
    ) -> tuple[float | None, float | None]:
        check_str(job_id, "job id")
        limit = None if timeout is None else check_seconds(timeout, "timeout")
        poll = None
        if poll_interval is not None:
            poll = check_seconds(poll_interval, "poll_interval", allow_zero=False)
        return limit, poll
