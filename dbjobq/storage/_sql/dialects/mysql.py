"""MySQL 8.0.17+ and MariaDB 10.6+: claims in steps, a byte-for-byte collation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from dbjobq.errors import ConfigurationError, StorageError
from dbjobq.job import NewJob
from dbjobq.storage._sql import changes, limited, migrate
from dbjobq.storage._sql.changes import LeaseChange
from dbjobq.storage._sql.dialects.base import Dialect, Leases, Ready, Rows
from dbjobq.storage._sql.engine import EngineSettings
from dbjobq.storage._sql.schema import PENDING, RUNNING

CHARSET = "utf8mb4"
_KEY_LOCKS = "dbjobq_key_locks"  # connection info: the key locks a claim holds


def collation_for(is_mariadb: bool, version: tuple[Any, ...] | None) -> str:
    """The collation of every dbjobq table on this MySQL/MariaDB server.

    Binary and without padding, so that text compares byte for byte as on every
    other backend: `Mail`, `mail` and `mail ` are three job types, `café` and
    `cafe` two unique keys. (Plain `utf8mb4_bin` pads: it treats `k` and `k ` as
    equal.)

    Raises:
        ConfigurationError: On a MySQL server older than 8.0.17, which has no such
            collation for utf8mb4.
    """
    if is_mariadb:
        return "utf8mb4_nopad_bin"  # MariaDB 10.2.2+
    if version is not None and tuple(version[:3]) >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    shown = ".".join(str(part) for part in version or ()) or "unknown"
    raise ConfigurationError(
        f"dbjobq needs MySQL 8.0.17 or later (or MariaDB 10.6+), for the binary no-pad "
        f"collation utf8mb4_0900_bin; this server is MySQL {shown}"
    )


class MySQLDialect(Dialect):
    """MySQL and MariaDB through PyMySQL, in READ COMMITTED transactions."""

    backends = ("mysql", "mariadb")
    default_driver = "pymysql"
    extra = "mysql"
    module = "pymysql"
    partial_indexes = False
    upgrade_lock_wait = 10.0
    update_returns = False

    @classmethod
    def configure(cls, settings: EngineSettings) -> None:
        super().configure(settings)
        if settings.url.get_driver_name() == "pymysql":
            settings.connect_args.setdefault("connect_timeout", 10)
        # Each statement sees the latest committed rows (REPEATABLE READ would pin
        # a snapshot); servers drop idle connections after wait_timeout.
        settings.options.setdefault("isolation_level", "READ COMMITTED")
        settings.options.setdefault("pool_recycle", 3600)
        if "charset" not in settings.url.query:
            settings.url = settings.url.update_query_dict({"charset": CHARSET})

    def __init__(self, engine: Engine, *, schema: str | None, table_prefix: str) -> None:
        super().__init__(engine, schema=schema, table_prefix=table_prefix)
        self._collation = ""

    @contextlib.contextmanager
    def transaction(self, write: bool, single: bool) -> Iterator[Connection]:
        """The default, then the release of the key locks a limited claim took.

        `GET_LOCK` locks belong to the session, not the transaction: they are
        released once the transaction has ended, so the next holder sees its rows.
        """
        with self.engine.connect() as conn:
            try:
                with conn.begin():
                    yield conn
            finally:
                names = conn.info.pop(_KEY_LOCKS, None)
                if names:
                    self._release(conn, names)

    def _release(self, conn: Connection, names: Sequence[str]) -> None:
        calls = ", ".join(f"RELEASE_LOCK(:n{i})" for i in range(len(names)))
        try:
            conn.execute(sa.text(f"SELECT {calls}"), {f"n{i}": n for i, n in enumerate(names)})
            conn.rollback()
        except Exception:  # noqa: BLE001 - the transaction's outcome stands
            # A session that may still hold them must not go back to the pool;
            # closing it releases them.
            conn.invalidate()

    def insert_ignoring(self, table: sa.Table) -> Any:
        # Not INSERT IGNORE: that also downgrades real errors to warnings.
        # "id = id" keeps the existing row as it is (VALUES(id) would rename it).
        first = next(iter(table.primary_key.columns))
        return mysql.insert(table).on_duplicate_key_update({first.name: first})

    def upsert(self, table: sa.Table, row: Mapping[str, Any], update: Mapping[str, Any]) -> Any:
        return mysql.insert(table).values(**row).on_duplicate_key_update(**update)

    def unique_holder(self, key: str) -> sa.ColumnElement[bool]:
        return self.jobs.c.active_unique_key == key

    def insert_runs(self, jobs: Sequence[NewJob]) -> Iterable[tuple[bool, Sequence[NewJob]]]:
        """All the jobs in one run.

        PyMySQL sends one multi-row INSERT, so one "now" for all the jobs; MySQL
        returns no ids to tell the kinds apart anyway.
        """
        return [(False, jobs)]

    def claim(self, conn: Connection, ready: Ready, params: Mapping[str, Any]) -> Rows:
        """Three statements of the transaction: lock, update, read back.

        MySQL has neither UPDATE ... RETURNING nor LIMIT inside an IN subquery.
        """
        c = self.jobs.c
        ids = list(conn.execute(self.ready(*ready)).scalars())
        if not ids:
            return []
        conn.execute(
            sa.update(self.jobs).where(c.id.in_(ids)).values(**changes.claimed(self.jobs)), params
        )
        return conn.execute(sa.select(self.jobs).where(c.id.in_(ids))).fetchall()

    def claim_ids(self, conn: Connection, ids: Sequence[str], params: Mapping[str, Any]) -> Rows:
        """Update, then read back: there is no UPDATE ... RETURNING."""
        c = self.jobs.c
        stmt = sa.update(self.jobs).where(c.id.in_(list(ids)), c.status == PENDING)
        conn.execute(stmt.values(**changes.claimed(self.jobs)), params)
        return conn.execute(sa.select(self.jobs).where(c.id.in_(list(ids)))).fetchall()

    @property
    def lock_namespace(self) -> str:
        """`GET_LOCK` names are server-wide: the database is part of the name."""
        return f"{self.schema or self.engine.url.database or ''}.{self.jobs.name}"

    def try_key_locks(
        self, conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """`GET_LOCK(name, 0)` per key: a short hash, released after the transaction."""
        names = [
            "dbjobq:" + limited.lock_name(self.lock_namespace, kind, key).hex()
            for kind, key in keys
        ]
        calls = ", ".join(f"GET_LOCK(:n{i}, 0)" for i in range(len(names)))
        row = conn.execute(
            sa.text(f"SELECT {calls}"), {f"n{i}": n for i, n in enumerate(names)}
        ).one()
        conn.info.setdefault(_KEY_LOCKS, []).extend(
            n for n, got in zip(names, row, strict=True) if got == 1
        )
        return [pair for pair, got in zip(keys, row, strict=True) if got == 1]

    def update_leases(
        self, conn: Connection, leases: Leases, change: LeaseChange
    ) -> Iterable[tuple[str, Any]]:
        """Lock the held rows, then update them: there is no UPDATE ... RETURNING."""
        c = self.jobs.c
        held_now = sa.and_(c.status == RUNNING, sa.tuple_(c.id, c.lease_token).in_(leases))
        locked = sa.select(c.id, c.children).where(held_now).with_for_update()
        found = [(row[0], row[1]) for row in conn.execute(locked)]
        if found:
            ids = [job_id for job_id, _ in found]
            stmt = sa.update(self.jobs).where(c.id.in_(ids), held_now).values(**change.values)
            conn.execute(stmt, change.params or {})
        return found

    # -- schema -----------------------------------------------------------------------

    @contextlib.contextmanager
    def schema_lock(self, conn: Connection) -> Iterator[object]:
        """DDL commits implicitly in MySQL, so a session lock does the serialising."""
        name = f"dbjobq:{self.schema}:{self.table_prefix}"
        got = conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": name}).scalar()
        if got != 1:
            raise StorageError("timed out waiting for another process creating the tables")
        try:
            yield None
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})

    def before_create(self, conn: Connection) -> None:
        """Give every table charset utf8mb4 and the binary no-pad collation.

        Whatever the server's or database's defaults are.
        """
        self._collation = collation_for(
            bool(getattr(conn.dialect, "is_mariadb", False)), conn.dialect.server_version_info
        )
        for table in self.metadata.sorted_tables:
            options = table.dialect_options["mysql"]
            options["charset"] = CHARSET
            options["collate"] = self._collation

    def after_create(self, conn: Connection) -> None:
        migrate.upgrade_collation(
            conn, self.metadata, self.schema, CHARSET, self._collation, self.upgrade_lock_wait
        )
        migrate.waiting_on_mysql(conn, self.jobs, self.schema, self.upgrade_lock_wait)
