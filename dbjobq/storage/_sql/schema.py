"""Schema, column types and clock expressions for `SQLAlchemyStorage`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dbjobq.errors import ConfigurationError
from dbjobq.payload import dumps

SCHEMA_VERSION = 5
"""Version of the table layout below; stored in the `<prefix>schema` table.

1: jobs. 2: + workers (the registry) and periodic (the last tick of each schedule).
3: + paused_queues. 4: + jobs.concurrency_key with its two indexes, and rate_starts.
5: + the `jobs_unique_finished` index (`unique_for` lookups); the dependencies
and groups tables (workflows), jobs.group_id, jobs.correlation_id, jobs.children
and jobs.parents with their indexes, and `waiting` among the unfinished states of
the unique-key index.
`create_all` adds the new tables; `migrate.add_concurrency_key` the column and
indexes of layout 4, `migrate.add_unique_finished_index` and
`migrate.add_workflows` those of layout 5, `migrate.waiting_indexes` and
`migrate.waiting_on_mysql` the unique-key rule. Index changes that older
releases work with keep the version (see `migrate.finished_index` and
`migrate.rebuild_index_online`).
"""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def check_identifier(value: str, what: str) -> str:
    """Accept only plain SQL identifiers; they are quoted anyway, this keeps them sane."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-40 letters, digits or underscores, not starting with a "
            f"digit; got {value!r}"
        )
    return value


def _is_sqlite(dialect: Dialect) -> bool:
    return dialect.name == "sqlite"


def _is_mysql(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    PostgreSQL stores `timestamptz`. SQLite stores seconds since the epoch as a REAL,
    which compares correctly as a number and matches `db_now()` exactly (ISO strings
    of different precision would not). MySQL stores `DATETIME(6)` in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if _is_sqlite(dialect):
            return dialect.type_descriptor(sa.Double())
        if _is_mysql(dialect):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected an aware datetime, got {value!r}")
        if _is_sqlite(dialect):
            return value.timestamp()
        if _is_mysql(dialect):
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc)
        tz = value.tzinfo
        if tz is timezone.utc:
            return value  # type: ignore[no-any-return]
        if tz is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


class db_now(FunctionElement[datetime]):  # noqa: N801 - reads as a SQL function
    """The database's current time: every lease and schedule is measured on it."""

    type = UTCDateTime()
    inherit_cache = True


def seconds(name: str, value: float) -> sa.BindParameter[float]:
    """A number of seconds, bound as a float (for `db_now_plus`)."""
    return sa.bindparam(name, float(value), type_=sa.Double())


class db_now_plus(FunctionElement[datetime]):  # noqa: N801 - reads as a SQL function
    """`db_now()` plus a number of seconds (a bound parameter or column)."""

    type = UTCDateTime()
    inherit_cache = True


SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW


@compiles(db_now, "mysql")
@compiles(db_now, "mariadb")
def _now_mysql(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(db_now_plus, "postgresql")
def _now_plus_pg(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(now() + make_interval(secs => CAST({seconds} AS double precision)))"


@compiles(db_now_plus, "sqlite")
def _now_plus_sqlite(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({SQLITE_NOW} + ({compiler.process(element.clauses, **kw)}))"


@compiles(db_now_plus, "mysql")
@compiles(db_now_plus, "mariadb")
def _now_plus_mysql(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND(({seconds}) * 1000000), UTC_TIMESTAMP(6))"


class Corrupt:
    """Stands for a stored JSON value that does not parse (a row edited by hand)."""

    def __init__(self, raw: str, error: Exception) -> None:
        self.raw = raw
        self.error = error

    def __repr__(self) -> str:
        return f"<corrupt JSON {self.raw[:40]!r}: {self.error}>"


def as_json_text(value: Any) -> str | None:
    """A JSON column's value as stored.

    Text as it is (dbjobq serialised it), any other value (a row written by hand)
    serialised.
    """
    if value is None or type(value) is str:
        return value
    return dumps(value)


class JSONText(sa.types.TypeDecorator[Any]):
    """JSON kept as the exact text dbjobq wrote, in a text column.

    Used where the database does not check JSON itself (SQLite's TEXT) or rewrites it
    (MySQL's JSON type). Text that does not parse comes back as `Corrupt` instead of
    breaking the whole query.
    """

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if _is_mysql(dialect):
            return dialect.type_descriptor(mysql.LONGTEXT())
        return dialect.type_descriptor(sa.Text())

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], str | None]:
        return as_json_text

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError as error:
            return Corrupt(value, error)


class PostgresJSONText(sa.types.TypeDecorator[Any]):
    """PostgreSQL's `json` column, given JSON text.

    The database parses the text it is sent, the driver what it reads; nothing
    serialises the value a second time.
    """

    impl = sa.JSON(none_as_null=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], str | None]:
        return as_json_text


