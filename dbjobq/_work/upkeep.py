"""What a worker does besides running jobs: its registry record, rescues, ticks.

`Upkeep` saves the worker's registry record every few seconds (and prunes dead
workers' records hourly), rescues jobs whose leases expired, rescues at start the
jobs of this host's workers whose process is gone, and enqueues the due ticks of
the schedules the worker takes part in. `Throttle` keeps repeating errors from
flooding the log.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Collection

from dbjobq.errors import StorageError
from dbjobq.job import Job
from dbjobq.periodic import Schedule, Ticker
from dbjobq.registry import WorkerInfo
from dbjobq.storage.base import Storage

__all__ = ["ORPHAN_AFTER", "PollStep", "Throttle", "Upkeep", "note_begun", "process_gone"]

logger = logging.getLogger("dbjobq.worker")

REGISTRY_EVERY = 5.0  # seconds between saves of a worker's registry record
REGISTRY_CHANGED = 1.0  # ... or after its current job changed
FORGET_AFTER = 86400.0  # seconds after which a silent worker's record is deleted
# A record of another worker id counts as orphaned only once it is this many seconds
# old (storage clock): a live worker saves its record every REGISTRY_EVERY seconds,
# so it does not get this old, even where the pid is invisible to us (another pid
# namespace with the same hostname). Well under the default 30 s lease. Tests shorten
# it (monkeypatch) rather than wait.
ORPHAN_AFTER = 3 * REGISTRY_EVERY
# Ids of the workers begun in this process. A registry record with this process's pid
# belongs to an earlier process that had the same pid (a restarted container's pid 1)
# only if no worker of this process had its id: clocks are not compared, since they
# may be skewed or stepped, and a sibling worker must never lose its jobs.
_begun_here: set[str] = set()
_begun_lock = threading.Lock()


def note_begun(worker_id: str) -> frozenset[str]:
    """Note that a worker of this process begins; the ids of those begun before it."""
    with _begun_lock:
        before = frozenset(_begun_here)
        _begun_here.add(worker_id)
    return before


def process_gone(info: WorkerInfo, begun_here: Collection[str] = ()) -> bool:
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


class Throttle:
    """Log a repeating error in full once, then at most every `every` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.failures = 0
        self._last = -math.inf

    def failed(self, what: str, error: BaseException) -> None:
        """Log a failure: in full the first time, then as a count now and then."""
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            logger.error("%s failed: %s", what, error, exc_info=error)
            self._last = now
        elif now - self._last >= self.every:
            logger.error("%s still failing (%d times): %s", what, self.failures, error)
            self._last = now

    def recovered(self, what: str) -> None:
        """Log that it works again, if it failed before."""
        if self.failures:
            logger.warning("%s recovered after %d failures", what, self.failures)
            self.failures = 0


