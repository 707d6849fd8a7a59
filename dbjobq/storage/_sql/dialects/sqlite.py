"""SQLite: BEGIN IMMEDIATE writes, the driver's own insert routes, `data_version` wake-ups."""

from __future__ import annotations

import contextlib
import itertools
import os.path
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from dbjobq.errors import ConfigurationError, StorageError
from dbjobq.job import NewJob
from dbjobq.storage._sql import migrate
from dbjobq.storage._sql.dialects.base import Dialect
from dbjobq.storage._sql.engine import EngineSettings, driver_error, engine_lock, retrying
from dbjobq.storage._sql.notify import SQLiteWatcher, Watcher
from dbjobq.storage._sql.rows import INSERT_PARAMS, insert_row
from dbjobq.storage._sql.schema import SQLITE_NOW

WATCH_INTERVAL = 0.002  # seconds between reads of PRAGMA data_version
_MEMORY = (None, "", ":memory:")


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # a no-op ("memory") in memory
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    dbapi_connection: Any = conn.connection.dbapi_connection
    if dbapi_connection.in_transaction:
        return  # someone else's "begin" hook got there first
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None  # pooled before dbjobq saw the engine
    write = conn.get_execution_options().get("dbjobq_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def install_hooks(engine: Engine) -> None:
    """Take transaction control away from the sqlite3 module.

    This is SQLAlchemy's documented recipe: with the module's own transaction
    handling off, dbjobq starts writes with BEGIN IMMEDIATE. A deferred BEGIN that
    later upgrades to a write lock fails at once with SQLITE_BUSY instead of waiting
    out the busy timeout. Installed once per engine, however many storages share it;
    the engine's other users get correct BEGINs too.
    """
    if not event.contains(engine, "begin", _on_begin):
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)