def _json() -> sa.types.TypeEngine[Any]:
    # PostgreSQL's `json`, not `jsonb`: jsonb rewrites numbers (1e300 comes back as a
    # 301-digit integer), so payloads would not round-trip exactly. PostgreSQL rejects
    # invalid JSON itself; elsewhere JSONText keeps the exact text.
    return JSONText().with_variant(PostgresJSONText(), "postgresql")


# Literal (not bound) state names: SQLite and PostgreSQL only use a partial index when
# the query's predicate visibly implies the index's, which a bound parameter never does.
WAITING: sa.ColumnElement[str] = sa.literal_column("'waiting'")
PENDING: sa.ColumnElement[str] = sa.literal_column("'pending'")
RUNNING: sa.ColumnElement[str] = sa.literal_column("'running'")
UNFINISHED = (WAITING, PENDING, RUNNING)
"""The states of a job that holds its unique key (and that `cancel` takes)."""
RUNNABLE = (PENDING, RUNNING)
"""The states of a job that holds back later jobs of an ordered key: a waiting
job takes its turn once it is pending."""
UNFINISHED_SQL = "status IN ('waiting', 'pending', 'running')"
"""`UNFINISHED` as SQL text, for MySQL's computed `active_unique_key`."""
TO_SETTLE: sa.ColumnElement[int] = sa.literal_column("1")
"""`jobs.children` of a job whose children are settled when it finishes (or are
due to be: it finished, and a second step or `settle_waiting` has not yet)."""
SETTLED: sa.ColumnElement[int] = sa.literal_column("2")
"""`jobs.children` of a finished job whose children were settled with its outcome."""
CORRELATION_LENGTH = 255
"""`jobs.correlation_id` holds this many characters of `meta["correlation_id"]`."""


def _long_text() -> sa.types.TypeEngine[str]:
    # MySQL's TEXT holds 64 KiB; a long traceback must not fail the write.
    return sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


class Tables(NamedTuple):
    """The tables of one `SQLAlchemyStorage`."""

    jobs: sa.Table
    version: sa.Table
    workers: sa.Table
    periodic: sa.Table
    paused: sa.Table
    rate_starts: sa.Table
    dependencies: sa.Table
    groups: sa.Table


KEY_INDEXES = ("jobs_running_key", "jobs_key_order")
"""The jobs indexes of layout 4 (after the prefix), which an upgrade creates."""
WORKFLOW_COLUMNS = ("group_id", "correlation_id", "children", "parents")
"""The jobs columns of layout 5, which an upgrade adds."""
WORKFLOW_INDEXES = ("jobs_group", "jobs_correlation", "jobs_unsettled")
"""The jobs indexes of layout 5 (after the prefix), which an upgrade creates."""
WAITING_INDEXES = ("jobs_unique",)
"""The jobs indexes whose predicate counts `waiting` as unfinished from layout 5."""

UNIQUE_FINISHED_INDEX = "jobs_unique_finished"
"""The jobs index of layout 5 (after the prefix), which an upgrade creates."""


def build_tables(metadata: sa.MetaData, prefix: str, *, partial_indexes: bool = True) -> Tables:
    """Define the tables and their indexes.

    Without `partial_indexes` (MySQL), a stored column that holds the unique key only
    while the job is unfinished stands in for the partial unique index.
    """
    jobs = sa.Table(f"{prefix}jobs", metadata, *_job_columns(partial_indexes))
    _index_jobs(jobs, prefix, partial_indexes)
    return _other_tables(metadata, prefix, jobs)


