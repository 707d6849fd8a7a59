"""SQLAlchemyStorage: jobs in a SQLite, PostgreSQL or MySQL/MariaDB table."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import random
import sqlite3
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy import event, exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from dbjobq._urls import mask_url
from dbjobq.errors import ConfigurationError, JobNotFound, StorageError
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup, _job_builder
from dbjobq.payload import dumps
from dbjobq.registry import WorkerInfo
from dbjobq.storage._notify import PostgresListener, SQLiteWatcher, Watcher
from dbjobq.storage._sql import (
    _SQLITE_NOW,
    MYSQL_CHARSET,
    PENDING,
    RUNNING,
    SCHEMA_VERSION,
    UNFINISHED,
    Corrupt,
    Dumped,
    build_tables,
    check_identifier,
    db_now,
    db_now_plus,
    declare_mysql_collation,
    mysql_collation,
)
from dbjobq.storage.base import Storage

__all__ = ["SQLAlchemyStorage"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_DRIVERS = {
    # backend: (default driver, extra that installs it, driver's module name)
    "postgresql": ("psycopg", "postgres", "psycopg"),
    "sqlite": ("pysqlite", "", "sqlite3"),
    "mysql": ("pymysql", "mysql", "pymysql"),
    "mariadb": ("pymysql", "mysql", "pymysql"),
}
_MYSQL = ("mysql", "mariadb")
_STATUS = {s.value: s for s in JobStatus}  # stored text -> JobStatus
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}
_RETRIES = 5  # transient errors retried inside one call before StorageError
_SQLITE_WATCH_INTERVAL = 0.002  # seconds between reads of PRAGMA data_version
_COPY_FROM = 64  # jobs per enqueue from which PostgreSQL (psycopg) inserts through COPY
# Stored in the NOT NULL max_retries column for Job.max_retries=None ("the handler's"):
# no schema change, and it sorts below every real value in rescue_expired's test.
_HANDLERS = -1

# Bulk enqueue on PostgreSQL: COPY into this session's staging table, then one
# INSERT ... SELECT that computes the times and skips clashing ids like every insert.
_STAGE_COLUMNS = (
    ("id", "text"),
    ("type", "text"),
    ("queue", "text"),
    ("payload", "text"),
    ("priority", "integer"),
    ("max_retries", "integer"),
    ("run_at", "timestamptz"),
    ("delay", "double precision"),
    ("meta", "text"),
    ("timeout", "double precision"),
)
_STAGE = sa.table(
    "dbjobq_stage", *(sa.column(name) for name, _ in _STAGE_COLUMNS), schema="pg_temp"
)
_CREATE_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS dbjobq_stage ("
    + ", ".join(f"{name} {kind}" for name, kind in _STAGE_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)


def _seconds(name: str, value: float) -> sa.BindParameter[float]:
    return sa.bindparam(name, float(value), type_=sa.Double())


def _answers(ids: Sequence[str], firsts: Sequence[int], done: Collection[str]) -> list[bool]:
    """One flag per lease: written, for the first occurrences among `firsts` only."""
    flags = [False] * len(ids)
    for i in firsts:
        flags[i] = ids[i] in done
    return flags


def _is_transient(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate and (sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")):
        return True
    text = str(orig).lower()
    if "database is locked" in text or "database is busy" in text:
        return True
    # psycopg reports a refused or dropped connection as OperationalError, no sqlstate.
    return isinstance(error, exc.OperationalError) and not isinstance(
        orig, sqlite3.OperationalError
    )


_MAX_BUSY_TIMEOUT = 2_147_483.0  # seconds: SQLite takes the wait in int milliseconds


def _check_busy_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"busy_timeout must be a number of seconds, got {type(value).__name__}"
        )
    if not 0 <= value <= _MAX_BUSY_TIMEOUT:  # also refuses NaN
        raise ConfigurationError(
            f"busy_timeout must be between 0 and {_MAX_BUSY_TIMEOUT:g} seconds, got {value!r}"
        )
    return float(value)


def _check_engine_options(value: Any, given_an_engine: bool) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigurationError(
            "engine_options must be a mapping of create_engine keyword arguments, got "
            f"{type(value).__name__}"
        )
    if given_an_engine and value:
        raise ConfigurationError(
            "engine_options cannot apply to an Engine that is already made; pass them "
            "to sqlalchemy.create_engine, or give SQLAlchemyStorage the URL"
        )
    connect_args = value.get("connect_args", {})
    if not isinstance(connect_args, Mapping):
        raise ConfigurationError(
            f"engine_options['connect_args'] must be a mapping, got {type(connect_args).__name__}"
        )
    return value


def _first_leases(leases: Sequence[tuple[str, str]]) -> Sequence[int] | None:
    """Positions (ascending) of the first occurrence of each `(job_id, token)`.

    Later occurrences are answered `False`. `None` if a job comes with two different
    tokens: at most one of them holds the lease, and which one only the database
    knows, so such a batch is taken one lease at a time, in order.
    """
    if len({job_id for job_id, _ in leases}) == len(leases):
        return range(len(leases))  # the usual batch: no job twice
    tokens: dict[str, str] = {}
    firsts: list[int] = []
    for i, (job_id, token) in enumerate(leases):
        seen = tokens.get(job_id)
        if seen is None:
            tokens[job_id] = token
            firsts.append(i)
        elif seen != token:
            return None
    return firsts


def _findable(text: object) -> bool:
    """Whether `text` could be stored at all: an id or name that is not cannot exist.

    Such values would otherwise fail in the driver (a lone surrogate cannot be
    encoded, PostgreSQL refuses NUL characters, a number is not text).
    """
    if type(text) is not str:
        return isinstance(text, str) and _findable(str(text))
    if text.isascii():
        return "\x00" not in text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


_engine_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_engine_locks_guard = threading.Lock()


def _engine_lock(engine: Engine) -> threading.RLock:
    """One lock per engine, shared by every storage object that uses the engine."""
    with _engine_locks_guard:
        return _engine_locks.setdefault(engine, threading.RLock())


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # a no-op ("memory") in memory
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    dbapi_connection: Any = conn.connection.dbapi_connection
    if dbapi_connection.in_transaction:
        return  # someone else's "begin" hook got there first
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None  # pooled before dbjobq saw the engine
    write = conn.get_execution_options().get("dbjobq_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _install_sqlite_hooks(engine: Engine) -> None:
    """Take transaction control away from the sqlite3 module.

    This is SQLAlchemy's documented recipe: with the module's own transaction
    handling off, dbjobq starts writes with BEGIN IMMEDIATE. A deferred BEGIN that
    later upgrades to a write lock fails at once with SQLITE_BUSY instead of waiting
    out the busy timeout. Installed once per engine, however many storages share it;
    the engine's other users get correct BEGINs too.
    """
    if not event.contains(engine, "begin", _sqlite_begin):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)


class SQLAlchemyStorage(Storage):
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

    Idle workers learn of jobs enqueued by other processes at once (`listen=True`):
    on PostgreSQL an insert trigger NOTIFYs a channel that a background connection
    LISTENs to; on SQLite a background thread reads `PRAGMA data_version` every
    couple of milliseconds. Polling stays the safety net.

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
        busy_timeout = _check_busy_timeout(busy_timeout)
        engine_options = _check_engine_options(engine_options, isinstance(url, Engine))
        if not isinstance(listen, bool):
            raise ConfigurationError(f"listen must be True or False, got {listen!r}")
        self._owns_engine = not isinstance(url, Engine)
        self._engine = (
            url
            if isinstance(url, Engine)
            else self._create_engine(url, busy_timeout, dict(engine_options))
        )
        self._backend = self._engine.dialect.name
        if self._backend not in _DRIVERS:
            raise ConfigurationError(
                "SQLAlchemyStorage supports SQLite, PostgreSQL and MySQL/MariaDB, "
                f"not {self._backend!r}"
            )
        if self._backend == "sqlite" and self.schema is not None:
            raise ConfigurationError("schema is not supported on SQLite; use table_prefix")
        self._is_sqlite = self._backend == "sqlite"
        self._is_mysql = self._backend in _MYSQL
        self.claims_ahead = not self._is_sqlite  # a claim waits on a server
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._claims: dict[tuple[Any, ...], Any] = {}  # built claim statements
        self._job_columns: list[tuple[int, str]] | None = None
        self._quick: Any = None  # how _sound_job reads a row, once known
        self.listen = listen
        self._watcher: Watcher | None = None
        self._watcher_lock = threading.Lock()
        self._insert_stmt: Any = None
        self._copy_stmt: Any = None
        self._one_insert: tuple[str, Callable[[NewJob], list[Any]]] | None = None
        self._lease_updates: dict[tuple[str, bool], Any] = {}  # UPDATEs of many leases
        self._copies = self._backend == "postgresql" and self._engine.dialect.driver == "psycopg"
        memory = self._is_sqlite and self._engine.url.database in (None, "", ":memory:")
        self._serial: threading.RLock | None = None
        if memory:
            if not isinstance(self._engine.pool, StaticPool):
                raise ConfigurationError(
                    "an in-memory SQLite engine must use poolclass=StaticPool (and "
                    "check_same_thread=False), or each thread sees its own empty "
                    'database; pass the URL "sqlite://" instead to have this done'
                )
            # One shared connection can only run one transaction at a time.
            self._serial = _engine_lock(self._engine)
        if self._is_sqlite:
            _install_sqlite_hooks(self._engine)
        metadata = sa.MetaData(schema=self.schema)
        tables = build_tables(metadata, self.table_prefix, self._backend)
        self._jobs, self._version = tables.jobs, tables.version
        self._workers, self._periodic = tables.workers, tables.periodic
        self._metadata = metadata
        self._initialized = False
        self._init_lock = threading.Lock()

    # -- set-up -------------------------------------------------------------------

    @staticmethod
    def _create_engine(url: str | URL, busy_timeout: float, options: dict[str, Any]) -> Engine:
        try:
            parsed = make_url(url)
        except (exc.ArgumentError, ValueError):
            # Not chained: the parser's message may quote the password.
            raise ConfigurationError(
                f"not a valid database URL: {mask_url(url)!r} (percent-encode any @, : "
                "or / in the user name or password, e.g. @ as %40)"
            ) from None
        if parsed.host is not None and "@" in parsed.host:
            # SQLAlchemy ends the password at its first "@" and takes the rest for the
            # host, which would then show in the driver's connection errors.
            raise ConfigurationError(
                f"the password in {mask_url(url)!r} holds an unencoded @: percent-encode it as %40"
            )
        backend = parsed.get_backend_name()
        if backend not in _DRIVERS:
            raise ConfigurationError(
                f"unsupported database {backend!r} in {mask_url(parsed)!r}; "
                "use sqlite:///path.db, postgresql://user@host/db or mysql://user@host/db"
            )
        default_driver, extra, module = _DRIVERS[backend]
        if parsed.drivername == backend:
            parsed = parsed.set(drivername=f"{backend}+{default_driver}")
        connect_args = dict(options.pop("connect_args", {}))
        if backend == "sqlite":
            connect_args.setdefault("timeout", busy_timeout)
            if parsed.database in (None, "", ":memory:"):
                connect_args.setdefault("check_same_thread", False)
                options.setdefault("poolclass", StaticPool)
        else:
            # No pool_pre_ping: a ping per checkout doubles the round trips of every
            # operation. A connection found dead is invalidated and the operation
            # retried (see _run), which covers the same ground.
            if parsed.get_driver_name() in ("psycopg", "pymysql"):
                connect_args.setdefault("connect_timeout", 10)
            if parsed.get_driver_name() == "psycopg" and "options" not in parsed.query:
                # Timestamps then arrive in UTC already (psycopg's own timezone.utc),
                # which saves converting six per claimed job. Values are unchanged:
                # timestamptz is an instant whatever the session's zone.
                connect_args.setdefault("options", "-c TimeZone=UTC")
        if backend in _MYSQL:
            # Each statement sees the latest committed rows (REPEATABLE READ would pin
            # a snapshot); servers drop idle connections after wait_timeout.
            options.setdefault("isolation_level", "READ COMMITTED")
            options.setdefault("pool_recycle", 3600)
            if "charset" not in parsed.query:
                parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        try:
            return sa.create_engine(parsed, connect_args=connect_args, **options)
        except exc.NoSuchModuleError as error:
            raise ConfigurationError(
                f"no SQLAlchemy driver {parsed.drivername!r}: {error}"
            ) from error
        except ImportError as error:
            hint = (
                f'Install the "{extra}" extra (pip install -e ".[{extra}]" in a dbjobq checkout)'
                if extra
                else f"install {module}"
            )
            raise ConfigurationError(
                f"the database driver for {parsed.drivername!r} is not installed "
                f"({error.name or module} not found). {hint}"
            ) from error
        except (exc.ArgumentError, TypeError) as error:
            raise ConfigurationError(f"bad engine options: {error}") from error

    def __repr__(self) -> str:
        url = mask_url(self._engine.url)
        return f"SQLAlchemyStorage({url!r}, table_prefix={self.table_prefix!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine in use."""
        return self._engine

    def initialize(self) -> None:
        """Create the tables and indexes if missing (idempotent, safe across processes).

        Raises:
            ConfigurationError: If the tables were made by a newer, incompatible
                version of dbjobq.
            StorageError: If the database cannot be reached.
        """
        with self._init_lock:
            if not self._initialized:
                self._run("initialize", self._create_schema, write=True)
                self._initialized = True

    def schema_exists(self) -> bool:
        """Whether the jobs table exists; creates nothing, not even a SQLite file.

        A SQLite file is opened read-only, and only if it exists.

        Raises:
            StorageError: If the database cannot be reached (or a SQLite file is
                not a database).
        """
        import os.path
        import urllib.parse

        name, url = self._jobs.name, self._engine.url
        # A plain path (not a file: URI), which connecting would create if missing:
        plain = url.database not in (None, "", ":memory:") and "uri" not in url.query
        if self._is_sqlite and plain:
            path = os.path.abspath(str(url.database))
            if not os.path.isfile(path):
                return False
            query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            try:
                ro = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
                with contextlib.closing(ro):
                    return ro.execute(query, (name,)).fetchone() is not None
            except sqlite3.Error as error:
                raise StorageError(f"schema_exists failed: {error}") from error
        return self._run(
            "schema_exists",
            lambda conn: bool(sa.inspect(conn).has_table(name, schema=self.schema)),
            write=False,
        )

    def _create_schema(self, conn: Connection) -> None:
        lock_name = f"dbjobq:{self.schema}:{self.table_prefix}"
        if self._backend == "postgresql":
            # Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's
            # catalogs; one advisory lock per table set serialises first start-ups.
            key = zlib.crc32(lock_name.encode())
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            if self.schema is not None:
                conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
        elif self._is_mysql:
            # DDL commits implicitly in MySQL, so a session lock does the serialising.
            got = conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": lock_name}).scalar()
            if got != 1:
                raise StorageError("timed out waiting for another process creating the tables")
            try:
                collation = mysql_collation(
                    bool(getattr(conn.dialect, "is_mariadb", False)),
                    conn.dialect.server_version_info,
                )
                declare_mysql_collation(self._metadata.sorted_tables, collation)
                self._metadata.create_all(conn, checkfirst=True)
                self._upgrade_collation(conn, collation)
                self._check_version(conn)
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": lock_name})
            return
        self._metadata.create_all(conn, checkfirst=True)
        if self._backend == "postgresql":
            self._create_notify_trigger(conn)
        self._upgrade_finished_index(conn)
        self._check_version(conn)

    def _check_version(self, conn: Connection) -> None:
        found = conn.execute(sa.select(sa.func.max(self._version.c.version))).scalar()
        if found is None:
            # Another process may insert the same row first (on MySQL the lock above is
            # released before this transaction commits): a clash is no error.
            conn.execute(self._upsert_ignoring(self._version).values(version=SCHEMA_VERSION))
        elif found < SCHEMA_VERSION:
            # Upgrades so far only add tables, which create_all has just done.
            conn.execute(sa.update(self._version).values(version=SCHEMA_VERSION))
        elif found > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the job tables have schema version {found}, newer than this dbjobq "
                f"understands ({SCHEMA_VERSION}); upgrade dbjobq"
            )

    _ALTER_LOCK_WAIT = 10  # seconds a collation upgrade waits for its table lock

    def _upgrade_collation(self, conn: Connection, collation: str) -> None:
        """Convert tables made before dbjobq declared its MySQL collation.

        Such tables took the database's defaults: often a case-insensitive or padding
        collation (`user-A` = `user-a`, `k` = `k `), or latin1, which cannot store
        most of Unicode. `CONVERT TO` rewrites a table once, under a lock that blocks
        writes meanwhile. It is safe for the rows: every charset converts to utf8mb4
        without loss, and a binary collation tells apart more strings than any
        other, so no unique index can clash. Older dbjobq releases work on the
        converted tables, so this is no new layout version. It runs under the
        schema lock, so concurrent first starts convert once.

        Raises:
            ConfigurationError: If a table cannot be converted (no lock within 10 s,
                no ALTER privilege, an old row format), naming the statement to run.
        """
        names = [table.name for table in self._metadata.sorted_tables]
        where = "TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME IN :names"
        query = sa.text(
            f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE {where} "
            "AND TABLE_COLLATION <> :c "
            f"UNION SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE {where} "
            "AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME <> :c"
        ).bindparams(sa.bindparam("names", expanding=True))
        params = {"s": self.schema, "names": names, "c": collation}
        stale = {str(name).lower() for name in conn.execute(query, params).scalars()}
        tables = [t for t in self._metadata.sorted_tables if t.name.lower() in stale]
        if not tables:
            return
        preparer = conn.dialect.identifier_preparer
        wait = conn.execute(sa.text("SELECT @@SESSION.lock_wait_timeout")).scalar()
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {self._ALTER_LOCK_WAIT}")
        try:
            for table in tables:
                sql = (
                    f"ALTER TABLE {preparer.format_table(table)} CONVERT TO CHARACTER SET "
                    f"{MYSQL_CHARSET} COLLATE {collation}"
                )
                logger.warning(
                    "converting table %s to %s/%s, so that text compares byte for byte "
                    "(once; writes to it wait meanwhile)",
                    table.name,
                    MYSQL_CHARSET,
                    collation,
                )
                try:
                    conn.exec_driver_sql(sql)
                except exc.DBAPIError as error:
                    raise ConfigurationError(
                        f"table {table.name} has a collation that compares text loosely "
                        f"(case, accents or trailing spaces ignored) and could not be "
                        f"converted: {error.orig}. Run this once, then start again: {sql}"
                    ) from error
        finally:
            conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(wait or 31536000)}")

    _INDEX_LOCK_WAIT = 5.0  # seconds an index upgrade waits for its lock on PostgreSQL

    def _upgrade_finished_index(self, conn: Connection) -> None:
        """Make an older release's full `jobs_finished` index partial (finished jobs only).

        Releases before it work as well with either form, so this is no new layout
        version: old and new processes can share the tables during a rolling upgrade.
        It runs under the schema lock, so concurrent first starts rebuild it once. On
        PostgreSQL the new index is built first, under another name, so that reads
        go on during the build (writes wait for it); if the table cannot be locked
        within 5 s, the rebuild is left for the next start.
        """
        name = f"{self.table_prefix}jobs_finished"
        if self._backend == "postgresql":
            query = (
                "SELECT indexdef FROM pg_indexes "
                "WHERE schemaname = coalesce(:s, current_schema()) AND indexname = :n"
            )
            found = conn.execute(sa.text(query), {"s": self.schema, "n": name}).scalar()
        else:
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
            found = conn.execute(sa.text(query), {"n": name}).scalar()
        if found is None or " WHERE " in str(found).upper():
            return
        (index,) = (i for i in self._jobs.indexes if i.name == name)
        if self._backend != "postgresql":
            index.drop(conn)
            index.create(conn)
            return
        preparer = conn.dialect.identifier_preparer
        quote, table = preparer.quote, preparer.format_table(self._jobs)
        in_schema = f"{quote(self.schema)}." if self.schema else ""
        new = f"{name}_partial"
        try:
            with conn.begin_nested():
                wait = int(self._INDEX_LOCK_WAIT * 1000)
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait}")
                conn.exec_driver_sql(
                    f"CREATE INDEX {quote(new)} ON {table} (status, finished_at) "
                    "WHERE finished_at IS NOT NULL"
                )
                conn.exec_driver_sql(f"DROP INDEX {in_schema}{quote(name)}")
                conn.exec_driver_sql(f"ALTER INDEX {in_schema}{quote(new)} RENAME TO {quote(name)}")
        except exc.DBAPIError as error:
            logger.warning(
                "could not rebuild index %s to hold finished jobs only (%s); the next "
                "start tries again",
                name,
                error.orig,
            )

    def close(self) -> None:
        """Close all pooled connections (only those of an engine this object created).

        Also stops the thread that watches for other processes' enqueues.
        """
        with self._watcher_lock:
            if self._watcher is not None:
                # On SQLite the watcher's connection shares the file with the pool's:
                # it is closed before the pool's are, not while they are.
                self._watcher.close(wait=2.0 if self._is_sqlite else 0.0)
                self._watcher = None
        if self._owns_engine:
            self._engine.dispose()

    # -- wake-ups from other processes ------------------------------------------------

    @property
    def _channel(self) -> str:
        """The PostgreSQL NOTIFY channel of this table set."""
        name = f"{self.schema or ''}.{self.table_prefix}jobs"
        return f"dbjobq_{zlib.crc32(name.encode()):08x}"

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when another process may have enqueued jobs.

        Returns `None` (polling only) on MySQL/MariaDB, for in-memory SQLite, with
        `listen=False`, and on PostgreSQL through a driver other than psycopg 3.
        """
        if not self.listen or self._is_mysql:
            return None
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = self._new_watcher()
            if self._watcher is None:
                return None
            return self._watcher.subscribe(callback)

    def _new_watcher(self) -> Watcher | None:
        if self._is_sqlite:
            path = self._engine.url.database
            if path in (None, "", ":memory:") or str(path).startswith("file:"):
                return None
            jobs = self._jobs.name
            due = (
                f"SELECT 1 FROM \"{jobs}\" WHERE status = 'pending' AND run_at <= "
                f"{_SQLITE_NOW} LIMIT 1"
            )
            timeout = 5.0

            def open_sqlite() -> sqlite3.Connection:
                return sqlite3.connect(
                    str(path), timeout=timeout, isolation_level=None, check_same_thread=False
                )

            return SQLiteWatcher(open_sqlite, due, interval=_SQLITE_WATCH_INTERVAL)
        if self._engine.dialect.driver != "psycopg":
            return None
        engine = self._engine

        def open_postgres() -> Any:
            pooled = engine.raw_connection()
            conn = pooled.driver_connection
            pooled.detach()  # a connection of its own, for as long as it listens
            return conn

        return PostgresListener(open_postgres, self._channel)

    def _create_notify_trigger(self, conn: Connection) -> None:
        """On PostgreSQL: NOTIFY the table set's channel after every INSERT statement."""
        jobs = self._jobs.name
        qualified = f'"{self.schema}"."{jobs}"' if self.schema else f'"{jobs}"'
        function = f'"{self.schema}"."{jobs}_notify"' if self.schema else f'"{jobs}_notify"'
        exists = conn.execute(
            sa.text(
                "SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = "
                "CAST(:table AS regclass)"
            ),
            {"name": f"{jobs}_notify", "table": qualified},
        ).first()
        if exists:
            return
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{self._channel}', ''); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            f'CREATE TRIGGER "{jobs}_notify" AFTER INSERT ON {qualified} '
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )

    # -- plumbing -------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, write: bool, single: bool) -> Iterator[Connection]:
        serial = self._serial or contextlib.nullcontext()
        if single and self._backend == "postgresql":
            # One statement is atomic by itself: in autocommit mode it costs one round
            # trip instead of three (BEGIN, the statement, COMMIT). Not on MySQL, where
            # switching a pooled connection to autocommit and back is itself a round
            # trip each way (and fails outside the retry when the connection is dead).
            with serial, self._autocommit.connect() as conn:
                yield conn
            return
        with serial, self._engine.connect() as conn:
            if write and self._is_sqlite:
                conn = conn.execution_options(dbjobq_write=True)
            with conn.begin():
                yield conn

    def _run(
        self, what: str, fn: Callable[[Connection], T], *, write: bool, single: bool = False
    ) -> T:
        """Run `fn` in one transaction, retrying transient errors a few times.

        `single=True` promises that `fn` runs one statement, which then needs no
        explicit transaction (except on SQLite, whose writes want BEGIN IMMEDIATE).
        """

        def once() -> T:
            with self._transaction(write, single) as conn:
                return fn(conn)

        return self._retrying(what, once)

    @staticmethod
    def _retrying(what: str, once: Callable[[], T]) -> T:
        """Call `once`, retrying transient database errors; `StorageError` otherwise."""
        for attempt in range(_RETRIES + 1):
            try:
                return once()
            except exc.DBAPIError as error:
                if attempt < _RETRIES and _is_transient(error):
                    delay = min(1.0, 0.02 * 2**attempt) * (0.5 + random.random())
                    logger.debug("%s: transient error, retrying in %.2fs: %s", what, delay, error)
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what} failed: {error.orig}") from error
            except exc.SQLAlchemyError as error:
                raise StorageError(f"{what} failed: {error}") from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _columns(self) -> list[tuple[int, str]]:
        """(position, name) of the jobs table's columns that are Job fields."""
        if self._job_columns is None:
            names = [column.name for column in self._jobs.c]
            wanted = {field.name for field in dataclasses.fields(Job)}
            self._job_columns = [(i, name) for i, name in enumerate(names) if name in wanted]
        return self._job_columns

    def _fields(self, row: sa.Row[Any]) -> dict[str, Any]:
        """A row of the jobs table (all its columns, in order) as Job fields."""
        return {name: row[i] for i, name in self._columns()}

    def _sound_job(self, row: sa.Row[Any]) -> Job | None:
        """The Job of a row, quickly; `None` if the row may be corrupt (look closer)."""
        if self._quick is None:
            columns = self._columns()
            names = [name for _, name in columns]
            self._quick = (
                [i for i, _ in columns],
                *(
                    names.index(name)
                    for name in ("status", "payload", "meta", "result", "max_retries")
                ),
                _job_builder(names),
            )
        indexes, at_status, at_payload, at_meta, at_result, at_retries, build = self._quick
        values = [row[i] for i in indexes]
        status = _STATUS.get(values[at_status])
        retries = values[at_retries]
        if retries == _HANDLERS:
            values[at_retries] = None
        elif type(retries) is not int or retries < 0:
            return None
        if (
            status is None
            or type(values[at_payload]) is not dict
            or type(values[at_meta]) is not dict
            or type(values[at_result]) is Corrupt
        ):
            return None
        values[at_status] = status
        job: Job = build(values)
        return job

    def _to_job(self, row: sa.Row[Any]) -> Job:
        """Build a Job from a row; `StorageError` names the job if the row is corrupt."""
        job = self._sound_job(row)
        if job is not None:
            return job
        fields = self._fields(row)
        problem = self._corruption(fields)
        if problem:
            raise StorageError(f"job {fields['id']} is corrupt: {problem}")
        fields["status"] = _STATUS[fields["status"]]
        if fields["max_retries"] == _HANDLERS:
            fields["max_retries"] = None
        return Job(**fields)

    @staticmethod
    def _corruption(fields: Mapping[str, Any]) -> str | None:
        """What is wrong with a row edited by hand, or `None` if nothing is."""
        for name in ("payload", "meta", "result"):
            if isinstance(fields[name], Corrupt):
                return f"{name} is not valid JSON ({fields[name].error})"
        for name in ("payload", "meta"):
            if not isinstance(fields[name], dict):
                return f"{name} is not a JSON object"
        if fields["status"] not in _STATUS:
            return f"unknown status {fields['status']!r}"
        retries = fields["max_retries"]
        if not isinstance(retries, int) or retries < _HANDLERS:
            return f"max_retries is {retries!r}, not a count of retries"
        return None

    def _upsert_ignoring(self, table: sa.Table) -> Any:
        """An INSERT into `table` that does nothing when the row exists."""
        if self._is_mysql:
            first = next(iter(table.primary_key.columns))
            return mysql.insert(table).on_duplicate_key_update({first.name: first})
        if self._backend == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def _insert(self) -> Any:
        """INSERT that skips rows clashing with the primary key or an active unique key."""
        if self._backend == "postgresql":
            return postgresql.insert(self._jobs).on_conflict_do_nothing()
        if self._is_mysql:
            # Not INSERT IGNORE: that also downgrades real errors to warnings.
            # "id = id" keeps the existing row as it is (VALUES(id) would rename it).
            return mysql.insert(self._jobs).on_duplicate_key_update(id=self._jobs.c.id)
        return sqlite.insert(self._jobs).on_conflict_do_nothing()

    def _held(self, job_id: str, token: str) -> sa.ColumnElement[bool]:
        c = self._jobs.c
        return sa.and_(c.id == job_id, c.status == RUNNING, c.lease_token == token)

    _RELEASED: Mapping[str, Any] = {
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
    }

    # -- the Storage interface -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        # One job without a unique key is one INSERT: atomic without a transaction.
        single = len(jobs) == 1 and jobs[0].unique_key is None
        if single and self._is_sqlite:
            return [self._insert_one_sqlite(jobs[0])]
        if self._is_sqlite and all(job.unique_key is None for job in jobs):
            return self._run(
                "enqueue", lambda conn: self._insert_many_sqlite(conn, jobs), write=True
            )
        return self._run(
            "enqueue", lambda conn: self._insert_jobs(conn, jobs), write=True, single=single
        )

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
        if connection.dialect.name != self._backend:
            raise ConfigurationError(
                f"the connection is to {connection.dialect.name}, the job tables are "
                f"on {self._backend}"
            )
        if not self._initialized:
            if not self._is_sqlite:
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
            ids = self._insert_jobs(connection, jobs)
        except exc.SQLAlchemyError as error:
            raise StorageError(f"enqueue failed: {error}") from error
        if on_commit is not None:
            callback = on_commit
            event.listen(connection, "commit", lambda conn: callback(), once=True)
        return ids

    def _build_insert(self) -> Any:
        c = self._jobs.c
        # The INSERT skips rows that clash with the primary key (a retry after a lost
        # commit acknowledgement inserts nothing twice) or with the unique index on
        # unfinished unique keys; _resolve_unique finds out who holds such a key.
        self._insert_stmt = self._insert().values(
            run_at=sa.func.coalesce(
                sa.bindparam("p_run_at", type_=c.run_at.type),
                db_now_plus(sa.bindparam("p_delay", type_=sa.Double())),
            ),
            created_at=db_now(),
            updated_at=db_now(),
            status=PENDING,
            attempts=0,
        )
        return self._insert_stmt

    def _insert_jobs(self, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
        c = self._jobs.c
        stmt = self._build_insert() if self._insert_stmt is None else self._insert_stmt
        if self._copies and len(jobs) >= _COPY_FROM:
            self._copy_jobs(conn, [j for j in jobs if j.unique_key is None])
            jobs_left: Sequence[NewJob] = [j for j in jobs if j.unique_key is not None]
        else:
            jobs_left = jobs
        text = self._backend != "postgresql"  # JSONText columns take text as it is
        rows: list[dict[str, Any]] = [
            {
                "id": j.id,
                "type": j.type,
                "queue": j.queue,
                "payload": Dumped(j.payload_json)
                if text and j.payload_json is not None
                else j.payload,
                "priority": j.priority,
                "max_retries": _HANDLERS if j.max_retries is None else j.max_retries,
                "p_run_at": j.run_at,
                "p_delay": j.delay,
                "unique_key": j.unique_key,
                "meta": Dumped(j.meta_json) if text and j.meta_json is not None else j.meta,
                "timeout": j.timeout,
            }
            for j in jobs_left
        ]
        inserted: set[str] = set()
        keyed_rows = {str(row["id"]): row for row in rows if row["unique_key"] is not None}
        if self._is_mysql:
            # One statement (PyMySQL sends one multi-row INSERT), so one "now" for all
            # the jobs; MySQL returns no ids to tell the kinds apart for anyway.
            if rows:
                conn.execute(stmt, rows)
        else:
            # Only jobs with a unique key need to know whether they were inserted;
            # the others are executemany'd without RETURNING, which drivers run much
            # faster. SQLite reads its clock per statement, so there runs of each kind
            # go in the order given: jobs of one call become due in that order.
            # (PostgreSQL's now() is the transaction's start, the same throughout.)
            runs: Iterable[tuple[bool, Iterable[dict[str, Any]]]] = (
                itertools.groupby(rows, key=lambda row: row["unique_key"] is not None)
                if self._is_sqlite
                else [
                    (False, [r for r in rows if r["unique_key"] is None]),
                    (True, keyed_rows.values()),
                ]
            )
            for keyed, run in runs:
                batch = list(run)
                if not batch:
                    continue
                if keyed:
                    inserted.update(conn.execute(stmt.returning(c.id), batch).scalars())
                else:
                    conn.execute(stmt, batch)
        result: list[str] = []
        for job in jobs:
            if job.unique_key is None or job.id in inserted:
                result.append(job.id)
            else:
                result.append(self._resolve_unique(conn, stmt, keyed_rows[job.id]))
        return result

    _ONE_ROW: tuple[str, ...] = ("id", "type", "queue", "payload", "priority")
    _ONE_ROW += ("max_retries", "unique_key", "meta", "timeout")

    def _sqlite_insert(self) -> tuple[str, Callable[[NewJob], list[Any]]]:
        """The INSERT of every enqueue, compiled once for SQLite's driver.

        Returns its text and a function that gives a job's parameters in order, as the
        statement's bind processors would (JSON text, `run_at` in epoch seconds).
        """
        if self._one_insert is None:
            compiled = self._build_insert().compile(
                dialect=self._engine.dialect, column_keys=list(self._ONE_ROW)
            )
            assert compiled.positiontup is not None
            names, fixed = compiled.positiontup, dict(compiled.params)

            def params(job: NewJob) -> list[Any]:
                values = {
                    **fixed,
                    "id": job.id,
                    "type": job.type,
                    "queue": job.queue,
                    "payload": dumps(job.payload) if job.payload_json is None else job.payload_json,
                    "priority": job.priority,
                    "max_retries": _HANDLERS if job.max_retries is None else job.max_retries,
                    "p_run_at": None if job.run_at is None else job.run_at.timestamp(),
                    "p_delay": job.delay,
                    "unique_key": job.unique_key,
                    "meta": dumps(job.meta) if job.meta_json is None else job.meta_json,
                    "timeout": job.timeout,
                }
                return [values[name] for name in names]

            self._one_insert = (compiled.string, params)
        return self._one_insert

    def _insert_one_sqlite(self, job: NewJob) -> str:
        """Insert one job on SQLite through the driver: BEGIN IMMEDIATE, INSERT, COMMIT.

        The same statement as every enqueue, compiled once; going around
        SQLAlchemy's execution machinery halves the cost of `enqueue` on SQLite,
        where the database's own work is only a few hundred microseconds.
        Errors are handled as `_run` handles them: busy and locked are retried.
        """
        sql, make_params = self._sqlite_insert()
        params = make_params(job)
        dbapi = self._engine.dialect.loaded_dbapi
        serial = self._serial or contextlib.nullcontext()

        def once() -> str:
            with serial:
                pooled = self._engine.raw_connection()
                try:
                    connection: Any = pooled.dbapi_connection
                    try:
                        connection.execute("BEGIN IMMEDIATE")
                        connection.execute(sql, params)
                        connection.commit()
                    except dbapi.Error as error:
                        with contextlib.suppress(dbapi.Error):
                            connection.rollback()
                        raise self._driver_error(sql, params, error) from error
                finally:
                    pooled.close()
            return job.id

        return self._retrying("enqueue", once)

    def _insert_many_sqlite(self, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
        """Insert jobs without unique keys through the driver's `executemany`.

        The statement of `_insert_one_sqlite`, in `conn`'s transaction: SQLAlchemy's
        per-row parameter handling would cost more than SQLite's own work.
        """
        sql, make_params = self._sqlite_insert()
        rows = [make_params(job) for job in jobs]
        dbapi = self._engine.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, rows)
        except dbapi.Error as error:
            raise self._driver_error(sql, rows, error) from error
        finally:
            cursor.close()
        return [job.id for job in jobs]

    def _driver_error(self, sql: str, params: Any, error: Exception) -> exc.StatementError:
        """A driver's error on `sql`, wrapped as SQLAlchemy wraps the statements it runs.

        So `_retrying` classifies it as usual, and the engine's `hide_parameters` holds.
        """
        return exc.DBAPIError.instance(
            sql,
            params,
            error,
            self._engine.dialect.loaded_dbapi.Error,
            hide_parameters=self._engine.hide_parameters,
        )

    def _copy_jobs(self, conn: Connection, jobs: Sequence[NewJob]) -> None:
        """Insert many jobs through COPY: several times faster than an executemany.

        COPY fills a temporary staging table (emptied at commit); one INSERT ...
        SELECT then moves the rows into the jobs table with the database's "now",
        skipping ids already there (a retry of an insert whose commit was not
        acknowledged), as every insert does. ON CONFLICT checks each row against the
        primary key as it goes in: an anti-join (NOT EXISTS) was planned as a hash of
        the whole jobs table, so bulk enqueues slowed down as finished jobs piled up.
        """
        if not jobs:
            return
        if self._copy_stmt is None:
            c, s = self._jobs.c, _STAGE.c
            self._copy_stmt = (
                postgresql.insert(self._jobs)
                .from_select(
                    [
                        *("id", "type", "queue", "status", "priority", "attempts", "max_retries"),
                        *("run_at", "created_at", "updated_at", "timeout", "payload", "meta"),
                    ],
                    sa.select(
                        s.id,
                        s.type,
                        s.queue,
                        PENDING,
                        s.priority,
                        sa.literal_column("0"),
                        s.max_retries,
                        sa.func.coalesce(s.run_at, db_now_plus(s.delay)),
                        db_now(),
                        db_now(),
                        s.timeout,
                        sa.cast(s.payload, c.payload.type),
                        sa.cast(s.meta, c.meta.type),
                    ),
                )
                .on_conflict_do_nothing()
            )
        dbapi_connection: Any = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_CREATE_STAGE)
            with cursor.copy("COPY pg_temp.dbjobq_stage FROM STDIN") as copy:
                for j in jobs:
                    copy.write_row(
                        (
                            j.id,
                            j.type,
                            j.queue,
                            dumps(j.payload) if j.payload_json is None else j.payload_json,
                            j.priority,
                            _HANDLERS if j.max_retries is None else j.max_retries,
                            j.run_at,
                            j.delay,
                            dumps(j.meta) if j.meta_json is None else j.meta_json,
                            j.timeout,
                        )
                    )
        except self._engine.dialect.loaded_dbapi.Error as error:
            # As SQLAlchemy reports the errors of statements it runs itself.
            gone = self._engine.dialect.is_disconnect(error, dbapi_connection, cursor)
            if gone:
                conn.invalidate()
            raise exc.DBAPIError.instance(
                "COPY",
                None,
                error,
                self._engine.dialect.loaded_dbapi.Error,
                connection_invalidated=gone,
            ) from error
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone
                cursor.close()
        conn.execute(self._copy_stmt)

    def _resolve_unique(self, conn: Connection, stmt: Any, row: dict[str, Any]) -> str:
        """The id for a keyed row the INSERT may have skipped.

        The row's own id if that is stored (inserted just now on MySQL, which
        returns no ids, or earlier: a job sent again, perhaps finished since);
        otherwise the id of the unfinished job that holds its unique key.
        """
        c = self._jobs.c
        if self._exists(conn, row["id"]):
            return str(row["id"])
        key = row["unique_key"]
        holder = (
            c.active_unique_key == key
            if self._is_mysql
            else sa.and_(c.unique_key == key, c.status.in_(UNFINISHED))
        )
        lookup = sa.select(c.id).where(holder)
        for _ in range(10):
            existing = conn.execute(lookup).scalar()
            if existing is not None:
                return str(existing)
            # The holder finished between our insert and the lookup: insert again.
            conn.execute(stmt, [row])
        raise StorageError(f"unique key {key!r} keeps changing hands")

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
            jobs, corrupt = self._claim_once(
                queues, worker_id, lease_seconds, types, limit, newest_first
            )
            # Corrupt rows were failed on the way: look again rather than report an
            # empty queue, so that a bad row never stalls a worker.
            if jobs or not corrupt:
                break
        # Priority first (highest), then (run_at, id) either way round: ids are unique.
        if newest_first:
            jobs.sort(key=lambda j: (j.priority, j.run_at, j.id), reverse=True)
        else:
            jobs.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        return jobs

    def _claim_once(
        self,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None,
        limit: int,
        newest_first: bool = False,
    ) -> tuple[list[Job], int]:
        token = uuid.uuid4().hex
        if self._is_mysql:
            c = self._jobs.c
            values = {
                "status": RUNNING,
                "attempts": c.attempts + 1,
                "worker_id": worker_id,
                "lease_token": token,
                "lease_expires_at": db_now_plus(_seconds("lease", lease_seconds)),
                "started_at": db_now(),
                "updated_at": db_now(),
                "progress": None,
                "progress_message": None,
            }
            run = self._claim_in_steps(queues, types, limit, values, newest_first)
        else:
            # Built once per kind of claim; only these three values change per call.
            stmt = self._claim_statement(queues, types, limit, newest_first)
            params = {"c_worker": worker_id, "c_token": token, "c_lease": float(lease_seconds)}

            def run(conn: Connection) -> tuple[list[Job], int]:
                return self._claimed(conn, conn.execute(stmt, params).fetchall())

        return self._run("claim", run, write=True, single=not self._is_mysql)

    def _claim_statement(
        self,
        queues: Sequence[str],
        types: Collection[str] | None,
        limit: int,
        newest_first: bool = False,
    ) -> Any:
        """The claim as one UPDATE ... RETURNING, built once per kind of claim."""
        key = (
            tuple(queues),
            None if types is None else tuple(sorted(types)),
            limit,
            newest_first,
        )
        stmt = self._claims.get(key)
        if stmt is None:
            c = self._jobs.c
            # The CTE is an optimisation fence: PostgreSQL evaluates the locking
            # SELECT once, so LIMIT really bounds how many rows the UPDATE takes.
            # SQLite ignores FOR UPDATE; BEGIN IMMEDIATE makes the statement exclusive.
            ready = self._ready(queues, types, limit, newest_first).cte("ready")
            stmt = (
                sa.update(self._jobs)
                .where(c.id == ready.c.id)
                .values(
                    status=RUNNING,
                    attempts=c.attempts + 1,
                    worker_id=sa.bindparam("c_worker", type_=c.worker_id.type),
                    lease_token=sa.bindparam("c_token", type_=c.lease_token.type),
                    lease_expires_at=db_now_plus(sa.bindparam("c_lease", type_=sa.Double())),
                    started_at=db_now(),
                    updated_at=db_now(),
                    progress=None,
                    progress_message=None,
                )
                .returning(*self._jobs.c)
            )
            if len(self._claims) >= 64:
                self._claims.clear()
            self._claims[key] = stmt
        return stmt

    def _claim_in_steps(
        self,
        queues: Sequence[str],
        types: Collection[str] | None,
        limit: int,
        values: Mapping[str, Any],
        newest_first: bool = False,
    ) -> Callable[[Connection], tuple[list[Job], int]]:
        """Claim in three statements of one transaction: lock, update, read back.

        MySQL has neither UPDATE ... RETURNING nor LIMIT inside an IN subquery.
        """
        c = self._jobs.c
        select_ready = self._ready(queues, types, limit, newest_first)

        def run(conn: Connection) -> tuple[list[Job], int]:
            ids = list(conn.execute(select_ready).scalars())
            if not ids:
                return [], 0
            conn.execute(sa.update(self._jobs).where(c.id.in_(ids)).values(**values))
            rows = conn.execute(sa.select(self._jobs).where(c.id.in_(ids)))
            return self._claimed(conn, list(rows))

        return run

    def _claimed(self, conn: Connection, rows: Sequence[sa.Row[Any]]) -> tuple[list[Job], int]:
        """Jobs from claimed rows.

        A corrupt row (edited by hand) is failed with the reason, in the same
        transaction, instead of blocking the head of the queue forever.
        """
        jobs: list[Job] = []
        c = self._jobs.c
        for row in rows:
            job = self._sound_job(row)
            if job is not None:
                jobs.append(job)
                continue
            problem = self._corruption(self._fields(row))
            if problem is None:  # sound after all (a subclass of dict, say)
                jobs.append(self._to_job(row))
                continue
            job_id = row._mapping[c.id]
            logger.error("job %s is corrupt and was failed: %s", job_id, problem)
            conn.execute(
                sa.update(self._jobs)
                .where(c.id == job_id)
                .values(
                    status=JobStatus.FAILED.value,
                    last_error=f"StorageError: the stored job is corrupt: {problem}",
                    finished_at=db_now(),
                    updated_at=db_now(),
                    **self._RELEASED,
                )
            )
        return jobs, len(rows) - len(jobs)

    def _ready(
        self,
        queues: Sequence[str],
        types: Collection[str] | None,
        limit: int,
        newest_first: bool = False,
    ) -> sa.Select[tuple[str]]:
        """The due jobs a claim takes, in claim order, locked and skipping locked rows."""
        c = self._jobs.c
        conditions = [c.status == PENDING, c.queue.in_(list(queues)), c.run_at <= db_now()]
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

    def _update_held(self, what: str, job_id: str, token: str, values: Mapping[str, Any]) -> bool:
        stmt = sa.update(self._jobs).where(self._held(job_id, token)).values(**values)
        return self._run(
            what, lambda conn: conn.execute(stmt).rowcount == 1, write=True, single=True
        )

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        expires = db_now_plus(_seconds("lease", lease_seconds))
        return self._update_held("heartbeat", job_id, token, {"lease_expires_at": expires})

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        values = {"progress": progress, "progress_message": message, "updated_at": db_now()}
        return self._update_held("set_progress", job_id, token, values)

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        values = {
            "status": JobStatus.COMPLETED.value,
            "result": result,
            "finished_at": db_now(),
            "updated_at": db_now(),
            **self._RELEASED,
        }
        return self._update_held("complete", job_id, token, values)

    def complete_many(self, outcomes: Sequence[tuple[str, str, Any]]) -> list[bool]:
        """Complete several jobs in one transaction.

        Jobs with equal results share one `UPDATE` (a batch of no-op jobs is one
        statement, run without an explicit transaction on PostgreSQL); the rest
        take one statement each.
        """
        if len(outcomes) < 2:
            return [self.complete(job_id, token, result=r) for job_id, token, r in outcomes]
        firsts = _first_leases([(job_id, token) for job_id, token, _ in outcomes])
        if firsts is None:
            return super().complete_many(outcomes)
        groups: dict[str | None, tuple[Any, list[tuple[str, str]]]] = {}
        chosen = outcomes if isinstance(firsts, range) else [outcomes[i] for i in firsts]
        for job_id, token, result in chosen:
            key = None if result is None else dumps(result)
            groups.setdefault(key, (result, []))[1].append((job_id, token))

        def run(conn: Connection) -> set[str]:
            done: set[str] = set()
            for result, leases in groups.values():
                done.update(self._complete_group(conn, result, leases))
            return done

        single = len(groups) == 1 and self._backend == "postgresql"
        done = self._run("complete_many", run, write=True, single=single)
        return _answers([job_id for job_id, _, _ in outcomes], firsts, done)

    def _complete_group(
        self, conn: Connection, result: Any, leases: list[tuple[str, str]]
    ) -> Iterable[str]:
        """Complete the held jobs among `leases` with one result; their ids."""
        values = {
            "status": JobStatus.COMPLETED.value,
            "result": sa.bindparam("l_result", result, type_=self._jobs.c.result.type),
            "finished_at": db_now(),
            "updated_at": db_now(),
            **self._RELEASED,
        }
        return self._update_leases(conn, leases, values, "complete", {"l_result": result})

    def _released(self) -> dict[str, Any]:
        return {
            "status": PENDING,
            "attempts": self._jobs.c.attempts - 1,
            "started_at": None,
            "updated_at": db_now(),
            **self._RELEASED,
        }

    def release(self, job_id: str, token: str) -> bool:
        return self._update_held("release", job_id, token, self._released())

    def release_many(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        """Give back several jobs in one statement (one transaction on MySQL)."""
        if len(leases) < 2:
            return [self.release(job_id, token) for job_id, token in leases]
        firsts = _first_leases(leases)
        if firsts is None:
            return super().release_many(leases)
        given = list(leases) if isinstance(firsts, range) else [leases[i] for i in firsts]

        def run(conn: Connection) -> set[str]:
            return set(self._update_leases(conn, given, self._released(), "release"))

        done = self._run("release_many", run, write=True, single=not self._is_mysql)
        return _answers([job_id for job_id, _ in leases], firsts, done)

    def _update_leases(
        self,
        conn: Connection,
        leases: list[tuple[str, str]],
        values: dict[str, Any],
        tag: str,
        params: dict[str, Any] | None = None,
    ) -> Iterable[str]:
        """UPDATE the running jobs among `(job_id, token)` leases with `values`; their ids.

        On PostgreSQL the statement takes the leases as two arrays, so its text is
        the same for any number of jobs: the driver converts and prepares it once.
        `tag` names the cached statement (one per kind of update); `params` are
        the values of bind parameters in `values`.
        """
        c = self._jobs.c
        if self._backend == "postgresql":
            ids = ",".join(job_id for job_id, _ in leases)
            tokens = ",".join(token for _, token in leases)
            # Two strings split by the database: a driver dumps a list element by
            # element in Python. Ids and tokens hold no commas, but if one did...
            joined = ids.count(",") == tokens.count(",") == len(leases) - 1
            key = (tag, joined)
            stmt = self._lease_updates.get(key)
            if stmt is None:
                texts: list[sa.ColumnElement[Any]]
                if joined:
                    texts = [
                        sa.func.string_to_array(sa.bindparam(name, type_=sa.Text), ",")
                        for name in ("l_ids", "l_tokens")
                    ]
                else:
                    texts = [
                        sa.bindparam(name, type_=postgresql.ARRAY(sa.Text))
                        for name in ("l_ids", "l_tokens")
                    ]
                held = sa.func.unnest(*texts).table_valued("id", "token").render_derived("held")
                stmt = self._lease_updates[key] = (
                    sa.update(self._jobs)
                    .where(c.id == held.c.id, c.lease_token == held.c.token, c.status == RUNNING)
                    .values(**values)
                    .returning(c.id)
                )
            given: dict[str, Any] = (
                {"l_ids": ids, "l_tokens": tokens}
                if joined
                else {"l_ids": [i for i, _ in leases], "l_tokens": [t for _, t in leases]}
            )
            return conn.execute(stmt, {**given, **(params or {})}).scalars()
        held_now = sa.and_(c.status == RUNNING, sa.tuple_(c.id, c.lease_token).in_(leases))
        if self._is_mysql:
            locked = sa.select(c.id).where(held_now).with_for_update()
            found = list(conn.execute(locked).scalars())
            if found:
                conn.execute(
                    sa.update(self._jobs).where(c.id.in_(found), held_now).values(**values)
                )
            return found
        stmt = sa.update(self._jobs).where(held_now).values(**values).returning(c.id)
        return conn.execute(stmt).scalars()

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        values: dict[str, Any] = {"last_error": error, "updated_at": db_now(), **self._RELEASED}
        if retry_in is None:
            values.update(status=JobStatus.FAILED.value, finished_at=db_now())
        else:
            delay = _seconds("retry_in", retry_in)
            values.update(status=JobStatus.PENDING.value, run_at=db_now_plus(delay))
        return self._update_held("fail", job_id, token, values)

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
        """Retry or fail the `lost` jobs; `last_error` is `why` around the worker id.

        The one place that decides between retry and failure, for every kind of rescue.
        """
        c = self._jobs.c
        error = sa.literal(why[0]) + sa.func.coalesce(c.worker_id, "?") + sa.literal(why[1])
        common = {"last_error": error, "updated_at": db_now(), **self._RELEASED}
        to_retry = (
            sa.update(self._jobs)
            .where(lost, sa.or_(c.attempts <= c.max_retries, c.max_retries == _HANDLERS))
            .values(status=PENDING, run_at=db_now_plus(_seconds("retry_in", retry_in)), **common)
        )
        to_fail = (
            sa.update(self._jobs)
            .where(lost, c.attempts > c.max_retries, c.max_retries != _HANDLERS)
            .values(status=JobStatus.FAILED.value, finished_at=db_now(), **common)
        )

        def run(conn: Connection) -> int:
            return conn.execute(to_retry).rowcount + conn.execute(to_fail).rowcount

        return self._run(what, run, write=True)

    def get(self, job_id: str) -> Job:
        if not _findable(job_id):
            raise JobNotFound(job_id)
        stmt = sa.select(self._jobs).where(self._jobs.c.id == job_id)

        def run(conn: Connection) -> Job | None:
            row = conn.execute(stmt).first()
            return None if row is None else self._to_job(row)

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
    ) -> list[Job]:
        if not all(_findable(text) for text in (queue, type) if text is not None):
            return []  # no job can be in such a queue or of such a type
        c = self._jobs.c
        stmt = sa.select(self._jobs).order_by(c.id.desc() if newest_first else c.id).limit(limit)
        if status is not None:
            stmt = stmt.where(c.status == JobStatus(status).value)
        if queue is not None:
            stmt = stmt.where(c.queue == queue)
        if type is not None:
            stmt = stmt.where(c.type == type)
        return self._run(
            "list_jobs",
            lambda conn: [self._to_job(r) for r in conn.execute(stmt)],
            write=False,
            single=True,
        )

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        c = self._jobs.c
        stmt = sa.select(c.queue, c.status, sa.func.count()).group_by(c.queue, c.status)
        if finished_within is not None:
            since = db_now_plus(_seconds("within", -float(finished_within)))
            stmt = stmt.where(c.finished_at >= since)

        def run(conn: Connection) -> dict[tuple[str, JobStatus], int]:
            counts = {}
            for queue, status, n in conn.execute(stmt):
                if status in _STATUS:
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

    def _exists(self, conn: Connection, job_id: str) -> bool:
        return (
            conn.execute(sa.select(self._jobs.c.id).where(self._jobs.c.id == job_id)).first()
            is not None
        )

    def cancel(self, job_id: str) -> bool:
        if not _findable(job_id):
            raise JobNotFound(job_id)
        c = self._jobs.c
        stmt = (
            sa.update(self._jobs)
            .where(c.id == job_id, c.status.in_(UNFINISHED))
            .values(
                status=JobStatus.CANCELLED.value,
                finished_at=db_now(),
                updated_at=db_now(),
                **self._RELEASED,
            )
        )

        def run(conn: Connection) -> bool | None:
            if conn.execute(stmt).rowcount == 1:
                return True
            return False if self._exists(conn, job_id) else None

        done = self._run("cancel", run, write=True)
        if done is None:
            raise JobNotFound(job_id)
        return done

    def retry(self, job_id: str) -> bool:
        if not _findable(job_id):
            raise JobNotFound(job_id)
        c = self._jobs.c
        stmt = (
            sa.update(self._jobs)
            .where(
                c.id == job_id, c.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value])
            )
            .values(
                status=PENDING,
                attempts=0,
                run_at=db_now(),
                finished_at=None,
                result=None,
                progress=None,
                progress_message=None,
                updated_at=db_now(),
            )
        )
        held = sa.select(c.unique_key).where(c.id == job_id).scalar_subquery()
        taken = sa.select(c.id).where(c.unique_key == held, c.status.in_(UNFINISHED))

        def run(conn: Connection) -> bool | None:
            if not self._exists(conn, job_id):
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
        c = self._jobs.c
        finished = [JobStatus(s).value for s in statuses if JobStatus(s).is_finished]
        if not finished:
            return 0
        cutoff = db_now_plus(_seconds("age", -float(older_than)))
        doomed = sa.and_(c.status.in_(finished), c.finished_at < cutoff)
        if limit is None:
            stmt = sa.delete(self._jobs).where(doomed)
            return self._run("purge", lambda conn: conn.execute(stmt).rowcount, write=True)
        # Pick the batch first: MySQL allows no LIMIT inside an IN subquery.
        batch = sa.select(c.id).where(doomed).order_by(c.finished_at, c.id).limit(limit)

        def run(conn: Connection) -> int:
            ids = list(conn.execute(batch).scalars())
            if not ids:
                return 0
            return int(conn.execute(sa.delete(self._jobs).where(c.id.in_(ids))).rowcount)

        return self._run("purge", run, write=True)

    # -- periodic jobs -------------------------------------------------------------------

    _NO_TICK = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        p = self._periodic.c
        ensure = self._upsert_ignoring(self._periodic).values(
            name=schedule, last_tick=self._NO_TICK
        )
        # Compare-and-set: of all the callers for one tick, exactly one moves it on.
        advance = (
            sa.update(self._periodic)
            .where(p.name == schedule, p.last_tick < tick)
            .values(last_tick=tick)
        )

        def run(conn: Connection) -> bool:
            conn.execute(ensure)
            if conn.execute(advance).rowcount != 1:
                return False
            self._insert_jobs(conn, [job])
            return True

        return self._run("enqueue_tick", run, write=True)

    def last_tick(self, schedule: str) -> datetime | None:
        p = self._periodic.c
        stmt = sa.select(p.last_tick).where(p.name == schedule)
        found = self._run("last_tick", lambda conn: conn.execute(stmt).scalar(), write=False)
        return None if found is None or found <= self._NO_TICK else found

    # -- the worker registry --------------------------------------------------------------

    def save_worker(self, info: WorkerInfo) -> None:
        w = self._workers.c
        values = {
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": list(info.queues),
            "types": list(info.types),
            "started_at": info.started_at,
            "last_seen": db_now(),
            "current_job": info.current_job,
            "jobs_processed": info.jobs_processed,
        }
        if self._is_mysql:
            stmt: Any = mysql.insert(self._workers).values(id=info.id, **values)
            stmt = stmt.on_duplicate_key_update(**values)
        else:
            dialect = postgresql if self._backend == "postgresql" else sqlite
            stmt = dialect.insert(self._workers).values(id=info.id, **values)
            stmt = stmt.on_conflict_do_update(index_elements=[w.id], set_=values)
        self._run("save_worker", lambda conn: conn.execute(stmt), write=True)

    def remove_worker(self, worker_id: str) -> None:
        stmt = sa.delete(self._workers).where(self._workers.c.id == worker_id)
        self._run("remove_worker", lambda conn: conn.execute(stmt), write=True)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        w = self._workers.c
        since = db_now_plus(_seconds("seen", -float(seen_within)))
        stmt = sa.select(self._workers).where(w.last_seen >= since).order_by(w.id)

        def run(conn: Connection) -> list[WorkerInfo]:
            return [
                WorkerInfo(
                    id=r.id,
                    hostname=r.hostname,
                    pid=r.pid,
                    queues=tuple(r.queues),
                    types=tuple(r.types),
                    started_at=r.started_at,
                    last_seen=r.last_seen,
                    current_job=r.current_job,
                    jobs_processed=r.jobs_processed,
                )
                for r in conn.execute(stmt)
            ]

        return self._run("list_workers", run, write=False)

    def prune_workers(self, *, older_than: float) -> int:
        w = self._workers.c
        cutoff = db_now_plus(_seconds("age", -float(older_than)))
        stmt = sa.delete(self._workers).where(w.last_seen < cutoff)
        return self._run("prune_workers", lambda conn: conn.execute(stmt).rowcount, write=True)

    def now(self) -> datetime:
        """The database server's current time."""
        found = self._run(
            "now",
            lambda conn: conn.execute(sa.select(db_now())).scalar(),
            write=False,
            single=True,
        )
        assert found is not None
        return found