class SQLiteDialect(Dialect):
    """SQLite through the standard library's sqlite3 module."""

    backends = ("sqlite",)
    default_driver = "pysqlite"
    module = "sqlite3"
    claims_ahead = False  # a claim is CPU work in this process, not a wait
    close_wait = 2.0  # the watcher's connection shares the file with the pool's
    join_creates_tables = False

    @classmethod
    def configure(cls, settings: EngineSettings) -> None:
        super().configure(settings)
        settings.connect_args.setdefault("timeout", settings.busy_timeout)
        if settings.url.database in _MEMORY:
            settings.connect_args.setdefault("check_same_thread", False)
            settings.options.setdefault("poolclass", StaticPool)

    def __init__(self, engine: Engine, *, schema: str | None, table_prefix: str) -> None:
        if schema is not None:
            raise ConfigurationError("schema is not supported on SQLite; use table_prefix")
        super().__init__(engine, schema=schema, table_prefix=table_prefix)
        self.in_memory = engine.url.database in _MEMORY
        if self.in_memory:
            if not isinstance(engine.pool, StaticPool):
                raise ConfigurationError(
                    "an in-memory SQLite engine must use poolclass=StaticPool (and "
                    "check_same_thread=False), or each thread sees its own empty "
                    'database; pass the URL "sqlite://" instead to have this done'
                )
            # One shared connection can only run one transaction at a time.
            self.serial = engine_lock(engine)
        install_hooks(engine)
        self._raw: tuple[str, Callable[[NewJob], list[Any]]] | None = None

    @contextlib.contextmanager
    def transaction(self, write: bool, single: bool) -> Iterator[Connection]:
        with self.serial or contextlib.nullcontext(), self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(dbjobq_write=True)  # BEGIN IMMEDIATE
            with conn.begin():
                yield conn

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    # -- the driver's insert routes ----------------------------------------------------

    def raw_insert(self) -> tuple[str, Callable[[NewJob], list[Any]]]:
        """The jobs INSERT compiled once for the driver, and a job's parameters for it.

        The parameters are what the statement's bind processors would make (JSON
        text as it is, `run_at` in epoch seconds).
        """
        if self._raw is None:
            columns = [name for name in INSERT_PARAMS if name in self.jobs.c]
            compiled = self.insert_statement().compile(
                dialect=self.engine.dialect, column_keys=columns
            )
            assert compiled.positiontup is not None
            at = {name: i for i, name in enumerate(INSERT_PARAMS)}
            run_at = at["p_run_at"]
            fixed = compiled.params
            slots = [(at.get(name), fixed.get(name)) for name in compiled.positiontup]
            run_at_slot = compiled.positiontup.index("p_run_at")

            def params(job: NewJob) -> list[Any]:
                row = insert_row(job)
                values = [value if i is None else row[i] for i, value in slots]
                when = row[run_at]
                if when is not None:
                    values[run_at_slot] = when.timestamp()
                return values

            self._raw = (compiled.string, params)
        return self._raw

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        """Send one job without a unique key through the driver.

        BEGIN IMMEDIATE, INSERT, COMMIT, with the same statement as every enqueue,
        compiled once: going around
        SQLAlchemy's execution machinery halves the cost of `enqueue` on SQLite,
        where the database's own work is only a few hundred microseconds. Errors
        are handled as `run` handles them: busy and locked are retried.
        """
        if len(jobs) != 1 or jobs[0].unique_key is not None or jobs[0].depends_on:
            return super().enqueue(jobs)
        sql, make_params = self.raw_insert()
        params = make_params(jobs[0])
        dbapi = self.engine.dialect.loaded_dbapi
        serial = self.serial or contextlib.nullcontext()

        def once() -> list[str]:
            with serial:
                pooled = self.engine.raw_connection()
                try:
                    connection: Any = pooled.dbapi_connection
                    try:
                        connection.execute("BEGIN IMMEDIATE")
                        connection.execute(sql, params)
                        connection.commit()
                    except dbapi.Error as error:
                        with contextlib.suppress(dbapi.Error):
                            connection.rollback()
                        raise driver_error(self.engine, sql, params, error) from error
                finally:
                    pooled.close()
            return [jobs[0].id]

        return retrying("enqueue", once)

    def insert_runs(self, jobs: Sequence[NewJob]) -> Iterable[tuple[bool, Sequence[NewJob]]]:
        """Keep the order given.

        SQLite reads its clock per statement, so the jobs of one call become due
        in the order given.
        """
        for keyed, run in itertools.groupby(jobs, key=lambda job: job.unique_key is not None):
            yield keyed, list(run)

    def insert_plain(self, conn: Connection, jobs: Sequence[NewJob]) -> None:
        """Use the driver's `executemany`, in `conn`'s transaction.

        SQLAlchemy's per-row parameter handling would cost more than SQLite's own
        work.
        """
        sql, make_params = self.raw_insert()
        rows = [make_params(job) for job in jobs]
        dbapi = self.engine.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, rows)
        except dbapi.Error as error:
            raise driver_error(self.engine, sql, rows, error) from error
        finally:
            cursor.close()

    # -- schema ---------------------------------------------------------------------

    def after_create(self, conn: Connection) -> None:
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        name = f"{self.jobs.name}_finished"
        index = migrate.finished_index(
            self.jobs, conn.execute(sa.text(query), {"n": name}).scalar()
        )
        if index is not None:
            index.drop(conn)
            index.create(conn)
        # Layout 5: waiting jobs hold their unique keys and their place in a key.
        for index in migrate.waiting_indexes(self.jobs):
            found = conn.execute(sa.text(query), {"n": index.name}).scalar()
            if migrate.lacks_waiting(found):
                index.drop(conn)
                index.create(conn)

    def schema_exists(self) -> bool:
        """A SQLite file is opened read-only, and only if it exists."""
        url = self.engine.url
        # A plain path (not a file: URI), which connecting would create if missing:
        if url.database in _MEMORY or "uri" in url.query:
            return super().schema_exists()
        path = os.path.abspath(str(url.database))
        if not os.path.isfile(path):
            return False
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        try:
            ro = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
            with contextlib.closing(ro):
                return ro.execute(query, (self.jobs.name,)).fetchone() is not None
        except sqlite3.Error as error:
            raise StorageError(f"schema_exists failed: {error}") from error

    # -- wake-ups -------------------------------------------------------------------

    @property
    def can_notify(self) -> bool:
        """Only a database file can be watched: not memory, not a `file:` URI."""
        path = self.engine.url.database
        return path not in _MEMORY and not str(path).startswith("file:")

    def watcher(self) -> Watcher | None:
        if not self.can_notify:
            return None
        path = str(self.engine.url.database)
        due = (
            f"SELECT 1 FROM \"{self.jobs.name}\" WHERE status = 'pending' AND run_at <= "
            f"{SQLITE_NOW} LIMIT 1"
        )

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)

        return SQLiteWatcher(connect, due, interval=WATCH_INTERVAL)
