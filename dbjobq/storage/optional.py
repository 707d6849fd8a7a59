"""The optional part of the storage contract: what a backend declares in `Capabilities`.

`Storage` inherits these methods; each default says "not offered" (it raises
`NotImplementedError`, or returns `None` for the subscriptions), and a backend that
implements one declares its flag (see `dbjobq.storage.Capabilities`). Callers look at
`Storage.capabilities` and nothing else before they use one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from dbjobq.errors import ConfigurationError
from dbjobq.flow import LimitMap
from dbjobq.job import Job, NewJob
from dbjobq.workflow import GroupStatus

__all__ = ["OptionalMethods"]


class OptionalMethods:
    """The optional methods of `Storage`, with their defaults (see each)."""

    def release(self, job_id: str, token: str) -> bool:
        """Give back a claimed job whose attempt is not to count (optional).

        The job becomes `pending` again as if the claim had not happened:
        `attempts` goes back down by one, the lease is cleared, `started_at`
        becomes `None`; its `run_at`, priority and place in line are kept. Whatever
        the attempt wrote meanwhile (`progress`, `progress_message`) is left as it
        is, as are `last_error` and `result`; the next claim clears the progress.

        A worker gives back two kinds of jobs this way. Jobs it claimed in a batch
        and will not start (it is stopping, the job ahead of them turned out
        slow, or, with `concurrency`, they are sync jobs beyond the one its sync
        slot takes). And a started job whose handler was interrupted by a shutdown
        or a lease it could not renew (it raised once `JobContext.cancelled` was
        set for `shutdown` or `lease_lost`): the work
        is unfinished, through no fault of the job, so the attempt does not count.
        A backend that implements it declares `Capabilities(release=True)`.
        Without it (this default raises `NotImplementedError`), workers claim one
        job at a time, and an interrupted attempt is recorded as a failed one.

        Returns:
            `True` if released; `False` (and no change) if `token` does not hold
            the lease.
        """
        raise NotImplementedError

    def release_many(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        """Give back several claimed, unstarted jobs: `release` for each `(job_id, token)`.

        A worker gives back what is left of a batch at once. The default calls
        `release` once per job; a backend may override it to do them all in one
        statement. Each job follows `release`'s rules on its own, in order: a lease
        given twice is released once and its later occurrences return `False`.

        Returns:
            One flag per lease, in order, as `release` returns it.
        """
        return [self.release(job_id, token) for job_id, token in leases]

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when another process may have enqueued jobs (optional).

        The wake-up hook: idle workers subscribe so that jobs enqueued by other
        processes reach them in milliseconds rather than at their next poll.
        `callback` may be called from any thread, spuriously, or not at all (a
        missed wake-up only means a later poll), so it must be cheap and must not
        raise. Enqueues in the same process wake workers without this.

        A backend that implements it declares `Capabilities(notify=True)`.

        Returns:
            A function that ends the subscription; `None` if the backend cannot
            tell (this default, or a store that cannot notify after all): workers
            then rely on polling.
        """
        return None

    def subscribe_finished(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when a job may have finished in another process (optional).

        The wake-up hook of `JobQueue.wait`: a waiter re-reads its job (`get`) when
        called, so a job finished elsewhere is seen in milliseconds rather than at
        the waiter's next poll. "Finished" is any move into `completed`, `failed` or
        `cancelled`. As with `subscribe`, `callback` may be called from any thread,
        spuriously, or not at all, and must be cheap and must not raise; jobs
        finished in the same process wake their waiters without this.

        A backend that implements it declares `Capabilities(notify_finished=True)`.

        Returns:
            A function that ends the subscription; `None` if the backend cannot
            tell (this default): waiters then rely on polling.
        """
        return None

    def enqueue_in_transaction(
        self,
        connection: Any,
        jobs: Sequence[NewJob],
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> list[str]:
        """Store new jobs inside the caller's own open transaction (optional).

        Same rules as `enqueue`, but nothing is committed here: the jobs exist if and
        only if the caller's transaction commits. `on_commit` is called after that
        commit. `JobQueue` may call this before `initialize`; create what is missing
        or raise `ConfigurationError` saying so. A backend that implements it
        declares `Capabilities(transactions=True)`; those that cannot join a
        transaction keep this default, which raises `ConfigurationError`.

        Args:
            connection: The caller's connection, in whatever form the backend takes.
            jobs: Validated jobs with their ids already assigned.
            on_commit: Called once the caller's transaction has committed.

        Returns:
            The ids, as `enqueue` returns them.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot join an application's transaction")

    # -- flow control (optional) -----------------------------------------------------------

    def claim_limited(
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str],
        limits: LimitMap,
        limit: int = 1,
        newest_first: bool = False,
        one_per_key: bool = False,
    ) -> list[Job]:
        """`claim`, where the jobs of some types start only within their limits (optional).

        Workers call it instead of `claim` when some of their types have handlers
        with limits; it takes the same arguments (and follows the same order and
        rules), plus:

        `limits` maps job types to the `Limits`
        their jobs start under; workers pass it only for the types whose handlers
        have limits. A job of such a type is claimed only while, counting the jobs
        this call claims:

        - (`concurrency`) fewer than its `limit` jobs with its concurrency key are
          `running` with an unexpired lease, whatever their type. The key is the
          job's `concurrency_key`, or if that is `None`, `Limits.concurrency_key`
          of its payload, which the claim stores on the job (claimed or not).
          With `ordered`, no other pending or running job with that key was
          enqueued before it (`created_at`, then `id`); a `waiting` job takes its
          turn once it is pending, so it holds nothing back.
        - (`rate_limit`) fewer than `count` jobs with its rate key
          (`Limits.rate_key`) were claimed in the last `per` seconds; the claim
          records each start it makes (see `recent_starts`).

        With `one_per_key`, this call claims at most one job per concurrency key
        (a worker that runs its batch one job after another then holds one slot of
        each key, and leaves the others to other workers).

        The check and the claim are one atomic step: racing claimers, in any
        process, never exceed a limit. A job held back is left as it is (but for
        its stored key) and does not stop jobs behind it from being claimed.

        Backends with it (and `recent_starts`) declare `Capabilities(limits=True)`;
        the default raises `NotImplementedError`.

        Returns:
            The claimed jobs as stored after the claim, in claim order.
        """
        raise NotImplementedError

    def recent_starts(self, key: str, *, within: float) -> list[datetime]:
        """When jobs with rate key `key` were claimed in the last `within` seconds.

        Part of `Capabilities.limits` (see `claim`'s `limits`): the starts a rate
        limit counts, oldest first. Starts older than the longest window in use
        may be forgotten. The default raises `NotImplementedError`.
        """
        raise NotImplementedError

    def snooze(self, job_id: str, token: str, *, delay: float) -> bool:
        """Put a running job back to `pending`, due `delay` seconds from now (optional).

        What a handler's `Snooze` does: as `release`, the attempt does not count
        (`attempts` goes back down by one), the lease is cleared and `started_at`
        becomes `None`; `run_at` becomes now plus `delay`; `last_error`, `result`
        and `progress` are left as they are. Backends with it declare
        `Capabilities(snooze=True)`; the default raises `NotImplementedError`.

        Returns:
            `True` if snoozed; `False` (and no change) if `token` does not hold
            the lease.
        """
        raise NotImplementedError

    # -- pausing queues (optional) ---------------------------------------------------------

    def pause_queue(self, queue: str) -> bool:
        """Stop claims from `queue` until `resume_queue`, for every worker on the store.

        While a queue is paused, `claim` treats its jobs as not due: they stay
        `pending`, use no attempt, and are claimed once the queue is resumed. Jobs
        already running finish as usual; enqueueing into a paused queue still works.
        Backends with this declare `Capabilities(pauses=True)`; the default raises
        `NotImplementedError`.

        Returns:
            `True` if the queue was running and is paused now; `False` if it was
            paused already.
        """
        raise NotImplementedError

    def resume_queue(self, queue: str) -> bool:
        """Let workers claim from a paused `queue` again (see `pause_queue`).

        Returns:
            `True` if the queue was paused; `False` if it was not.
        """
        raise NotImplementedError

    def paused_queues(self) -> set[str]:
        """The names of the paused queues (see `pause_queue`)."""
        raise NotImplementedError

    # -- workflows (optional) --------------------------------------------------------------
    #
    # Rules for a backend with `Capabilities(workflows=True)`, on top of `enqueue`'s:
    #
    # * Each id in `NewJob.depends_on` names a stored job or an earlier job of the
    #   same call (one that a unique key deduplicated stands for the job that
    #   holds the key). Any other id raises `InvalidJobError` naming it, and
    #   nothing of the call is stored. So parents always exist before their
    #   children, and no cycle can form.
    # * A job with parents is stored `waiting`, unless its parents decide it
    #   already: `pending` if every parent has completed (with
    #   `on_parent_failure="run"`: has finished); `cancelled` (as below) if one is
    #   failed or cancelled and `on_parent_failure` is `"cancel"`.
    # * In the same transaction as a parent's outcome (`complete`, `fail` without
    #   retry, `cancel`, a rescue or a corrupt row that fails it), its `waiting`
    #   children are settled: a child whose parents have all completed (with
    #   "run": all finished) becomes `pending`, due at its own `run_at`; with
    #   "cancel", a child of a parent that ended `failed` or `cancelled` becomes
    #   `cancelled` at once, `finished_at = now`, `last_error` =
    #   `"parent <id> failed"` or `"parent <id> was cancelled"`, and its own
    #   waiting children in turn, down the graph. A backend that cannot do this in
    #   that transaction leaves it to `settle_waiting`, which workers call often.
    # * Each parent counts once for a child: when it first finishes. A failed
    #   parent retried later (`retry`) is not waited for again by a child that
    #   runs anyway, and does not revive the children it cancelled.
    # * `cancel` takes `waiting` jobs too. `retry` of a cancelled child makes it
    #   `pending` (it does not wait again).
    # * `waiting` counts as unfinished everywhere: a waiting job holds its
    #   unique key, and `count_jobs` and `list_jobs` report it.
    # * `purge` keeps a finished job while a job that depends on it is
    #   unfinished (it does not count towards `limit`), so `parents` and
    #   `JobContext.parent_results` find the parents of every job that waits or
    #   runs (but for a cancelled child retried after its parents were purged).
    # * `list_jobs` takes `correlation_id=`: only jobs whose
    #   `meta["correlation_id"]` is that string (passed only when given).

    def enqueue_group(
        self, group_id: str, members: Sequence[NewJob], callback: NewJob | None
    ) -> list[str]:
        """Store a group: its members and the job that runs after them, in one transaction.

        Members are stored as `enqueue` stores jobs, with `Job.group_id =
        group_id` (a member deduplicated by its unique key is the job holding the
        key, which is not made a member). `callback`, if given, depends on every
        member (its `depends_on` lists their ids, as `JobQueue` builds it) and
        follows the workflow rules; it is recorded as the group's callback. Part
        of `Capabilities.workflows`; the default raises `NotImplementedError`.

        Returns:
            The members' ids as `enqueue` returns them, then the callback's id if
            there is one.

        Raises:
            InvalidJobError: If a `depends_on` id is unknown (nothing is stored).
        """
        raise NotImplementedError

    def get_group(self, group_id: str) -> GroupStatus:
        """How many members of the group are in each status, and its callback.

        A purged callback leaves `callback_id` `None`.

        Raises:
            GroupNotFound: If there is no such group (or it was purged: a group is
                forgotten with the last of its jobs).
        """
        raise NotImplementedError

    def parents(self, job_id: str) -> list[Job]:
        """The stored jobs that `job_id` depends on, by id (`[]` for none).

        Raises:
            JobNotFound: If there is no such job.
        """
        raise NotImplementedError

    def children(self, job_id: str) -> list[Job]:
        """The stored jobs that depend on `job_id`, by id (`[]` for none).

        Raises:
            JobNotFound: If there is no such job.
        """
        raise NotImplementedError

    def settle_waiting(self, *, limit: int = 1000) -> int:
        """Settle `waiting` jobs whose parents decide them already (see the rules above).

        The safety net: a job whose last parent's outcome was recorded without
        settling its children (a backend that does it in a second step, a crash
        in between) is settled here, as that outcome would have. A parent that
        is no longer stored counts as completed. Workers call it every few
        seconds; it does nothing when nothing is due, and it makes at most about
        `limit` decisions per call (waiting jobs decided, or, on SQL, parents
        whose children are decided; a cancel takes the graph below it along), so
        that one call stays short.

        Returns:
            How many jobs left `waiting` (to `pending` or `cancelled`), those that
            a cancel took with it down the graph included.
        """
        raise NotImplementedError