def _job_columns(partial_indexes: bool) -> list[sa.Column[Any]]:
    on_mysql = not partial_indexes
    columns: list[sa.Column[Any]] = [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("run_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("timeout", sa.Double),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("result", _json()),
        sa.Column("meta", _json(), nullable=False),
        sa.Column("last_error", _long_text()),
        sa.Column("unique_key", sa.String(255)),
        sa.Column("progress", sa.Double),
        sa.Column("progress_message", _long_text()),
        sa.Column("worker_id", sa.String(255)),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("concurrency_key", sa.String(255)),
        sa.Column("group_id", sa.String(255)),
        # Not Job fields: a copy of meta["correlation_id"] (for list_jobs), and the
        # workflow links that purge and settling look at (see `_index_workflows`).
        sa.Column("correlation_id", sa.String(CORRELATION_LENGTH)),
        sa.Column("children", sa.SmallInteger),
        sa.Column("parents", sa.Integer),
    ]
    if on_mysql:
        # MySQL has no partial indexes. A stored column that holds the unique key only
        # while the job is unfinished, under a unique index (which allows many NULLs),
        # gives the same "unique among unfinished jobs" rule.
        columns.append(
            sa.Column(
                "active_unique_key",
                sa.String(255),
                sa.Computed(
                    f"CASE WHEN {UNFINISHED_SQL} THEN unique_key END",
                    persisted=True,
                ),
            )
        )
    return columns


def _index_jobs(jobs: sa.Table, prefix: str, partial_indexes: bool) -> None:
    on_mysql = not partial_indexes
    c = jobs.c
    pending = c.status == PENDING
    running = c.status == RUNNING
    unfinished = sa.and_(c.unique_key.is_not(None), c.status.in_(UNFINISHED))
    if on_mysql:
        sa.Index(f"{prefix}jobs_claim", c.status, c.queue, c.priority.desc(), c.run_at, c.id)
        sa.Index(f"{prefix}jobs_lease", c.status, c.lease_expires_at)
        sa.Index(f"{prefix}jobs_unique", c.active_unique_key, unique=True)
    else:
        # The claim query walks this index in order and stops after LIMIT rows; being
        # partial, it holds only the ready set however many finished jobs pile up.
        sa.Index(
            f"{prefix}jobs_claim",
            c.queue,
            c.priority.desc(),
            c.run_at,
            c.id,
            postgresql_where=pending,
            sqlite_where=pending,
        )
        sa.Index(
            f"{prefix}jobs_lease",
            c.lease_expires_at,
            postgresql_where=running,
            sqlite_where=running,
        )
        sa.Index(
            f"{prefix}jobs_unique",
            c.unique_key,
            unique=True,
            postgresql_where=unfinished,
            sqlite_where=unfinished,
        )
    _index_keys(jobs, prefix, partial_indexes)
    _index_unique_finished(jobs, prefix, partial_indexes)
    _index_workflows(jobs, prefix, partial_indexes)
    sa.Index(f"{prefix}jobs_status", c.status, c.queue, c.id)
    # For purging and "finished within": only finished jobs have a finished_at, so
    # (where partial indexes exist) enqueues and claims leave this index alone.
    # Both planners see that `finished_at < :cutoff` implies the predicate.
    finished = c.finished_at.is_not(None)
    sa.Index(
        f"{prefix}jobs_finished",
        c.status,
        c.finished_at,
        postgresql_where=finished,
        sqlite_where=finished,
    )


def _index_keys(jobs: sa.Table, prefix: str, partial_indexes: bool) -> None:
    """The indexes of limited claims: jobs without a concurrency key stay out of them.

    `jobs_running_key` counts the running jobs of a key (and their leases);
    `jobs_key_order` finds an older unfinished job of a key (`ordered`).
    """
    c = jobs.c
    running_key, key_order = (f"{prefix}{name}" for name in KEY_INDEXES)
    if not partial_indexes:
        sa.Index(running_key, c.status, c.concurrency_key, c.lease_expires_at)
        sa.Index(key_order, c.concurrency_key, c.status, c.created_at, c.id)
        return
    keyed = c.concurrency_key.is_not(None)
    running = sa.and_(keyed, c.status == RUNNING)
    unfinished = sa.and_(keyed, c.status.in_(RUNNABLE))
    sa.Index(
        running_key,
        c.concurrency_key,
        c.lease_expires_at,
        postgresql_where=running,
        sqlite_where=running,
    )
    sa.Index(
        key_order,
        c.concurrency_key,
        c.created_at,
        c.id,
        postgresql_where=unfinished,
        sqlite_where=unfinished,
    )


def _index_workflows(jobs: sa.Table, prefix: str, partial_indexes: bool) -> None:
    """The indexes of layout 5; jobs outside workflows stay out of them where they can.

    `jobs_group` counts a group's members, `jobs_correlation` lists a correlation
    id's jobs, `jobs_unsettled` finds finished parents whose children were not
    settled yet (`settle_waiting`).
    """
    c = jobs.c
    group, correlation, unsettled = (f"{prefix}{name}" for name in WORKFLOW_INDEXES)
    if not partial_indexes:
        sa.Index(group, c.group_id, c.status)
        sa.Index(correlation, c.correlation_id, c.id)
        sa.Index(unsettled, c.children, c.finished_at)
        return
    grouped = c.group_id.is_not(None)
    correlated = c.correlation_id.is_not(None)
    due = sa.and_(c.children == TO_SETTLE, c.finished_at.is_not(None))
    sa.Index(group, c.group_id, c.status, postgresql_where=grouped, sqlite_where=grouped)
    sa.Index(
        correlation,
        c.correlation_id,
        c.id,
        postgresql_where=correlated,
        sqlite_where=correlated,
    )
    sa.Index(unsettled, c.finished_at, postgresql_where=due, sqlite_where=due)


def _workflow_tables(metadata: sa.MetaData, prefix: str) -> tuple[sa.Table, sa.Table]:
    """The dependency edges and the groups (layout 5).

    An edge says that `child_id` waits for `parent_id`. It carries what settling
    the child needs without reading the parent: the parent's outcome once it is
    known (`parent_status`, `NULL` before), and the child's `on_parent_failure`.
    Its primary key finds a child's parents; `dependencies_parent` a parent's
    children; `dependencies_open` answers "has this child a parent still to
    finish, or one that failed?" with one index probe, however many parents it
    has (the callback of a group of 10,000).
    """
    dependencies = sa.Table(
        f"{prefix}dependencies",
        metadata,
        sa.Column("child_id", sa.String(36), primary_key=True),
        sa.Column("parent_id", sa.String(36), primary_key=True),
        sa.Column("parent_status", sa.String(16)),
        sa.Column("on_failure", sa.String(8), nullable=False),
    )
    d = dependencies.c
    sa.Index(f"{prefix}dependencies_parent", d.parent_id, d.child_id)
    sa.Index(f"{prefix}dependencies_open", d.child_id, d.parent_status)
    groups = sa.Table(
        f"{prefix}groups",
        metadata,
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("callback_id", sa.String(36)),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    sa.Index(f"{prefix}groups_callback", groups.c.callback_id)
    return dependencies, groups


def _index_unique_finished(jobs: sa.Table, prefix: str, partial_indexes: bool) -> None:
    """The index of `unique_for`: the latest finished job of a unique key.

    Where indexes can be partial, it holds only finished jobs with a key, so
    enqueues and claims leave it alone; both planners see that `unique_key = :k
    AND finished_at > :since` implies its predicate.
    """
    c = jobs.c
    name = f"{prefix}{UNIQUE_FINISHED_INDEX}"
    if not partial_indexes:
        sa.Index(name, c.unique_key, c.finished_at)
        return
    finished = sa.and_(c.unique_key.is_not(None), c.finished_at.is_not(None))
    sa.Index(
        name,
        c.unique_key,
        c.finished_at,
        postgresql_where=finished,
        sqlite_where=finished,
    )


def _other_tables(metadata: sa.MetaData, prefix: str, jobs: sa.Table) -> Tables:
    version = sa.Table(
        f"{prefix}schema",
        metadata,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    )
    workers = sa.Table(
        f"{prefix}workers",
        metadata,
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", _json(), nullable=False),
        sa.Column("types", _json(), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("current_job", sa.String(36)),
        sa.Column("jobs_processed", sa.BigInteger, nullable=False),
    )
    sa.Index(f"{prefix}workers_seen", workers.c.last_seen)
    periodic = sa.Table(
        f"{prefix}periodic",
        metadata,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("last_tick", UTCDateTime, nullable=False),
    )
    paused = sa.Table(
        f"{prefix}paused_queues",
        metadata,
        sa.Column("queue", sa.String(200), primary_key=True),
        sa.Column("paused_at", UTCDateTime, nullable=False),
    )
    # A sliding log of starts per rate key: "starts of key K since T" is a range of
    # the primary key. The job id tells apart starts at one instant.
    rate_starts = sa.Table(
        f"{prefix}rate_starts",
        metadata,
        sa.Column("rate_key", sa.String(255), primary_key=True),
        sa.Column("started_at", UTCDateTime, primary_key=True),
        sa.Column("job_id", sa.String(36), primary_key=True),
    )
    dependencies, groups = _workflow_tables(metadata, prefix)
    return Tables(jobs, version, workers, periodic, paused, rate_starts, dependencies, groups)
