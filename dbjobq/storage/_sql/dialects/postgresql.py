"""PostgreSQL: autocommitted single statements, COPY for bulk enqueues, LISTEN/NOTIFY."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from dbjobq.job import NewJob
from dbjobq.storage._sql import limited, migrate
from dbjobq.storage._sql.changes import LeaseChange
from dbjobq.storage._sql.dialects.base import Dialect, Leases
from dbjobq.storage._sql.engine import EngineSettings, driver_error
from dbjobq.storage._sql.notify import PostgresListener, Watcher
from dbjobq.storage._sql.rows import INSERT_COLUMNS, insert_row
from dbjobq.storage._sql.schema import (
    PENDING,
    RUNNING,
    WAITING_INDEXES,
    db_now,
    db_now_plus,
)

_TRY_LOCKS = sa.text(
    "SELECT k FROM unnest(CAST(:k_ids AS bigint[])) AS k WHERE pg_try_advisory_xact_lock(k)"
).bindparams(sa.bindparam("k_ids", type_=postgresql.ARRAY(sa.BigInteger)))

COPY_FROM = 64  # jobs per insert from which psycopg inserts through COPY

# Bulk enqueue: COPY into this session's staging table, then one INSERT ... SELECT
# that computes the times and skips clashing ids like every insert.
_STAGE_TYPES = {"priority": "integer", "max_retries": "integer", "run_at": "timestamptz"}
_STAGE_TYPES.update(delay="double precision", timeout="double precision")
_STAGE_COLUMNS = [(name, _STAGE_TYPES.get(name, "text")) for name in INSERT_COLUMNS]
_STAGE = sa.table(
    "dbjobq_stage", *(sa.column(name) for name, _ in _STAGE_COLUMNS), schema="pg_temp"
)
_CREATE_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS dbjobq_stage ("
    + ", ".join(f"{name} {kind}" for name, kind in _STAGE_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)


class PostgreSQLDialect(Dialect):
    """PostgreSQL through psycopg 3 (another driver works, without COPY and LISTEN)."""

    backends = ("postgresql",)
    default_driver = "psycopg"
    extra = "postgres"
    module = "psycopg"
    upgrade_lock_wait = 5.0

    @classmethod
    def configure(cls, settings: EngineSettings) -> None:
        super().configure(settings)
        url, connect_args = settings.url, settings.connect_args
        # No pool_pre_ping: a ping per checkout doubles the round trips of every
        # operation. A connection found dead is invalidated and the operation
        # retried, which covers the same ground.
        if url.get_driver_name() == "psycopg":
            connect_args.setdefault("connect_timeout", 10)
            if "options" not in url.query:
                # Timestamps then arrive in UTC already (psycopg's own timezone.utc),
                # which saves converting six per claimed job. Values are unchanged:
                # timestamptz is an instant whatever the session's zone.
                connect_args.setdefault("options", "-c TimeZone=UTC")

    def __init__(self, engine: Engine, *, schema: str | None, table_prefix: str) -> None:
        super().__init__(engine, schema=schema, table_prefix=table_prefix)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._psycopg = engine.dialect.driver == "psycopg"
        self._copy: Any = None

    @contextlib.contextmanager
    def transaction(self, write: bool, single: bool) -> Iterator[Connection]:
        """Run one statement in autocommit mode.

        One round trip instead of three (BEGIN, the statement, COMMIT). Every
        PostgreSQL route is one statement where the storage says `single`.
        """
        if not single:
            with super().transaction(write, single) as conn:
                yield conn
            return
        with self._autocommit.connect() as conn:
            yield conn

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    # -- COPY -------------------------------------------------------------------------

    def insert_plain(self, conn: Connection, jobs: Sequence[NewJob]) -> None:
        """Many jobs go through COPY: several times faster than an executemany.

        COPY fills a temporary staging table (emptied at commit); one INSERT ...
        SELECT then moves the rows into the jobs table with the database's "now",
        skipping ids already there (a retry of an insert whose commit was not
        acknowledged), as every insert does. ON CONFLICT checks each row against
        the primary key as it goes in: an anti-join (NOT EXISTS) was planned as a
        hash of the whole jobs table, so bulk enqueues slowed down as finished jobs
        piled up.
        """
        if len(jobs) < COPY_FROM or not self._psycopg:
            super().insert_plain(conn, jobs)
            return
        dbapi_connection: Any = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_CREATE_STAGE)
            with cursor.copy("COPY pg_temp.dbjobq_stage FROM STDIN") as copy:
                for job in jobs:
                    copy.write_row(insert_row(job))
        except self.engine.dialect.loaded_dbapi.Error as error:
            # As SQLAlchemy reports the errors of statements it runs itself.
            gone = self.engine.dialect.is_disconnect(error, dbapi_connection, cursor)
            if gone:
                conn.invalidate()
            raise driver_error(self.engine, "COPY", None, error, invalidated=gone) from error
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone
                cursor.close()
        conn.execute(self._copy_statement())

    def _copy_statement(self) -> Any:
        if self._copy is None:
            c, s = self.jobs.c, _STAGE.c
            self._copy = (
                postgresql.insert(self.jobs)
                .from_select(
                    [
                        *("id", "type", "queue", "status", "priority", "attempts", "max_retries"),
                        *("run_at", "created_at", "updated_at", "timeout", "payload", "meta"),
                        *("unique_key", "concurrency_key", "group_id", "correlation_id"),
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
                        s.unique_key,
                        s.concurrency_key,
                        s.group_id,
                        s.correlation_id,
                    ),
                )
                .on_conflict_do_nothing()
            )
        return self._copy

    # -- leases -----------------------------------------------------------------------

    def update_leases(
        self, conn: Connection, leases: Leases, change: LeaseChange
    ) -> Iterable[tuple[str, Any]]:
        """Pass the leases as two arrays.

        So the statement's text is the same for any number of jobs: the driver
        converts and prepares it once.
        """
        c = self.jobs.c
        ids = ",".join(job_id for job_id, _ in leases)
        tokens = ",".join(token for _, token in leases)
        # Two strings split by the database: a driver dumps a list element by
        # element in Python. Ids and tokens hold no commas, but if one did...
        joined = ids.count(",") == tokens.count(",") == len(leases) - 1
        key = (change.tag, joined)
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
                sa.update(self.jobs)
                .where(c.id == held.c.id, c.lease_token == held.c.token, c.status == RUNNING)
                .values(**change.values)
                .returning(c.id, c.children)
            )
        given: dict[str, Any] = (
            {"l_ids": ids, "l_tokens": tokens}
            if joined
            else {"l_ids": [i for i, _ in leases], "l_tokens": [t for _, t in leases]}
        )
        rows = conn.execute(stmt, {**given, **(change.params or {})})
        return [(row[0], row[1]) for row in rows]

    # -- limited claims ---------------------------------------------------------------

    def try_key_locks(
        self, conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """`pg_try_advisory_xact_lock` on a 64-bit hash of each key.

        Held until the transaction ends, so it works behind PgBouncer in
        transaction pooling mode. Advisory locks are per database already.
        """
        ids = {
            int.from_bytes(limited.lock_name(self.lock_namespace, kind, key)[:8], signed=True): (
                kind,
                key,
            )
            for kind, key in keys
        }
        got = conn.execute(_TRY_LOCKS, {"k_ids": list(ids)}).scalars()
        return [ids[i] for i in got]

    # -- schema -----------------------------------------------------------------------

    @contextlib.contextmanager
    def schema_lock(self, conn: Connection) -> Iterator[object]:
        """Take an advisory lock for this table set until commit.

        Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's
        catalogs; the lock serialises first start-ups.
        """
        key = zlib.crc32(f"dbjobq:{self.schema}:{self.table_prefix}".encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        yield None  # released at commit

    def before_create(self, conn: Connection) -> None:
        if self.schema is not None:
            conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))

    def after_create(self, conn: Connection) -> None:
        self._create_notify_trigger(conn)
        self._create_finished_trigger(conn)
        query = sa.text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = coalesce(:s, current_schema()) AND indexname IN :n"
        ).bindparams(sa.bindparam("n", expanding=True))
        name = self.jobs.name
        waiting = tuple(suffix.removeprefix("jobs_") for suffix in WAITING_INDEXES)
        suffixes = ("finished", *waiting)
        params = {"s": self.schema, "n": [f"{name}_{suffix}" for suffix in suffixes]}
        found = {str(row[0]): str(row[1]) for row in conn.execute(query, params)}
        lock_wait = self.upgrade_lock_wait
        if migrate.finished_index(self.jobs, found.get(f"{name}_finished")) is not None:
            migrate.rebuild_index_online(conn, self.jobs, self.schema, lock_wait)
        for suffix in suffixes[1:]:
            if migrate.lacks_waiting(found.get(f"{name}_{suffix}")):
                why = "to count waiting jobs as unfinished"
                migrate.rebuild_index_online(conn, self.jobs, self.schema, lock_wait, suffix, why)

    def _create_notify_trigger(self, conn: Connection) -> None:
        """NOTIFY the table set's channel after every INSERT statement."""
        jobs = self.jobs.name
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
            f"$$ BEGIN PERFORM pg_notify('{self.channel}', ''); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            f'CREATE TRIGGER "{jobs}_notify" AFTER INSERT ON {qualified} '
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )

    def _create_finished_trigger(self, conn: Connection) -> None:
        """NOTIFY the finished channel when a job moves into a finished state.

        A row trigger with a `WHEN` clause: PostgreSQL evaluates the clause itself,
        so the function runs only for rows that finish, never for claims or
        heartbeats. Identical notifications of one transaction are sent as one, so
        a batch of completions (`complete_many`) costs a single NOTIFY.
        """
        jobs = self.jobs.name
        name = f"{jobs}_finished_notify"
        qualified = f'"{self.schema}"."{jobs}"' if self.schema else f'"{jobs}"'
        function = f'"{self.schema}"."{name}"' if self.schema else f'"{name}"'
        exists = conn.execute(
            sa.text(
                "SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = "
                "CAST(:table AS regclass)"
            ),
            {"name": name, "table": qualified},
        ).first()
        if exists:
            return
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{self.finished_channel}', ''); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            f'CREATE TRIGGER "{name}" AFTER UPDATE OF status ON {qualified} FOR EACH ROW '
            "WHEN (NEW.status IN ('completed', 'failed', 'cancelled') "
            f"AND OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION {function}()"
        )

    # -- wake-ups ---------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this table set."""
        name = f"{self.schema or ''}.{self.table_prefix}jobs"
        return f"dbjobq_{zlib.crc32(name.encode()):08x}"

    @property
    def finished_channel(self) -> str:
        """The NOTIFY channel of this table set's finished jobs."""
        return f"{self.channel}_finished"

    @property
    def can_notify(self) -> bool:
        """LISTEN needs psycopg 3's own connection."""
        return self._psycopg

    def announce(self, conn: Connection) -> None:
        """NOTIFY the channel the insert trigger notifies (delivered at commit)."""
        conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})

    def watcher(self) -> Watcher | None:
        if not self._psycopg:
            return None
        engine = self.engine

        def connect() -> Any:
            pooled = engine.raw_connection()
            conn = pooled.driver_connection
            pooled.detach()  # a connection of its own, for as long as it listens
            return conn

        return PostgresListener(connect, self.channel, self.finished_channel)