class Upkeep:
    """A worker's registry record, lease rescues and schedule ticks.

    Args:
        storage: Where the record, the jobs and the ticks are.
        worker_id: The worker's id.
        info: Makes the worker's current registry record.
        rescue_delay: Seconds a rescued job waits before it runs again.
        rescue_interval: Seconds between looks for expired leases.
    """

    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        info: Callable[[], WorkerInfo],
        rescue_delay: Callable[[], float],
        rescue_interval: float,
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.rescue_interval = rescue_interval
        self._info = info
        self._rescue_delay = rescue_delay
        self._ticker: Ticker | None = None
        self.next_tick = math.inf  # when (monotonic) a schedule is due
        self.last_saved = -math.inf
        self._changed = True
        self._last_pruned = -math.inf
        self._last_rescue = -math.inf
        self._errors = Throttle()

    # -- the registry record --------------------------------------------------------

    def changed(self) -> None:
        """The record changed (the current job): save it within about a second."""
        self._changed = True

    def next_save(self) -> float:
        """When (monotonic) the registry record is due to be saved again."""
        return self.last_saved + (REGISTRY_CHANGED if self._changed else REGISTRY_EVERY)

    def save_if_due(self) -> None:
        """Keep the registry record fresh (and prune dead workers' records hourly).

        Saved every few seconds, and about a second after the current job changed:
        current without a write per job.
        """
        now = time.monotonic()
        if now < self.next_save():
            return
        self._changed = False
        self.last_saved = now
        what = f"worker {self.worker_id}: saving its registry record"
        try:
            self.storage.save_worker(self._info())
            if now - self._last_pruned >= 3600:
                self._last_pruned = now
                self.storage.prune_workers(older_than=FORGET_AFTER)
        except StorageError as error:
            self._errors.failed(what, error)
            return
        self._errors.recovered(what)

    def save_now(self) -> None:
        """Save the registry record at once (a drain ended: no current job)."""
        self.last_saved = -math.inf
        self.save_if_due()

    def remove_record(self) -> None:
        """Delete the registry record (the worker stopped)."""
        try:
            self.storage.remove_worker(self.worker_id)
        except Exception as error:  # noqa: BLE001 - the record will be pruned later
            logger.warning(
                "worker %s: could not remove its registry record: %s", self.worker_id, error
            )

    # -- schedules --------------------------------------------------------------------

    def take_part(self, schedules: list[Schedule]) -> None:
        """Enqueue the ticks of these schedules from now on."""
        self._ticker = Ticker(self.storage, schedules) if schedules else None
        self.next_tick = -math.inf if schedules else math.inf

    def tick_if_due(self) -> None:
        """Enqueue due ticks of the schedules this worker takes part in."""
        if self._ticker is None or time.monotonic() < self.next_tick:
            return
        wait = self._ticker.run()
        # A little after the tick, so that it is due on the storage's clock too.
        self.next_tick = time.monotonic() + wait + 0.005

    # -- rescues ----------------------------------------------------------------------

    def rescue_soon(self) -> None:
        """Look for expired leases at the next poll."""
        self._last_rescue = -math.inf

    def rescue_if_due(self) -> None:
        """Rescue jobs whose leases expired, every `rescue_interval` seconds.

        And settle waiting jobs that their parents' outcomes decide already (the
        safety net of workflows: see `Storage.settle_waiting`).
        """
        now = time.monotonic()
        if now - self._last_rescue < self.rescue_interval:
            return
        self._last_rescue = now
        # Back off like a failed attempt: a job that killed its worker (out of memory,
        # a segfault) should not take down the next one at once.
        rescued = self.storage.rescue_expired(retry_in=self._rescue_delay())
        if rescued:
            logger.warning(
                "worker %s rescued %d job(s) with expired leases", self.worker_id, rescued
            )
        if self.storage.capabilities.workflows:
            settled = self.storage.settle_waiting()
            if settled:
                logger.info(
                    "worker %s settled %d waiting job(s) whose parents had finished",
                    self.worker_id,
                    settled,
                )

    def rescue_orphans(self, begun_before: Collection[str]) -> None:
        """Rescue the jobs of this host's workers whose process is gone."""
        storage = self.storage
        if not storage.capabilities.rescue_workers or os.name != "posix":
            return
        host = socket.gethostname()
        try:
            records = [
                w
                for w in storage.list_workers(seen_within=FORGET_AFTER)
                if w.hostname == host and process_gone(w, begun_before)
            ]
            if not records:
                return  # the usual start: no second look at the registry
            # Asked after the first list: a record saved in between counts as fresh.
            fresh = {w.id for w in storage.list_workers(seen_within=ORPHAN_AFTER)}
            gone = [
                w.id
                for w in records
                # Our own id is our predecessor's (ids are unique among running
                # workers), however recent: a restart with the same --worker-id.
                if w.id == self.worker_id or w.id not in fresh
            ]
            if not gone:
                return
            rescued = storage.rescue_workers(gone, retry_in=self._rescue_delay())
            for worker_id in gone:
                storage.remove_worker(worker_id)
        except Exception as error:  # noqa: BLE001 - leases still expire: nothing is lost
            logger.warning(
                "worker %s: could not rescue the jobs of workers gone from this host: %s",
                self.worker_id,
                error,
            )
            return
        logger.warning(
            "worker %s: %d worker(s) of this host are gone (%s); rescued %d job(s) they held",
            self.worker_id,
            len(gone),
            ", ".join(gone),
            rescued,
        )


class PollStep:
    """One poll of a worker: the upkeep that is due, then a claim.

    Every loop of the worker (one job at a time, side by side, `run_until_empty`)
    polls through this one step. `live` is set while the worker runs as such (its
    registry record and the schedules' ticks are its business only then).
    """

    def __init__(self, upkeep: Upkeep, emit: Callable[..., None]) -> None:
        self.upkeep = upkeep
        self.live = False
        self._emit = emit
        self._errors = Throttle()
        self._what = f"worker {upkeep.worker_id}: polling"

    def __call__(self, claim: Callable[[], list[Job]]) -> list[Job]:
        """Do what is due, then claim.

        Raises:
            StorageError: If the storage cannot be reached (or any error of a bug).
        """
        upkeep = self.upkeep
        if self.live:
            upkeep.save_if_due()
            upkeep.tick_if_due()
        upkeep.rescue_if_due()
        return claim()

    def failed(self, error: Exception) -> None:
        """Report a failed poll (logged throttled, and the `worker:error` event)."""
        self._errors.failed(self._what, error)
        self._emit("worker:error", error=f"{type(error).__name__}: {error}")

    def recovered(self) -> None:
        """A poll went through (after failures, that is logged)."""
        self._errors.recovered(self._what)
