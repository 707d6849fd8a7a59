"""SQLAlchemyStorage: jobs in a SQLite, PostgreSQL or MySQL/MariaDB table."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine

from dbjobq._urls import mask_url
from dbjobq.errors import ConfigurationError, JobNotFound, StorageError
from dbjobq.flow import LimitMap
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup, claim_order
from dbjobq.payload import dumps
from dbjobq.storage._sql import changes, workflows
from dbjobq.storage._sql.dialects import connect
from dbjobq.storage._sql.dialects.base import Ready
from dbjobq.storage._sql.engine import check_busy_timeout, check_engine_options
from dbjobq.storage._sql.leases import answers, first_leases
from dbjobq.storage._sql.notify import ENQUEUED, FINISHED, Watcher
from dbjobq.storage._sql.rows import STATUS, findable
from dbjobq.storage._sql.schema import (
    CORRELATION_LENGTH,
    PENDING,
    RUNNING,
    UNFINISHED,
    check_identifier,
    db_now,
    db_now_plus,
    seconds,
)
from dbjobq.storage._sql.side import SideTables
from dbjobq.storage._sql.workflow_tables import WorkflowTables
from dbjobq.storage.base import Capabilities, Storage

__all__ = ["SQLAlchemyStorage"]

logger = logging.getLogger(__name__)

RATE_WINDOW_MAX = 86400.0
"""The longest `RateLimit.per`: `purge` forgets starts older than that."""


class SQLAlchemyStorage(SideTables, WorkflowTables, Storage):
    """Stores jobs in a table of a SQLite, PostgreSQL or MySQL/MariaDB database.

    * **SQLite** (`sqlite:///path/jobs.db`, the embedded default): the file is put in
      WAL mode; every write is a short `BEGIN IMMEDIATE` transaction with a busy
      timeout, so threads and processes on one host share the file without "database
      is locked" errors. `sqlite://` (in memory) lives as long as the storage object
      and is shared by its threads only.
    * **PostgreSQL** (`postgresql://...`, driver psycopg 3 from the `postgres` extra):
      jobs are claimed with `FOR UPDATE SKIP LOCKED`, so any number of processes on
      any number of hosts share one table.
    * **MySQL 8.0.17+ / MariaDB 10.6+** (`mysql://...` or `mariadb://...`, driver
      PyMySQL from the `mysql` extra): the same, in READ COMMITTED transactions.
      Every table declares charset utf8mb4 with a binary collation that does not
      pad (`utf8mb4_nopad_bin` on MariaDB, `utf8mb4_0900_bin` on MySQL), whatever
      the server's or database's defaults, so text compares byte for byte as on
      the other backends; tables made by earlier releases are converted once by
      `initialize`.

    Times (`run_at`, leases) come from the database clock. Tables are created on first
    use (`initialize`), named `<table_prefix>jobs` and `<table_prefix>schema`.

    Concurrency and rate limits (`claim_limited`) are checked in the claim's own
    short transaction, under a lock per key that is never waited for: a key
    another claim is deciding on is skipped until the next claim. Rate limits
    count starts in the `<table_prefix>rate_starts` table, which claims and
    `purge` keep short.

    Idle workers learn of jobs enqueued by other processes at once (`listen=True`):
    on PostgreSQL an insert trigger NOTIFYs a channel that a background connection
    LISTENs to; on SQLite a background thread reads `PRAGMA data_version` every
    couple of milliseconds. Polling stays the safety net.

    Workflows (`depends_on`, groups) keep their edges in
    `<table_prefix>dependencies` and their groups in `<table_prefix>groups`. A
    job's children are settled in the transaction that finishes it; on
    PostgreSQL, where a completion is one autocommitted statement, in a second
    transaction right after it, which `settle_waiting` backs up after a crash.
    A job without children pays nothing for this but one more column returned.

    Args:
        url: A database URL or an existing SQLAlchemy `Engine`. A URL without a
            driver uses psycopg for PostgreSQL and PyMySQL for MySQL/MariaDB.
        table_prefix: Prefix of the table and index names (letters, digits, `_`).
        schema: PostgreSQL schema holding the tables (created if missing), or the
            MySQL database; `None` uses the connection's default.
        busy_timeout: SQLite only: seconds a writer waits for the file lock, from
            0 to 2147483 (ignored for an `Engine`, which has its own).
        engine_options: Extra keyword arguments for `sqlalchemy.create_engine`; not
            with an `Engine`, which is made already.
        listen: Wake idle workers when another process enqueues (see above).
            `False` relies on polling alone: for PgBouncer in transaction pooling
            mode, which cannot pass LISTEN on. No effect on MySQL/MariaDB, which
            always poll.

    Raises:
        ConfigurationError: If the URL cannot be parsed (or its password holds an
            unencoded `@`), names an unsupported database, or needs a driver that
            is not installed; if a name is not a plain identifier; or if an option
            has the wrong type or is out of range. Nothing is connected before
            these checks.
    """

    def __init__(
        self,
        url: str | URL | Engine = "sqlite:///jobs.db",
        *,
        table_prefix: str = "dbjobq_",
        schema: str | None = None,
        busy_timeout: float = 30.0,
        engine_options: Mapping[str, Any] | None = None,
        listen: bool = True,
    ) -> None:
        if not isinstance(url, (str, URL, Engine)):
            raise ConfigurationError(
                "storage must be a Storage, a database URL or a SQLAlchemy Engine, got "
                f"{type(url).__name__}"
            )
        self.table_prefix = check_identifier(table_prefix, "table_prefix")
        self.schema = None if schema is None else check_identifier(schema, "schema")
        busy_timeout = check_busy_timeout(busy_timeout)
        engine_options = check_engine_options(engine_options, isinstance(url, Engine))
        if not isinstance(listen, bool):
            raise ConfigurationError(f"listen must be True or False, got {listen!r}")
        self._owns_engine = not isinstance(url, Engine)
        self._dialect = dialect = connect(
            url,
            schema=self.schema,
            table_prefix=self.table_prefix,
            busy_timeout=busy_timeout,
            engine_options=engine_options,
        )
        self._engine = dialect.engine
        self._run = dialect.run
        self._reader = dialect.reader
        tables = dialect.tables
        self._jobs, self._version = tables.jobs, tables.version
        self._workers, self._periodic = tables.workers, tables.periodic
        self._paused = tables.paused
        self._metadata = dialect.metadata
        self.listen = listen
        self.claims_ahead = dialect.claims_ahead
        """Whether workers claim their next batch while one runs (`Capabilities`);
        set it to `False` to have them claim only when a batch is done."""
        self._watcher: Watcher | None = None
        self._watcher_lock = threading.Lock()
        self._initialized = False
        self._init_lock = threading.Lock()

    def __repr__(self) -> str:
        url = mask_url(self._engine.url)
        return f"SQLAlchemyStorage({url!r}, table_prefix={self.table_prefix!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine in use."""
        return self._engine

    @property
    def capabilities(self) -> Capabilities:
        """Everything optional, as far as the database allows.

        Claims ahead only where a claim waits on a server (not SQLite); wake-ups
        only where `subscribe` can watch (see there).
        """
        return Capabilities(
            release=True,
            rescue_workers=True,
            newest_first=True,
            claims_ahead=self.claims_ahead,
            notify=self.listen and self._dialect.can_notify,
            transactions=True,
            pauses=True,
            limits=True,
            snooze=True,
            workflows=True,
            notify_finished=self.listen and self._dialect.can_notify,
            unique_rules=True,
        )

    # -- set-up -------------------------------------------------------------------

    def initialize(self) -> None:
        """Create the tables and indexes if missing (idempotent, safe across processes).

        Raises:
            ConfigurationError: If the tables were made by a newer, incompatible
                version of dbjobq.
            StorageError: If the database cannot be reached.
        """
        with self._init_lock:
            if not self._initialized:
                self._run("initialize", self._dialect.create_schema, write=True)
                self._initialized = True

    def schema_exists(self) -> bool:
        """Whether the jobs table exists; creates nothing, not even a SQLite file.

        A SQLite file is opened read-only, and only if it exists.

        Raises:
            StorageError: If the database cannot be reached (or a SQLite file is
                not a database).
        """
        return self._dialect.schema_exists()

    def close(self) -> None:
        """Close all pooled connections (only those of an engine this object created).

        Also stops the thread that watches for other processes' enqueues.
        """
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.close(wait=self._dialect.close_wait)
                self._watcher = None
        if self._owns_engine:
            self._engine.dispose()

    # -- wake-ups from other processes ------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when another process may have enqueued jobs.

        Returns `None` (polling only) on MySQL/MariaDB, for in-memory SQLite, with
        `listen=False`, and on PostgreSQL through a driver other than psycopg 3.
        """
        return self._subscribe(callback, ENQUEUED)

    def subscribe_finished(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when a job may have finished, in this process or another.

        PostgreSQL: a trigger NOTIFYs once per transaction that finishes jobs.
        SQLite: every commit of another connection (`data_version`) calls it.
        Returns `None` (polling only) where `subscribe` does.
        """
        return self._subscribe(callback, FINISHED)

    def _subscribe(self, callback: Callable[[], None], kind: str) -> Callable[[], None] | None:
        if not self.listen:
            return None
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = self._dialect.watcher()
            if self._watcher is None:
                return None
            return self._watcher.subscribe(callback, kind)

    # -- the Storage interface -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        return self._dialect.enqueue(jobs)

    def enqueue_in_transaction(
        self,
        connection: Any,
        jobs: Sequence[NewJob],
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> list[str]:
        """Store jobs in the application's open transaction.

        `connection` is a SQLAlchemy `Connection` or ORM `Session` in a transaction;
        the jobs are committed or rolled back with the application's own rows.

        Raises:
            ConfigurationError: If `connection` is not a SQLAlchemy connection or
                session in a transaction on this storage's kind of database.
            StorageError: If the insert fails; roll the transaction back.
            DuplicateJobError: If a job with `on_conflict="raise"` met a holder:
                the call's jobs are rolled back to a savepoint, and the
                application's transaction can go on.
        """
        connection = self._dialect.joined(connection)
        if not self._initialized:
            if self._dialect.join_creates_tables:
                self.initialize()
            elif not sa.inspect(connection).has_table(self._jobs.name):
                # Creating them from another connection would wait forever for the
                # write lock this very transaction may hold.
                raise ConfigurationError(
                    "the job tables do not exist yet: call JobQueue.initialize() once at "
                    "start-up, outside any transaction"
                )
        if not jobs:
            return []
        try:
            if any(job.on_conflict == "raise" for job in jobs):
                # DuplicateJobError must leave nothing of the call in the
                # application's transaction, which goes on.
                with connection.begin_nested():
                    ids = self._dialect.insert_jobs(connection, jobs)
            else:
                ids = self._dialect.insert_jobs(connection, jobs)
        except exc.SQLAlchemyError as error:
            raise StorageError(f"enqueue failed: {error}") from error
        if on_commit is not None:
            callback = on_commit
            event.listen(connection, "commit", lambda conn: callback(), once=True)
        return ids

    def claim(
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None = None,
        limit: int = 1,
        newest_first: bool = False,
    ) -> list[Job]:
        if not queues or (types is not None and not types) or limit < 1:
            return []
        for _ in range(100):
            jobs, corrupt, unsettled = self._claim_once(
                queues, worker_id, lease_seconds, types, limit, newest_first
            )
            if unsettled:
                self._settle_later(unsettled)
            # Corrupt rows were failed on the way: look again rather than report an
            # empty queue, so that a bad row never stalls a worker.
            if jobs or not corrupt:
                break
        return claim_order(jobs, newest_first)

    def _claim_once(
        self,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None,
        limit: int,
        newest_first: bool = False,
    ) -> tuple[list[Job], int, list[workflows.Finished]]:
        params = self._claim_params(worker_id, lease_seconds)
        ready = Ready(queues, types, limit, newest_first)

        def run(conn: Connection) -> tuple[list[Job], int, list[workflows.Finished]]:
            return self._dialect.claimed_jobs(conn, self._dialect.claim(conn, ready, params))

        return self._run("claim", run, write=True, single=True)

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
        """`claim` under `limits`, in one short transaction that never waits on a lock.

        Each limited key (concurrency or rate) is locked for the transaction
        without waiting: a PostgreSQL transaction-level advisory lock (fine behind
        PgBouncer), a MySQL `GET_LOCK` released right after; SQLite's write
        transactions run one at a time anyway. A key another claimer holds at that
        moment is skipped this time, and its jobs are left for the next claim.
        """
        if not queues or not types or limit < 1:
            return []
        ready = Ready(queues, types, limit, newest_first)
        for _ in range(100):
            params = self._claim_params(worker_id, lease_seconds)

            def run(
                conn: Connection, params: Mapping[str, Any] = params
            ) -> tuple[list[Job], int, list[workflows.Finished]]:
                rows = self._dialect.claim_limited(conn, ready, limits, params, one_per_key)
                return self._dialect.claimed_jobs(conn, rows)

            jobs, corrupt, _ = self._run("claim_limited", run, write=True)
            if jobs or not corrupt:
                break
        return claim_order(jobs, newest_first)

    def snooze(self, job_id: str, token: str, *, delay: float) -> bool:
        return self._update_held("snooze", job_id, token, changes.snoozed(self._jobs, delay))

    @staticmethod
    def _claim_params(worker_id: str, lease_seconds: float) -> dict[str, Any]:
        return {
            "c_worker": worker_id,
            "c_token": uuid.uuid4().hex,
            "c_lease": float(lease_seconds),
        }

    def _held(self, job_id: str, token: str) -> sa.ColumnElement[bool]:
        c = self._jobs.c
        return sa.and_(c.id == job_id, c.status == RUNNING, c.lease_token == token)

    def _update_held(self, what: str, job_id: str, token: str, values: Mapping[str, Any]) -> bool:
        stmt = sa.update(self._jobs).where(self._held(job_id, token)).values(**values)
        return self._run(
            what, lambda conn: conn.execute(stmt).rowcount == 1, write=True, single=True
        )

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        expires = db_now_plus(seconds("lease", lease_seconds))
        return self._update_held("heartbeat", job_id, token, {"lease_expires_at": expires})

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        values = {"progress": progress, "progress_message": message, "updated_at": db_now()}
        return self._update_held("set_progress", job_id, token, values)

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        text = None if result is None else dumps(result)
        return self._finish_held(
            "complete", job_id, token, changes.completed(text), workflows.COMPLETED
        )

    def complete_many(self, outcomes: Sequence[tuple[str, str, Any]]) -> list[bool]:
        """Complete several jobs in one transaction.

        Jobs with equal results share one `UPDATE` (a batch of no-op jobs is one
        statement, run without an explicit transaction on PostgreSQL); the rest
        take one statement each.
        """
        if len(outcomes) < 2:
            return [self.complete(job_id, token, result=r) for job_id, token, r in outcomes]
        firsts = first_leases([(job_id, token) for job_id, token, _ in outcomes])
        if firsts is None:
            return super().complete_many(outcomes)
        groups: dict[str | None, tuple[str | None, list[tuple[str, str]]]] = {}
        chosen = outcomes if isinstance(firsts, range) else [outcomes[i] for i in firsts]
        for job_id, token, result in chosen:
            text = None if result is None else dumps(result)  # serialised once, here
            groups.setdefault(text, (text, []))[1].append((job_id, token))

        dialect = self._dialect

        def run(conn: Connection) -> tuple[set[str], list[workflows.Finished]]:
            rows: list[tuple[str, Any]] = []
            for result, leases in groups.values():
                rows.extend(self._complete_group(conn, result, leases))
            unsettled = workflows.settle_finished(dialect, conn, rows, workflows.COMPLETED)
            return {job_id for job_id, _ in rows}, unsettled

        single = len(groups) == 1  # one UPDATE
        done, unsettled = self._run("complete_many", run, write=True, single=single)
        if unsettled:
            self._settle_later(unsettled)
        return answers([job_id for job_id, _, _ in outcomes], firsts, done)

    def _complete_group(
        self, conn: Connection, result: str | None, leases: list[tuple[str, str]]
    ) -> Iterable[tuple[str, Any]]:
        """Complete the held jobs among `leases` with one result (JSON text).

        Returns `(id, children)` of each job completed.
        """
        text = sa.bindparam("l_result", result, type_=self._jobs.c.result.type)
        values = changes.completed(text)
        change = changes.LeaseChange("complete", values, {"l_result": result})
        return self._dialect.update_leases(conn, leases, change)

    def release(self, job_id: str, token: str) -> bool:
        return self._update_held("release", job_id, token, changes.released(self._jobs))

    def release_many(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        """Give back several jobs in one statement (one transaction on MySQL)."""
        if len(leases) < 2:
            return [self.release(job_id, token) for job_id, token in leases]
        firsts = first_leases(leases)
        if firsts is None:
            return super().release_many(leases)
        given = list(leases) if isinstance(firsts, range) else [leases[i] for i in firsts]
        released = changes.LeaseChange("release", changes.released(self._jobs))

        def run(conn: Connection) -> set[str]:
            return {job_id for job_id, _ in self._dialect.update_leases(conn, given, released)}

        done = self._run("release_many", run, write=True, single=True)
        return answers([job_id for job_id, _ in leases], firsts, done)

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        values = changes.failed(error, retry_in)
        if retry_in is not None:
            return self._update_held("fail", job_id, token, values)
        return self._finish_held("fail", job_id, token, values, workflows.FAILED)

    def rescue_expired(self, *, retry_in: float = 0.0) -> int:
        c = self._jobs.c
        expired = sa.and_(c.status == RUNNING, c.lease_expires_at <= db_now())
        why = ("lease expired: worker ", " stopped heartbeating")
        return self._rescue("rescue_expired", expired, why, retry_in)

    def rescue_workers(self, worker_ids: Collection[str], *, retry_in: float = 0.0) -> int:
        ids = sorted(set(worker_ids))
        if not ids:
            return 0
        c = self._jobs.c
        held = sa.and_(c.status == RUNNING, c.worker_id.in_(ids))
        why = ("worker ", " is gone: rescued without waiting for its lease to expire")
        return self._rescue("rescue_workers", held, why, retry_in)

    def _rescue(
        self, what: str, lost: sa.ColumnElement[bool], why: tuple[str, str], retry_in: float
    ) -> int:
        """Retry or fail the `lost` jobs; `last_error` is `why` around the worker id."""
        to_retry, to_fail = changes.rescues(self._jobs, lost, why, retry_in)
        dialect = self._dialect

        def run(conn: Connection) -> int:
            retried = conn.execute(to_retry).rowcount
            failed = workflows.finish(dialect, conn, to_fail)
            workflows.settle_finished(dialect, conn, failed, workflows.FAILED)  # in this one
            return int(retried) + len(failed)

        return self._run(what, run, write=True)

    def get(self, job_id: str) -> Job:
        if not findable(job_id):
            raise JobNotFound(job_id)
        stmt = sa.select(self._jobs).where(self._jobs.c.id == job_id)

        def run(conn: Connection) -> Job | None:
            row = conn.execute(stmt).first()
            return None if row is None else self._reader.to_job(row)

        job = self._run("get", run, write=False, single=True)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the Job field
        limit: int | None = 100,
        newest_first: bool = False,
        correlation_id: str | None = None,
    ) -> list[Job]:
        """Jobs matching every filter given (see `Storage.list_jobs`).

        `correlation_id` is looked up in the indexed copy of
        `meta["correlation_id"]` that every insert writes (its first 255
        characters: a longer id is checked against `meta` as well).
        """
        texts = (queue, type, correlation_id)
        if not all(findable(text) for text in texts if text is not None):
            return []  # no job can be in such a queue or of such a type
        c = self._jobs.c
        cut = correlation_id is not None and len(correlation_id) >= CORRELATION_LENGTH
        order = c.id.desc() if newest_first else c.id
        stmt = sa.select(self._jobs).order_by(order).limit(None if cut else limit)
        if correlation_id is not None:
            stmt = stmt.where(c.correlation_id == correlation_id[:CORRELATION_LENGTH])
        if status is not None:
            stmt = stmt.where(c.status == JobStatus(status).value)
        if queue is not None:
            stmt = stmt.where(c.queue == queue)
        if type is not None:
            stmt = stmt.where(c.type == type)
        jobs = self._run(
            "list_jobs",
            lambda conn: [self._reader.to_job(r) for r in conn.execute(stmt)],
            write=False,
            single=True,
        )
        if cut:
            jobs = [job for job in jobs if job.meta.get("correlation_id") == correlation_id]
            jobs = jobs if limit is None else jobs[:limit]
        return jobs

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        c = self._jobs.c
        stmt = sa.select(c.queue, c.status, sa.func.count()).group_by(c.queue, c.status)
        if finished_within is not None:
            since = db_now_plus(seconds("within", -float(finished_within)))
            stmt = stmt.where(c.finished_at >= since)

        def run(conn: Connection) -> dict[tuple[str, JobStatus], int]:
            counts = {}
            for queue, status, n in conn.execute(stmt):
                if status in STATUS:
                    counts[(queue, JobStatus(status))] = n
                else:
                    logger.warning("%d job(s) in queue %r have unknown status %r", n, queue, status)
            return counts

        return self._run("count_jobs", run, write=False, single=True)

    def pending_summary(self) -> list[PendingGroup]:
        c = self._jobs.c
        stmt = (
            sa.select(c.queue, c.type, sa.func.count(), sa.func.min(c.run_at))
            .where(c.status == PENDING)
            .group_by(c.queue, c.type)
            .order_by(c.queue, c.type)
        )

        def run(conn: Connection) -> list[PendingGroup]:
            return [PendingGroup(q, t, n, oldest) for q, t, n, oldest in conn.execute(stmt)]

        return self._run("pending_summary", run, write=False, single=True)

    def cancel(self, job_id: str) -> bool:
        if not findable(job_id):
            raise JobNotFound(job_id)
        c = self._jobs.c
        stmt = (
            sa.update(self._jobs)
            .where(c.id == job_id, c.status.in_(UNFINISHED))
            .values(**changes.cancelled())
        )
        dialect = self._dialect

        def run(conn: Connection) -> bool | None:
            rows = workflows.finish(dialect, conn, stmt)
            if rows:
                workflows.settle_finished(dialect, conn, rows, workflows.CANCELLED)  # in this one
                return True
            return False if dialect.exists(conn, job_id) else None

        done = self._run("cancel", run, write=True)
        if done is None:
            raise JobNotFound(job_id)
        return done

    def retry(self, job_id: str) -> bool:
        if not findable(job_id):
            raise JobNotFound(job_id)
        c = self._jobs.c
        stmt = (
            sa.update(self._jobs)
            .where(
                c.id == job_id, c.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value])
            )
            .values(**changes.retried())
        )
        held = sa.select(c.unique_key).where(c.id == job_id).scalar_subquery()
        taken = sa.select(c.id).where(c.unique_key == held, c.status.in_(UNFINISHED))

        def run(conn: Connection) -> bool | None:
            if not self._dialect.exists(conn, job_id):
                return None
            if conn.execute(taken).first() is not None:
                return False
            return bool(conn.execute(stmt).rowcount == 1)

        try:
            done = self._run("retry", run, write=True)
        except StorageError as error:
            if isinstance(error.__cause__, exc.IntegrityError):
                return False  # a concurrent enqueue took the unique key first
            raise
        if done is None:
            raise JobNotFound(job_id)
        return done

    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        """Delete finished jobs, with their dependency edges and emptied groups.

        A job with an unfinished child is kept (and does not count towards
        `limit`). Jobs outside workflows go in one DELETE, as before workflows
        existed; jobs with parents, children or a group are deleted by id, with
        their edges, and a group goes with the last of its members and its
        callback.
        """
        c = self._jobs.c
        dialect = self._dialect
        finished = [JobStatus(s).value for s in statuses if JobStatus(s).is_finished]
        if not finished:
            return 0
        cutoff = db_now_plus(seconds("age", -float(older_than)))
        doomed = sa.and_(c.status.in_(finished), c.finished_at < cutoff)
        # Starts older than the longest rate window, of keys no claim uses any more
        # (claims forget the old starts of the keys they use).
        r = self._dialect.tables.rate_starts.c
        old_starts = sa.delete(self._dialect.tables.rate_starts).where(
            r.started_at < db_now_plus(seconds("day", -RATE_WINDOW_MAX))
        )

        def run(conn: Connection) -> int:
            conn.execute(old_starts)
            if limit is None:
                return workflows.purge_all(dialect, conn, doomed)
            return workflows.purge_batch(dialect, conn, doomed, limit)

        return self._run("purge", run, write=True)
