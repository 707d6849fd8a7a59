"""Waking idle workers inside one process when jobs they take are enqueued.

The queue notifies (`Wakeups.notify`, after an enqueue or a retry; `notify_all`,
when the storage reports another process's enqueue); each worker waits on its own
`Waiter`. Neither looks inside the other.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Set

from dbjobq import _clock
from dbjobq.job import NewJob
from dbjobq.storage.base import Storage

__all__ = ["Waiter", "Wakeups"]


class Waiter:
    """What one worker waits on between polls (and, side by side, between jobs).

    Args:
        queues: The queues the worker takes jobs from.
        types: The job types it takes, asked at each notification (a live view).
    """

    def __init__(self, queues: Collection[str], types: Callable[[], Collection[str]]) -> None:
        self.event = threading.Event()
        """Set by a wake-up; the worker clears it before it looks for jobs."""
        self.idle = False
        """Whether the worker is waiting for work right now (woken first)."""
        self._queues = queues
        self._types = types

    def wants(self, wanted: Set[tuple[str, str]]) -> bool:
        """Whether the worker takes a job of any of these (queue, type)s."""
        types = self._types()
        return any(q in self._queues and t in types for q, t in wanted)

    def wake(self) -> None:
        """Make the worker look for jobs now (or after the job in hand)."""
        self.event.set()


class Wakeups:
    """The waiters of one queue's running workers in this process."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._waiters: weakref.WeakSet[Waiter] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def attach(self, waiter: Waiter) -> None:
        """A worker started: wake it from now on, and listen for other processes' enqueues."""
        with self._lock:
            self._waiters.add(waiter)
            if self._unsubscribe is None and self._storage.capabilities.notify:
                self._unsubscribe = self._storage.subscribe(self.notify_all)

    def detach(self, waiter: Waiter) -> None:
        """A worker stopped; the last one to stop ends the listening."""
        with self._lock:
            self._waiters.discard(waiter)
            if not self._waiters and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def notify_all(self) -> None:
        """Another process may have enqueued jobs: every worker polls once more."""
        for waiter in list(self._waiters):
            waiter.wake()

    def enqueued(self, jobs: Iterable[NewJob]) -> None:
        """Jobs were enqueued: wake as many workers as are due now, of their kinds."""
        if not self._waiters:  # no worker of this process to wake
            return
        now = _clock.now()
        due_now = [
            job
            for job in jobs
            if (job.run_at is None and job.delay == 0) or (job.run_at and job.run_at <= now)
        ]
        self.notify({(job.queue, job.type) for job in due_now}, len(due_now))

    def notify(self, wanted: Set[tuple[str, str]], count: int) -> None:
        """Wake up to `count` workers that take these (queue, type)s, idle ones first."""
        if count == 0:
            return
        matching = [w for w in list(self._waiters) if w.wants(wanted)]
        # Idle workers first; a busy one only finds a flag that costs it one extra
        # poll after its current job, and covers a worker just about to go idle.
        matching.sort(key=lambda w: not w.idle)
        for waiter in matching[:count]:
            waiter.wake()
