"""`Dialect`: what `SQLAlchemyStorage` needs from a database, with portable defaults.

A subclass per database family overrides what differs there, and only that: the
engine options, a faster insert or claim route, the upsert spelling, schema
locks and upgrades, the wake-up watcher. The storage picks one at construction
and never asks which database it is on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy.engine import Connection, Engine

from dbjobq.errors import ConfigurationError, StorageError
from dbjobq.flow import LimitMap
from dbjobq.job import Job, NewJob
from dbjobq.storage._sql import changes, limited, migrate, unique, workflows
from dbjobq.storage._sql.changes import LeaseChange
from dbjobq.storage._sql.engine import EngineSettings, retrying
from dbjobq.storage._sql.notify import Watcher
from dbjobq.storage._sql.rows import JobReader, corruption, insert_params
from dbjobq.storage._sql.schema import (
    PENDING,
    RUNNING,
    UNFINISHED,
    build_tables,
    db_now,
    db_now_plus,
)

logger = logging.getLogger("dbjobq.storage.sqlalchemy_storage")

T = TypeVar("T")


Leases = Sequence[tuple[str, str]]  # (job_id, lease token) pairs
Rows = Sequence[sa.Row[Any]]


class Ready(NamedTuple):
    """Which jobs a claim takes: the arguments of `Dialect.ready`."""

    queues: Sequence[str]
    types: Collection[str] | None
    limit: int
    newest_first: bool


class Dialect:
    """One database family's way of running the storage's statements.

    Made by `SQLAlchemyStorage` for its engine; holds the tables and the
    statements built for them (each built once, then reused).
    """

    backends: ClassVar[tuple[str, ...]] = ()
    """SQLAlchemy backend names (`engine.dialect.name`) this class serves."""
    default_driver: ClassVar[str] = ""
    """The driver a URL without one gets (`postgresql://` -> `postgresql+psycopg://`)."""
    extra: ClassVar[str] = ""
    """The dbjobq extra that installs the driver (named when it is missing)."""
    module: ClassVar[str] = ""
    """The driver's module name."""
    claims_ahead: ClassVar[bool] = True
    """Whether a claim mostly waits on a server (`Capabilities.claims_ahead`)."""
    partial_indexes: ClassVar[bool] = True
    """Whether indexes can be partial (`CREATE INDEX ... WHERE`)."""
    close_wait: ClassVar[float] = 0.0
    """Seconds `close` waits for the watcher to let go of its connection."""
    upgrade_lock_wait: float = 10.0
    """Seconds an upgrade of old tables waits for its lock on a busy table."""
    join_creates_tables: ClassVar[bool] = True
    """Whether `enqueue_in_transaction` may create missing tables from another
    connection while the application's transaction is open."""
    update_returns: ClassVar[bool] = True
    """Whether UPDATE ... RETURNING exists (`workflows.finish`)."""

    @classmethod
    def configure(cls, settings: EngineSettings) -> None:
        """Adjust the URL and options of a new engine (in place).

        The default gives a URL without a driver `default_driver`.
        """
        url = settings.url
        backend = url.get_backend_name()
        if url.drivername == backend:
            settings.url = url.set(drivername=f"{backend}+{cls.default_driver}")

    def __init__(self, engine: Engine, *, schema: str | None, table_prefix: str) -> None:
        self.engine = engine
        self.schema = schema
        self.table_prefix = table_prefix
        self.serial: threading.RLock | None = None
        """Held around every transaction where one connection serves all threads."""
        self.metadata = sa.MetaData(schema=schema)
        self.tables = build_tables(
            self.metadata, table_prefix, partial_indexes=self.partial_indexes
        )
        self.jobs = self.tables.jobs
        self.reader = JobReader(self.jobs)
        self._claims: dict[tuple[Any, ...], Any] = {}  # built claim statements
        self._insert: Any = None
        self._lease_updates: dict[Any, Any] = {}

    # -- transactions ---------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, write: bool, single: bool) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends.

        `write` says whether the block writes; `single` that it runs one statement,
        which needs no explicit transaction. A dialect whose routes take several
        statements where another's take one (MySQL's claims) keeps the default,
        which ignores `single`.
        """
        with (
            self.serial or contextlib.nullcontext(),
            self.engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    def run(
        self, what: str, fn: Callable[[Connection], T], *, write: bool, single: bool = False
    ) -> T:
        """Run `fn` in one transaction, retrying transient errors a few times."""

        def once() -> T:
            with self.transaction(write, single) as conn:
                return fn(conn)

        return retrying(what, once)

    def joined(self, connection: Any) -> Connection:
        """The application's connection (or ORM session's) for `enqueue_in_transaction`.

        Raises:
            ConfigurationError: If it is no SQLAlchemy connection in a transaction
                to this kind of database.
        """
        if isinstance(connection, sa.orm.Session):
            connection = connection.connection()
        if not isinstance(connection, Connection):
            raise ConfigurationError(
                "connection must be a SQLAlchemy Connection or Session, got "
                f"{type(connection).__name__}"
            )
        if not connection.in_transaction():
            raise ConfigurationError("begin a transaction on the connection first")
        if connection.dialect.name != self.engine.dialect.name:
            raise ConfigurationError(
                f"the connection is to {connection.dialect.name}, the job tables are "
                f"on {self.engine.dialect.name}"
            )
        return connection

    # -- statements -----------------------------------------------------------------

    def insert(self, table: sa.Table) -> Any:
        """This dialect's INSERT construct, for `insert_ignoring` and `upsert`."""
        return sa.insert(table)

    def insert_ignoring(self, table: sa.Table) -> Any:
        """An INSERT into `table` that does nothing when a unique key is taken.

        The default is `ON CONFLICT DO NOTHING` (PostgreSQL, SQLite).
        """
        return self.insert(table).on_conflict_do_nothing()

    def upsert(self, table: sa.Table, row: Mapping[str, Any], update: Mapping[str, Any]) -> Any:
        """An INSERT of `row` that sets `update` instead when its primary key exists.

        The default is `ON CONFLICT (key) DO UPDATE` (PostgreSQL, SQLite).
        """
        key = list(table.primary_key.columns)
        stmt = self.insert(table).values(**row)
        return stmt.on_conflict_do_update(index_elements=key, set_=dict(update))

    def unique_holder(self, key: str) -> sa.ColumnElement[bool]:
        """Which row holds unique key `key` (an unfinished job's)."""
        c = self.jobs.c
        return sa.and_(c.unique_key == key, c.status.in_(UNFINISHED))

    def insert_statement(self) -> Any:
        """The INSERT of every enqueue, with the database's times; built once.

        It skips rows that clash with the primary key (a retry after a lost commit
        acknowledgement inserts nothing twice) or with the unique index on
        unfinished unique keys; `resolve_unique` finds out who holds such a key.
        """
        if self._insert is None:
            c = self.jobs.c
            self._insert = self.insert_ignoring(self.jobs).values(
                run_at=sa.func.coalesce(
                    sa.bindparam("p_run_at", type_=c.run_at.type),
                    db_now_plus(sa.bindparam("p_delay", type_=sa.Double())),
                ),
                created_at=db_now(),
                updated_at=db_now(),
                status=PENDING,
                attempts=0,
            )
        return self._insert

    # -- enqueue --------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        """Store `jobs` (at least one) in a transaction of their own; their ids."""
        # One job without a unique key is one INSERT: atomic without a transaction.
        single = len(jobs) == 1 and jobs[0].unique_key is None and not jobs[0].depends_on
        return self.run(
            "enqueue", lambda conn: self.insert_jobs(conn, jobs), write=True, single=single
        )

    def insert_runs(self, jobs: Sequence[NewJob]) -> Iterable[tuple[bool, Sequence[NewJob]]]:
        """`jobs` in runs of `(keyed, jobs)`: whether they have unique keys.

        The default sends the jobs without keys first: on a database whose "now"
        is the transaction's start, order makes no difference.
        """
        return [
            (False, [j for j in jobs if j.unique_key is None]),
            (True, [j for j in jobs if j.unique_key is not None]),
        ]

    def insert_jobs(self, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
        """Insert `jobs` in `conn`'s transaction; the id stored for each.

        That is its own id, or for a job whose unique key an unfinished job holds,
        that job's id. Jobs with parents take `workflows.insert_dependent`.
        """
        if any(job.depends_on for job in jobs):
            return workflows.insert_dependent(self, conn, jobs)
        return self.store_jobs(conn, jobs)

    def store_jobs(self, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
        """Insert `jobs` as `pending`, whatever their parents; the id stored for each.

        A call with unique rules (`NewJob.has_unique_rules`) takes the route of
        `unique.insert_in_order`.
        """
        if any(job.has_unique_rules for job in jobs):
            return unique.insert_in_order(self, conn, jobs)
        inserted: set[str] = set()
        for keyed, run in self.insert_runs(jobs):
            if not run:
                continue
            if keyed:
                inserted.update(self.insert_keyed(conn, run))
            else:
                self.insert_plain(conn, run)
        return [
            job.id
            if job.unique_key is None or job.id in inserted
            else self.resolve_unique(conn, job)
            for job in jobs
        ]

    def insert_plain(self, conn: Connection, jobs: Sequence[NewJob]) -> None:
        """Insert jobs, learning nothing back (drivers run this fastest)."""
        conn.execute(self.insert_statement(), [insert_params(job) for job in jobs])

    def insert_keyed(self, conn: Connection, jobs: Sequence[NewJob]) -> Iterable[str]:
        """Insert jobs with unique keys; the ids of those inserted."""
        stmt = self.insert_statement().returning(self.jobs.c.id)
        return conn.execute(stmt, [insert_params(job) for job in jobs]).scalars()

    def resolve_unique(self, conn: Connection, job: NewJob) -> str:
        """The id for a keyed job the INSERT may have skipped.

        The job's own id if that is stored (inserted just now where the INSERT
        returns no ids, or earlier: a job sent again, perhaps finished since);
        otherwise the id of the unfinished job that holds its unique key.
        """
        c = self.jobs.c
        if self.exists(conn, job.id):
            return job.id
        key = job.unique_key
        assert key is not None
        lookup = sa.select(c.id).where(self.unique_holder(key))
        for _ in range(10):
            existing = conn.execute(lookup).scalar()
            if existing is not None:
                return str(existing)
            # The holder finished between our insert and the lookup: insert again.
            conn.execute(self.insert_statement(), [insert_params(job)])
        raise StorageError(f"unique key {key!r} keeps changing hands")

    def exists(self, conn: Connection, job_id: str) -> bool:
        """Whether a job with this id is stored."""
        c = self.jobs.c
        return conn.execute(sa.select(c.id).where(c.id == job_id)).first() is not None

    # -- claims and leases -----------------------------------------------------------

    def ready(
        self,
        queues: Sequence[str],
        types: Collection[str] | None,
        limit: int,
        newest_first: bool = False,
    ) -> sa.Select[tuple[str]]:
        """The due jobs a claim takes, in claim order, locked and skipping locked rows."""
        c = self.jobs.c
        paused = sa.select(self.tables.paused.c.queue)
        conditions = [
            c.status == PENDING,
            c.queue.in_(list(queues)),
            c.queue.not_in(paused),
            c.run_at <= db_now(),
        ]
        if types is not None:
            conditions.append(c.type.in_(sorted(types)))
        # Newest first cannot walk the claim index in order (priority descends,
        # run_at ascends in it): the database sorts the due rows instead.
        order = (c.run_at.desc(), c.id.desc()) if newest_first else (c.run_at, c.id)
        return (
            sa.select(c.id)
            .where(*conditions)
            .order_by(c.priority.desc(), *order)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def claim(self, conn: Connection, ready: Ready, params: Mapping[str, Any]) -> Rows:
        """Claim the `ready(*ready)` jobs with `params`; their rows (all columns).

        The default is one UPDATE ... RETURNING, built once per kind of claim.
        """
        queues, types, limit, newest_first = ready
        key = (tuple(queues), None if types is None else tuple(sorted(types)), limit, newest_first)
        stmt = self._claims.get(key)
        if stmt is None:
            # The CTE is an optimisation fence: PostgreSQL evaluates the locking
            # SELECT once, so LIMIT really bounds how many rows the UPDATE takes.
            # SQLite ignores FOR UPDATE; BEGIN IMMEDIATE makes the statement exclusive.
            cte = self.ready(*ready).cte("ready")
            stmt = (
                sa.update(self.jobs)
                .where(self.jobs.c.id == cte.c.id)
                .values(**changes.claimed(self.jobs))
                .returning(*self.jobs.c)
            )
            if len(self._claims) >= 64:
                self._claims.clear()
            self._claims[key] = stmt
        return conn.execute(stmt, params).fetchall()

    # -- limited claims (see `limited`) -------------------------------------------------

    @property
    def lock_namespace(self) -> str:
        """What tells this table set's key locks apart from other table sets'."""
        return f"{self.schema or ''}.{self.jobs.name}"

    def claim_limited(
        self,
        conn: Connection,
        ready: Ready,
        limits: LimitMap,
        params: Mapping[str, Any],
        one_per_key: bool = False,
    ) -> Rows:
        """Claim under `limits` with `params`; the claimed rows (all columns)."""
        return limited.claim_limited(self, conn, ready, limits, params, one_per_key)

    def try_key_locks(
        self, conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Lock `(kind, key)` pairs without waiting, until the transaction ends; those locked.

        A key locked by another transaction is left out: its jobs wait for the next
        claim. The default locks nothing and returns every key: for a database
        whose write transactions run one at a time (SQLite's BEGIN IMMEDIATE).
        """
        return list(keys)

    def claim_ids(self, conn: Connection, ids: Sequence[str], params: Mapping[str, Any]) -> Rows:
        """Claim the pending jobs `ids` (rows this transaction has locked); their rows.

        The default is one UPDATE ... RETURNING.
        """
        c = self.jobs.c
        stmt = (
            sa.update(self.jobs)
            .where(c.id.in_(list(ids)), c.status == PENDING)
            .values(**changes.claimed(self.jobs))
            .returning(*self.jobs.c)
        )
        return conn.execute(stmt, params).fetchall()

    def claimed_jobs(
        self, conn: Connection, rows: Sequence[sa.Row[Any]]
    ) -> tuple[list[Job], int, list[workflows.Finished]]:
        """Jobs from claimed rows, how many rows were corrupt, and children to settle.

        A corrupt row (edited by hand) is failed with the reason, in the same
        transaction, instead of blocking the head of the queue forever. Its
        children are settled there too; where the claim was one autocommitted
        statement, they are returned, for a transaction of their own.
        """
        jobs: list[Job] = []
        unsettled: list[workflows.Finished] = []
        c = self.jobs.c
        for row in rows:
            job = self.reader.sound_job(row)
            if job is not None:
                jobs.append(job)
                continue
            problem = corruption(self.reader.fields(row))
            if problem is None:  # sound after all (a subclass of dict, say)
                jobs.append(self.reader.to_job(row))
                continue
            job_id = row._mapping[c.id]
            logger.error("job %s is corrupt and was failed: %s", job_id, problem)
            stmt = sa.update(self.jobs).where(c.id == job_id).values(**changes.corrupt(problem))
            finished = workflows.finish(self, conn, stmt)
            unsettled.extend(workflows.settle_finished(self, conn, finished, workflows.FAILED))
        return jobs, len(rows) - len(jobs), unsettled

    def autocommitted(self, conn: Connection) -> bool:
        """Whether `conn` commits each statement (a `single` route on PostgreSQL)."""
        return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"

    def update_leases(
        self, conn: Connection, leases: Leases, change: LeaseChange
    ) -> Iterable[tuple[str, Any]]:
        """UPDATE the running jobs among `leases` as `change` says; `(id, children)` of each."""
        c = self.jobs.c
        held_now = sa.and_(c.status == RUNNING, sa.tuple_(c.id, c.lease_token).in_(leases))
        stmt = sa.update(self.jobs).where(held_now).values(**change.values)
        rows = conn.execute(stmt.returning(c.id, c.children), change.params or {})
        return [(row[0], row[1]) for row in rows]

    # -- schema ---------------------------------------------------------------------

    def create_schema(self, conn: Connection) -> None:
        """Create missing tables, upgrade old ones, record the layout version."""
        with self.schema_lock(conn):
            self.before_create(conn)
            self.metadata.create_all(conn, checkfirst=True)
            self.after_create(conn)
            version = self.tables.version
            found = migrate.found_version(conn, version)
            if found is not None and found < 4:
                migrate.add_concurrency_key(conn, self.jobs, self.schema)
            if found is not None and found < 5:
                migrate.add_workflows(conn, self.jobs, self.schema)
                migrate.add_unique_finished_index(conn, self.jobs)
            migrate.check_version(conn, version, self.insert_ignoring(version))

    def schema_lock(self, conn: Connection) -> contextlib.AbstractContextManager[object]:
        """Held while the schema is made, so concurrent first starts do it once."""
        return contextlib.nullcontext()

    def before_create(self, conn: Connection) -> None:
        """Run before the tables are created (under the schema lock)."""

    def after_create(self, conn: Connection) -> None:
        """Run after the tables are created (under the schema lock): upgrades."""

    def schema_exists(self) -> bool:
        """Whether the jobs table exists; creates nothing."""
        name = self.jobs.name
        return self.run(
            "schema_exists",
            lambda conn: bool(sa.inspect(conn).has_table(name, schema=self.schema)),
            write=False,
        )

    # -- wake-ups -------------------------------------------------------------------

    @property
    def can_notify(self) -> bool:
        """Whether `watcher` can make a watcher here."""
        return False

    def announce(self, conn: Connection) -> None:
        """Tell other processes' watchers, at commit, that jobs became due without an insert.

        Children made pending by their last parent's outcome. The default does
        nothing: a watcher that sees every commit (SQLite's) needs nothing more,
        and where there is no watcher, workers poll.
        """

    def watcher(self) -> Watcher | None:
        """A new watcher of other processes' enqueues, or `None` (polling only)."""
        return None
