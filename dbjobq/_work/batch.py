"""Claimed jobs not started yet: how many to claim, claiming ahead, giving back.

A worker claims as many jobs at once as run in about `BATCH_SECONDS` (at most
`prefetch`, at most twice the last batch). Where the storage says it pays, the next
batch is claimed on a helper thread while this one runs. Jobs claimed but not
started go back to the queue (`release_many`), untouched, when they must not wait
any longer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Collection

from dbjobq._work.runner import Attempt
from dbjobq.errors import StorageError
from dbjobq.flow import LimitMap
from dbjobq.job import Job, claim_order
from dbjobq.storage.base import Storage

__all__ = ["AHEAD_FROM", "BATCH_SECONDS", "Batch", "Claims"]

logger = logging.getLogger("dbjobq.worker")

BATCH_SECONDS = 0.2  # a batch of claimed jobs should take about this long to run
AHEAD_FROM = 16  # batches at least this big have the next one claimed ahead


class Claims:
    """How one worker claims: its queues, types, lease and order.

    Args:
        storage: Where jobs are claimed.
        worker_id: The worker's id (the jobs' `worker_id`).
        queues: The queues to take jobs from.
        types: The job types the worker takes (a live view, copied per claim).
        lease_seconds: The length of a lease.
        lifo: Newest due job first.
        limits: The limits of those of some types that have any (the handlers').
    """

    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        queues: tuple[str, ...],
        types: Callable[[], Collection[str]],
        lease_seconds: float,
        lifo: bool,
        limits: Callable[[Collection[str]], LimitMap] | None = None,
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.queues = queues
        self.types = types
        self.lease_seconds = lease_seconds
        self.releases = storage.capabilities.release  # whether claimed jobs can be given back
        # Passed only when asked: a storage whose claim() lacks newest_first still works.
        self._order: dict[str, bool] = {"newest_first": True} if lifo else {}
        self._limits = limits

    def limits(self, types: Collection[str]) -> LimitMap:
        """The limits of those of `types` whose handlers have any."""
        return {} if self._limits is None else self._limits(types)

    def longest_wait(self, longest: float, shortest: float) -> float:
        """The longest idle wait between polls, at most `longest`, at least `shortest`.

        With a rate limit a full window has room again within `per / count`
        seconds, so a held-back job waits no longer than that (or `shortest`).
        """
        gaps = [
            limit.rate_limit.per / limit.rate_limit.count
            for limit in self.limits(set(self.types())).values()
            if limit.rate_limit is not None
        ]
        return longest if not gaps else min(longest, max(shortest, min(gaps)))

    def of(self, types: Collection[str], limit: int, *, one_per_key: bool = False) -> list[Job]:
        """Claim up to `limit` due jobs of these types from the worker's queues.

        Types whose handlers have limits are claimed within them (`claim_limited`),
        apart from the others, which keep the plain claim and its batches. With
        `one_per_key` (a batch, whose jobs start one after another while each
        holds its slot) at most one job per concurrency key; with a rate limit
        among the types, one limited job (a claim counts as a start).
        """
        limits = self.limits(types)
        if not limits:
            return self._plain(types, limit)
        rated = any(lim.rate_limit is not None for lim in limits.values())
        limited = self.storage.claim_limited(
            queues=self.queues,
            types=set(limits),
            limits=limits,
            worker_id=self.worker_id,
            lease_seconds=self.lease_seconds,
            limit=1 if rated else limit,
            one_per_key=one_per_key,
            **self._order,
        )
        plain_types = [t for t in types if t not in limits]
        rest = limit - len(limited)
        if not plain_types or rest < 1:
            return limited
        return claim_order(limited + self._plain(plain_types, rest), bool(self._order))

    def _plain(self, types: Collection[str], limit: int) -> list[Job]:
        return self.storage.claim(
            queues=self.queues,
            types=types,
            worker_id=self.worker_id,
            lease_seconds=self.lease_seconds,
            limit=limit,
            **self._order,
        )

    def give_back(self, jobs: Collection[Job]) -> int:
        """Release claimed jobs not started (their leases expire otherwise).

        Raises:
            StorageError: If the storage cannot be reached.
        """
        return sum(self.storage.release_many([(j.id, j.lease_token or "") for j in jobs]))


class Batch:
    """The jobs one worker claimed and has not started yet, and how many to claim.

    Args:
        claims: How the worker claims.
        prefetch: The most jobs claimed at once.
        left: How many jobs the worker may still take (`max_jobs`), or `None`.
        ahead: Whether the next batch may be claimed ahead, on a helper thread.
    """

    def __init__(
        self, claims: Claims, prefetch: int, left: Callable[[], int | None], ahead: bool
    ) -> None:
        self.claims = claims
        self.prefetch = prefetch
        self.jobs: collections.deque[Job] = collections.deque()  # claimed, not started
        self.attempts: dict[str, Attempt] = {}  # of the batch, handed to the runner
        self.claimed_at = 0.0  # when (monotonic) the batch was claimed
        self.per_job: float | None = None  # seconds per job in the last batch
        self.ahead_allowed = False  # set while the worker's own loop runs
        self._ahead_possible = ahead
        self._left = left
        self._last = 1
        self._requested = 1  # jobs asked for by the latest claim
        self._next: concurrent.futures.Future[tuple[list[Job], float]] | None = None

    def allow_ahead(self, allowed: bool) -> None:
        """Claim ahead from now on (the worker thread's loop), or no longer."""
        self.ahead_allowed = allowed and self._ahead_possible

    def size(self, last: int, in_hand: int = 0) -> int:
        """How many jobs to claim: as many as run in about `BATCH_SECONDS`.

        Starts at one and at most doubles from one batch (`last` jobs) to the next,
        so that a worker does not hoard slow jobs that other workers could run.
        `in_hand` jobs, claimed and not yet run, count against `max_jobs`; the
        result is below 1 when they use it up.
        """
        n = 1
        if self.prefetch > 1 and self.per_job is not None:
            fits = int(BATCH_SECONDS / max(self.per_job, 1e-6))
            n = max(1, min(self.prefetch, fits, 2 * last))
        left = self._left()
        if left is not None:
            n = min(n, left - in_hand)
        return n

    def claim(self) -> list[Job]:
        """Claim the next batch (or take the one claimed ahead)."""
        ahead = self._take_ahead()
        if ahead is None:
            self._requested = max(1, self.size(self._last))
            ahead = self._claim(self._requested)
        jobs, self.claimed_at = ahead
        self._last = max(1, len(jobs))
        return jobs

    def _claim(self, limit: int) -> tuple[list[Job], float]:
        """Claim up to `limit` jobs; with the time (monotonic) their leases began."""
        types = set(self.claims.types())  # a copy: handlers may be registered meanwhile
        if not types:
            return [], time.monotonic()
        began = time.monotonic()
        return self.claims.of(types, limit, one_per_key=True), began

    def claim_ahead(self, jobs: list[Job], stopping: threading.Event) -> None:
        """Start claiming the next batch in the background while `jobs` run.

        Only while batches come back full (the queue has more) and the storage's
        claims wait on a server: the wait then overlaps this thread's own work.
        """
        if (
            not self.ahead_allowed
            or stopping.is_set()
            or len(jobs) < AHEAD_FROM
            or len(jobs) < self._requested
        ):
            return
        limit = self.size(len(jobs), in_hand=len(jobs))
        if limit < 1:
            return
        self._requested = limit
        future: concurrent.futures.Future[tuple[list[Job], float]] = concurrent.futures.Future()

        def claim() -> None:
            try:
                future.set_result(self._claim(limit))
            except BaseException as error:  # noqa: BLE001 - handed to the worker thread
                future.set_exception(error)

        # A daemon thread per batch (not a pool): like the worker, it must never hold
        # up the interpreter's exit, even while a claim waits on a lost database.
        name = f"dbjobq-claim-{self.claims.worker_id}"
        threading.Thread(target=claim, name=name, daemon=True).start()
        self._next = future

    def _take_ahead(self) -> tuple[list[Job], float] | None:
        """The batch claimed ahead, once it is in; `None` if there is none."""
        future, self._next = self._next, None
        if future is None:
            return None
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - the claim is simply made again
            logger.debug("worker %s: claiming ahead failed: %s", self.claims.worker_id, error)
            return None

    def skip_queued(self) -> None:
        """Attempts queued on an abandoned runner go to the next one, unless begun."""
        for job_id, queued in list(self.attempts.items()):
            if queued.skip():
                del self.attempts[job_id]

    def release(self, why: str) -> None:
        """Give back the claimed jobs not started yet; their leases expire otherwise.

        Jobs whose handler the runner has already started stay in the batch, to be
        watched and recorded as usual. A batch claimed ahead goes back whole.
        """
        ahead = self._take_ahead()
        if ahead is not None and ahead[0]:
            self.jobs.extend(ahead[0])
        if not self.jobs:
            return
        jobs, started = [], []
        for job in self.jobs:
            attempt = self.attempts.get(job.id)
            if attempt is None or attempt.skip():
                self.attempts.pop(job.id, None)
                jobs.append(job)
            else:
                started.append(job)
        self.jobs = collections.deque(started)
        if not jobs:
            return
        worker_id = self.claims.worker_id
        try:
            released = self.claims.give_back(jobs)
        except StorageError as error:
            logger.warning(
                "worker %s: could not give back %d unstarted job(s) (%s); they will be "
                "rescued when their leases expire",
                worker_id,
                len(jobs),
                error,
            )
            return
        logger.debug("worker %s gave back %d unstarted job(s): %s", worker_id, released, why)
