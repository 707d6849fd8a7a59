"""The enqueue half of `JobQueue`: `enqueue`, `insert`, `enqueue_many`, `insert_many`.

Every argument is checked (`_validate.checked_job`) before anything is written; the
storage gets `NewJob`s, and this process's idle workers are woken after the write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from dbjobq._validate import checked_job
from dbjobq.errors import ConfigurationError, InvalidJobError
from dbjobq.job import Insertion, JobSpec, NewJob, OnConflict
from dbjobq.workflow import OnParentFailure

if TYPE_CHECKING:
    from dbjobq._wakeups import Wakeups
    from dbjobq.handlers import HandlerRegistry
    from dbjobq.storage.base import Storage

__all__ = ["EnqueueMethods"]


class EnqueueMethods:
    """How `JobQueue` adds jobs (its enqueue methods, documented there)."""

    if TYPE_CHECKING:
        storage: Storage
        wakeups: Wakeups
        registry: HandlerRegistry
        default_queue: str
        max_payload_bytes: int | None

        def _store(self) -> Storage: ...
        def _workflow_storage(self) -> Storage: ...
        def _specs(
            self, jobs: Iterable[JobSpec], what: str, allow_empty: bool = False
        ) -> list[NewJob]: ...

    def enqueue(
        self,
        type: str,  # noqa: A002 - the job field's name
        payload: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        unique_key: str | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        concurrency_key: str | None = None,
        depends_on: Iterable[str] | None = None,
        on_parent_failure: OnParentFailure = "cancel",
        connection: Any = None,
        unique_for: float | timedelta | None = None,
        on_conflict: OnConflict = "return",
    ) -> str:
        """Add a job and return its id.

        Everything is validated before anything is written; on error nothing is
        stored. The type need not have a handler in this process.

        Args:
            type: The job type; selects the handler.
            payload: A JSON object given to the handler (`{}` when `None`).
            queue: Queue name; defaults to the queue's `default_queue`.
            priority: Higher runs first (a 32-bit int, default 0).
            run_at: Do not run before this aware datetime.
            delay: Or: do not run for this many seconds (number or `timedelta`).
            max_retries: Retries after a failed first attempt. `None` (the
                default) stores no number: the job gets the handler's
                `max_retries` (else the queue's) when it runs, so it does not
                matter which queue object enqueued it.
            unique_key: While an unfinished job holds this key, return that job's
                id instead of adding a new job (see `on_conflict`).
            meta: Free-form JSON object stored with the job.
            timeout: Seconds an attempt may run before failing with
                `JobTimeoutError`; `None`: the handler's `timeout` when it runs.
            concurrency_key: The key the handler's `Concurrency` limit counts the
                job under, instead of the one its key function gives (jobs of
                several types can share a key this way). Without a `Concurrency`
                on the handler that runs it, the key limits nothing.
            depends_on: Ids of jobs this one waits for: it is `waiting` until
                they have all completed, then `pending` (due at its own `run_at`).
                They must exist already (or come earlier in the same
                `enqueue_many`); a finished one counts at once.
            on_parent_failure: `"cancel"` (the default): a parent that fails for
                good or is cancelled cancels this job too, and the jobs that wait
                for it. `"run"`: run once every parent has finished, however.
            connection: Join the application's open transaction instead of using
                one of the queue's own (SQL backends: a SQLAlchemy `Connection` or
                ORM `Session` on the same database). The job then exists if and
                only if that transaction commits; workers are woken after the commit.
            unique_for: The key also holds for this long (seconds or a
                `timedelta`) after its job finished (`completed`, `failed` or
                `cancelled`), measured on the storage's clock. Needs `unique_key`.
            on_conflict: What to do when a job holds `unique_key`: `"return"` its
                id; `"raise"` `DuplicateJobError` (nothing is written); or
                `"replace"` its payload (and the concurrency key computed from it)
                and `run_at` (from this call's `run_at` or `delay`) if it is still
                `pending` or `waiting`, and return its id. A running or finished
                holder is left as it is. Needs `unique_key`.

        Returns:
            The new job's id, or the id of the job holding `unique_key` (use
            `insert` to tell which).

        Raises:
            InvalidJobError: If an argument has the wrong type or value.
            PayloadError: If `payload` or `meta` is not a strict-JSON object or is
                too large.
            DuplicateJobError: With `on_conflict="raise"`, if a job holds the key
                (its id is on the error).
            StorageError: If the storage cannot be reached.
            ConfigurationError: If `connection` is given but the backend cannot
                join it (see `Storage.enqueue_in_transaction`), `depends_on` is
                given to a backend without `Capabilities.workflows`, or
                `unique_for` or `on_conflict` to one without
                `Capabilities.unique_rules`.
        """
        return self.insert(
            type,
            payload,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_retries=max_retries,
            unique_key=unique_key,
            meta=meta,
            timeout=timeout,
            concurrency_key=concurrency_key,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
            connection=connection,
            unique_for=unique_for,
            on_conflict=on_conflict,
        ).id

    def insert(
        self,
        type: str,  # noqa: A002 - the job field's name
        payload: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        unique_key: str | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        concurrency_key: str | None = None,
        depends_on: Iterable[str] | None = None,
        on_parent_failure: OnParentFailure = "cancel",
        connection: Any = None,
        unique_for: float | timedelta | None = None,
        on_conflict: OnConflict = "return",
    ) -> Insertion:
        """`enqueue`, telling a new job from one that held the unique key.

        Takes the same arguments and raises the same errors as `enqueue`.

        ```python
        result = queue.insert("sync", {"user": 7}, unique_key="sync:7")
        if not result.inserted:
            log.info("sync for user 7 already queued as %s", result.id)
        ```

        Returns:
            An `Insertion`: the id `enqueue` returns, and `inserted=True` if it
            is a job stored by this call.
        """
        spec = JobSpec(
            type=type,
            payload=payload,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_retries=max_retries,
            unique_key=unique_key,
            meta=meta,
            timeout=timeout,
            concurrency_key=concurrency_key,
            depends_on=None if depends_on is None else _id_list(depends_on),
            on_parent_failure=on_parent_failure,
            unique_for=unique_for,
            on_conflict=on_conflict,
        )
        return self._insert([self._validate(spec)], connection)[0]

    def enqueue_many(self, jobs: Iterable[JobSpec], *, connection: Any = None) -> list[str]:
        """Add many jobs in one transaction (one round trip on SQL backends).

        All jobs are validated first; if any is invalid, none is written.

        Args:
            jobs: The jobs to add.
            connection: Join the application's open transaction (see `enqueue`).

        Returns:
            Their ids, in order (see `enqueue` for `unique_key`).

        Raises:
            InvalidJobError: If a job has a bad argument; the message names its index.
            PayloadError: If a payload or `meta` is not strict JSON.
            DuplicateJobError: If a job with `on_conflict="raise"` met a job
                holding its key; none of the jobs is written.
            StorageError: If the storage cannot be reached.
            ConfigurationError: As for `enqueue`.
        """
        return [insertion.id for insertion in self.insert_many(jobs, connection=connection)]

    def insert_many(self, jobs: Iterable[JobSpec], *, connection: Any = None) -> list[Insertion]:
        """`enqueue_many`, telling new jobs from those that met a unique key's holder.

        Takes the same arguments and raises the same errors as `enqueue_many`.
        A job that met an earlier job of the same call holding its key gets that
        job's id, with `inserted=False`.

        Returns:
            One `Insertion` per job, in order.
        """
        return self._insert(self._specs(jobs, "enqueue_many", allow_empty=True), connection)

    def _insert(self, jobs: list[NewJob], connection: Any = None) -> list[Insertion]:
        ids = self._enqueue(jobs, connection)
        # The queue assigned each id: any other id is the holder of the job's key.
        return [Insertion(got, got == job.id) for job, got in zip(jobs, ids, strict=True)]

    def _enqueue(self, jobs: list[NewJob], connection: Any = None) -> list[str]:
        def wake() -> None:
            self._woken(jobs)

        if any(job.depends_on for job in jobs):
            self._workflow_storage()
        if connection is not None:
            if not self.storage.capabilities.transactions:
                raise ConfigurationError(
                    f"{type(self.storage).__name__} cannot join an application's transaction"
                )
            return self.storage.enqueue_in_transaction(connection, jobs, on_commit=wake)
        if not jobs:
            return []
        ids = self._store().enqueue(jobs)
        wake()
        return ids

    def _woken(self, jobs: Sequence[NewJob]) -> None:
        """Jobs were stored: wake this process's idle workers that take them."""
        self.wakeups.enqueued(jobs)

    def _validate(self, spec: JobSpec, job_id: str | None = None) -> NewJob:
        job = checked_job(
            spec, self.default_queue, self.max_payload_bytes, job_id, self.registry.concurrency_of
        )
        if job.has_unique_rules and not self.storage.capabilities.unique_rules:
            asked = "unique_for" if job.unique_for is not None else "on_conflict"
            raise ConfigurationError(
                f"{type(self.storage).__name__} keeps unique keys only while their job is "
                f"unfinished, returning its id (no Capabilities.unique_rules); {asked} "
                "needs a backend with it"
            )
        return job


def _id_list(ids: Iterable[str]) -> list[str]:
    """`depends_on` as a list; a single id (a `str`) is refused, not split into letters."""
    if isinstance(ids, str):
        raise InvalidJobError("depends_on must be a list of job ids, not one string")
    try:
        return list(ids)
    except TypeError:
        raise InvalidJobError(
            f"depends_on must be a list of job ids, got {type(ids).__name__}"
        ) from None
