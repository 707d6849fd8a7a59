"""What only the SQL backend does: schema, SQLite locking, PostgreSQL plans, lost connections."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import (
    ConfigurationError,
    JobContext,
    JobQueue,
    JobSpec,
    JobStatus,
    StorageError,
    Worker,
)
from dbjobq._urls import mask_url
from dbjobq.storage import SQLAlchemyStorage
from dbjobq.storage._sql.dialects.mysql import collation_for as mysql_collation
from dbjobq.storage._sql.schema import SCHEMA_VERSION, build_tables
from dbjobq.testing import make_job

from .conftest import StorageConfig
from .helpers import wait_until


def statements_of(storage: SQLAlchemyStorage) -> list[str]:
    seen: list[str] = []
    sa.event.listen(
        storage.engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt)
    )
    return seen


def claim_statement(storage: SQLAlchemyStorage) -> str:
    seen = statements_of(storage)
    storage.claim(queues=["default"], worker_id="w", lease_seconds=60, types={"task"})
    return next(s for s in seen if "UPDATE" in s)


# -- SQLite ------------------------------------------------------------------------------


def test_sqlite_file_is_in_wal_mode(sqlite_storage: SQLAlchemyStorage) -> None:
    with sqlite_storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def sqlite_statements(storage: SQLAlchemyStorage) -> list[str]:
    """Every statement SQLite runs from now on, whoever sends it (the driver's trace)."""
    seen: list[str] = []
    storage.engine.dispose()
    sa.event.listen(
        storage.engine, "connect", lambda dbapi, record: dbapi.set_trace_callback(seen.append)
    )
    return seen


@pytest.mark.parametrize("jobs", [1, 3], ids=["one job", "several"])
def test_sqlite_writes_begin_immediate_and_reads_do_not(
    sqlite_storage: SQLAlchemyStorage, jobs: int
) -> None:
    seen = sqlite_statements(sqlite_storage)
    ids = sqlite_storage.enqueue([make_job() for _ in range(jobs)])
    assert seen[0] == "BEGIN IMMEDIATE"
    assert seen[1].startswith("INSERT INTO") and seen[-1] == "COMMIT"
    seen.clear()
    assert [j.id for j in sqlite_storage.list_jobs()] == ids
    assert seen[0] == "BEGIN"


def claim_plan(storage: SQLAlchemyStorage) -> str:
    """The database's plan for the SELECT that a claim runs."""
    query = storage._dialect.ready(["default"], {"task"}, 1)
    with storage.engine.connect() as conn:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN QUERY PLAN " if storage.engine.dialect.name == "sqlite" else "EXPLAIN "
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql))


def test_sqlite_claim_uses_the_partial_index(sqlite_storage: SQLAlchemyStorage) -> None:
    sqlite_storage.enqueue([make_job()])
    assert "dbjobq_jobs_claim" in claim_plan(sqlite_storage)


def test_sqlite_purge_uses_the_partial_finished_index(sqlite_storage: SQLAlchemyStorage) -> None:
    seen = sqlite_statements(sqlite_storage)
    sqlite_storage.purge(statuses=[JobStatus.COMPLETED], older_than=60, limit=10)
    (select,) = [s for s in seen if s.startswith("SELECT") and "finished_at <" in s]
    with sqlite_storage.engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + select))
    assert "USING INDEX dbjobq_jobs_finished" in plan, plan


def test_sqlite_bulk_enqueue_failing_midway_writes_nothing(
    sqlite_storage: SQLAlchemyStorage,
) -> None:
    table = sqlite_storage._jobs.name
    with sqlite_storage.engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse_150 BEFORE INSERT ON {table} "
            f"WHEN (SELECT count(*) FROM {table}) >= 150 "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    with pytest.raises(StorageError, match="disk says no"):
        sqlite_storage.enqueue([make_job() for _ in range(300)])
    assert sqlite_storage.list_jobs(limit=None) == []
    assert len(sqlite_storage.enqueue([make_job() for _ in range(100)])) == 100


@pytest.mark.parametrize("jobs", [1, 3], ids=["one job", "several"])
def test_sqlite_enqueue_errors_respect_hide_parameters(tmp_path: Path, jobs: int) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}", hide_parameters=True)
    storage = SQLAlchemyStorage(engine)
    storage.initialize()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {storage._jobs.name} "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    with pytest.raises(StorageError, match="disk says no") as caught:
        storage.enqueue([make_job(payload={"password": "hunter2"}) for _ in range(jobs)])
    assert "hunter2" not in str(caught.value.__cause__)
    assert "hidden due to hide_parameters" in str(caught.value.__cause__)
    engine.dispose()


def test_threads_and_a_second_connection_never_see_database_is_locked(
    sqlite_config: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Writers from two storage objects (two pools) and eight threads share one file."""
    first, second = sqlite_config.open(), sqlite_config.open()
    first.initialize()
    second.initialize()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def hammer(storage: SQLAlchemyStorage) -> None:
        try:
            barrier.wait()
            for _ in range(40):
                storage.enqueue([make_job()])
                for job in storage.claim(queues=["default"], worker_id="w", lease_seconds=60):
                    storage.complete(job.id, job.lease_token or "", result=None)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in [first, second] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(first.list_jobs(limit=None)) == 320
    assert "locked" not in caplog.text
    first.close()
    second.close()


def test_in_memory_sqlite_is_shared_by_threads() -> None:
    queue = JobQueue("sqlite://")
    queue.register("t", lambda ctx: ctx.payload["n"])
    ids = queue.enqueue_many(JobSpec(type="t", payload={"n": n}) for n in range(50))
    workers = [Worker(queue, poll_interval=0.01) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: queue.counts()["default"]["completed"] == 50)
    finally:
        for w in workers:
            w.stop()
    assert [queue.get_job(i).result for i in ids] == list(range(50))


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_a_newer_schema_version_is_refused(request: pytest.FixtureRequest, backend: str) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    with storage.engine.begin() as conn:
        conn.execute(sa.update(storage._version).values(version=99))
    fresh = config.open()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        fresh.initialize()
    storage.close()
    fresh.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_tables_of_layout_2_gain_the_paused_queues_table(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    old = config.open()
    old.initialize()
    job = make_job(queue="mail")
    old.enqueue([job])
    with old.engine.begin() as conn:  # as a release of layout 2 left them
        old._dialect.tables.paused.drop(conn)
        conn.execute(sa.update(old._version).values(version=2))
    new = config.open()
    new.initialize()
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]
    assert new.pause_queue("mail") and new.paused_queues() == {"mail"}
    assert new.claim(queues=["mail"], worker_id="w", lease_seconds=60) == []
    assert new.resume_queue("mail")
    assert [j.id for j in new.claim(queues=["mail"], worker_id="w", lease_seconds=60)] == [job.id]
    old.close()
    new.close()


def finished_index_sql(storage: SQLAlchemyStorage) -> str:
    name = f"{storage.table_prefix}jobs_finished"
    with storage.engine.connect() as conn:
        if storage.engine.dialect.name == "postgresql":
            query = "SELECT indexdef FROM pg_indexes WHERE schemaname = :s AND indexname = :n"
            found = conn.execute(sa.text(query), {"s": storage.schema, "n": name}).scalar()
        else:
            query = "SELECT sql FROM sqlite_master WHERE name = :n"
            found = conn.execute(sa.text(query), {"n": name}).scalar()
    assert isinstance(found, str)
    return found


def make_finished_index_full(storage: SQLAlchemyStorage) -> None:
    """Give the tables the full (status, finished_at) index of earlier releases."""
    table = (
        storage._jobs.name if storage.schema is None else f"{storage.schema}.{storage._jobs.name}"
    )
    index = f"{storage.table_prefix}jobs_finished"
    qualified = index if storage.schema is None else f"{storage.schema}.{index}"
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {qualified}")
        conn.exec_driver_sql(f"CREATE INDEX {index} ON {table} (status, finished_at)")
    assert "WHERE" not in finished_index_sql(storage).upper()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_earlier_full_finished_index_is_rebuilt_partial(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    old = config.open()
    old.initialize()
    ids = old.enqueue([make_job() for _ in range(3)])
    (done,) = old.claim(queues=["default"], worker_id="w", lease_seconds=60, types={"task"})
    assert old.complete(done.id, done.lease_token or "", result=None)
    make_finished_index_full(old)

    new = config.open()
    new.initialize()
    assert "finished_at IS NOT NULL" in finished_index_sql(new)
    # The layout version stays: releases that made the full index still start.
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]
    assert sorted(j.id for j in new.list_jobs()) == sorted(ids)
    assert new.purge(statuses=[JobStatus.COMPLETED], older_than=0) == 1
    assert sorted(j.id for j in new.list_jobs()) == sorted(set(ids) - {done.id})
    fresh = config.open()
    fresh.initialize()  # a later start finds nothing to rebuild
    assert "finished_at IS NOT NULL" in finished_index_sql(fresh)
    for storage in (old, new, fresh):
        storage.close()


def test_postgres_index_upgrade_waits_briefly_for_a_busy_table(
    postgres_config: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A long transaction on the jobs table does not stall start-up behind the rebuild."""
    old = postgres_config.open()
    old.initialize()
    make_finished_index_full(old)
    new = postgres_config.open()
    new._dialect.upgrade_lock_wait = 0.2
    with old.engine.connect() as blocker:
        blocker.begin()
        blocker.execute(
            sa.insert(old._jobs).values(
                id="held",
                type="t",
                queue="default",
                status="pending",
                priority=0,
                attempts=0,
                max_retries=0,
                run_at=sa.func.now(),
                created_at=sa.func.now(),
                updated_at=sa.func.now(),
                payload={},
                meta={},
            )
        )  # its row lock on the table conflicts with building an index
        with caplog.at_level(logging.WARNING, logger="dbjobq"):
            new.initialize()  # starts anyway, with the old index
        assert "could not rebuild index" in caplog.text
        assert "WHERE" not in finished_index_sql(new).upper()
        new.enqueue([make_job()])  # the storage works
        blocker.rollback()
    again = postgres_config.open()
    again.initialize()
    assert "finished_at IS NOT NULL" in finished_index_sql(again)
    for storage in (old, new, again):
        storage.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_concurrent_first_use_creates_the_schema_once(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storages = [config.open() for _ in range(6)]
    barrier = threading.Barrier(len(storages))
    errors: list[BaseException] = []

    def init(storage: SQLAlchemyStorage) -> None:
        try:
            barrier.wait()
            storage.initialize()
            storage.enqueue([make_job()])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=init, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(storages[0].list_jobs()) == 6
    with storages[0].engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(storages[0]._version)).scalar() == 1
        )
    for s in storages:
        s.close()


# -- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_bulk_enqueue_again_stores_each_job_once(
    postgres_storage: SQLAlchemyStorage,
) -> None:
    """A big batch (COPY) retried after a lost commit acknowledgement adds nothing,
    even with an id twice in one batch; the insert never scans the table for them."""
    storage = postgres_storage
    seen = statements_of(storage)
    first = [make_job() for _ in range(100)]
    assert storage.enqueue(first) == [j.id for j in first]
    twice = make_job()
    again = [*first[:50], twice, *(make_job() for _ in range(50)), twice]
    assert storage.enqueue(again) == [j.id for j in again]
    assert len(storage.list_jobs(limit=None)) == 151
    moves = [s for s in seen if s.startswith("INSERT") and "dbjobq_stage" in s]
    assert len(moves) == 2 and all("ON CONFLICT DO NOTHING" in s for s in moves), moves
    assert all("EXISTS" not in s for s in moves), moves


def finish_many(storage: SQLAlchemyStorage, n: int, *, finished_at: Any) -> None:
    """Store `n` jobs, then mark every job in the table completed at `finished_at`."""
    storage.enqueue([make_job() for _ in range(n)])
    with storage.engine.begin() as conn:
        conn.execute(sa.update(storage._jobs).values(status="completed", finished_at=finished_at))


def analyze(storage: SQLAlchemyStorage) -> None:
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {storage.schema}.{storage._jobs.name}")


def test_postgres_claim_uses_an_index_however_many_jobs_finished(
    postgres_storage: SQLAlchemyStorage,
) -> None:
    storage = postgres_storage
    finish_many(storage, 20_000, finished_at=sa.func.now())
    storage.enqueue([make_job() for _ in range(10)])
    analyze(storage)
    assert "SKIP LOCKED" in claim_statement(storage)
    plan = claim_plan(storage)
    # The jobs table is read through an index (the paused-queues list is tiny).
    assert f"Seq Scan on {storage._jobs.name}" not in plan, plan
    assert "Index" in plan, plan


def test_postgres_purge_uses_the_partial_finished_index(
    postgres_storage: SQLAlchemyStorage,
) -> None:
    storage = postgres_storage
    spread = sa.func.now() - sa.func.random() * sa.text("interval '2 days'")
    finish_many(storage, 20_000, finished_at=spread)
    analyze(storage)
    sent: list[tuple[str, Any]] = []
    sa.event.listen(
        storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, params, *a: sent.append((statement, params)),
    )
    assert storage.purge(statuses=[JobStatus.COMPLETED], older_than=3600, limit=10) == 10
    select, params = next((st, p) for st, p in sent if st.lstrip().startswith("SELECT"))
    with storage.engine.connect() as conn:
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + select, params).scalars())
    assert f"{storage.table_prefix}jobs_finished" in plan, plan


def test_postgres_survives_killed_connections(
    postgres_storage: SQLAlchemyStorage, caplog: pytest.LogCaptureFixture
) -> None:
    queue = JobQueue(postgres_storage)
    queue.register("t", lambda ctx: "ok")
    ids = queue.enqueue_many(JobSpec(type="t") for _ in range(200))
    admin = sa.create_engine(postgres_storage.engine.url, poolclass=sa.pool.NullPool)
    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.05)
    worker.start()
    killed = 0
    try:
        while killed < 5 and queue.counts()["default"]["completed"] < 150:
            with admin.begin() as conn:
                killed += len(
                    conn.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    ).all()
                )
        assert killed >= 1
        wait_until(lambda: queue.counts()["default"]["completed"] == 200, timeout=60)
        assert worker.is_alive
    finally:
        worker.stop()
        admin.dispose()
    assert {queue.get_job(i).status for i in ids} == {"completed"}


def test_unreachable_database_raises_storage_error_without_the_password() -> None:
    storage = SQLAlchemyStorage(
        "postgresql://postgres:hunter2@127.0.0.1:1/nowhere",
        engine_options={"connect_args": {"connect_timeout": 2}},
    )
    with pytest.raises(StorageError) as info:
        storage.initialize()
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is not None


def test_worker_keeps_running_while_the_database_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SQLite file that vanishes and comes back: the worker logs, backs off, resumes."""
    db = tmp_path / "jobs.db"
    queue = JobQueue(f"sqlite:///{db}")
    done: list[int] = []

    @queue.handler("t")
    def handler(ctx: JobContext) -> None:
        done.append(ctx.payload["n"])

    queue.initialize()
    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.05)
    with caplog.at_level(logging.ERROR, logger="dbjobq"):
        # Make the directory unreadable-by-SQLite: replace the file with a directory.
        queue.storage.close()
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"jobs.db{suffix}").unlink(missing_ok=True)
        db.mkdir()
        worker.start()
        wait_until(lambda: "polling failed" in caplog.text, what="the failure to be logged")
        db.rmdir()
        queue2 = JobQueue(f"sqlite:///{db}")
        queue2.initialize()
        queue2.enqueue("t", {"n": 1})
        wait_until(lambda: done == [1], timeout=20, what="the worker to recover")
        assert worker.is_alive
        worker.stop()
    failures = [r for r in caplog.records if "polling" in r.getMessage()]
    assert 1 <= len(failures) <= 3  # logged once, not once per poll


def test_postgres_batch_updates_take_any_id(postgres_storage: SQLAlchemyStorage) -> None:
    """Batches pass ids joined by commas; an id holding a comma must still work."""
    ids = ["plain-id", "with,comma", "x"]
    postgres_storage.enqueue([make_job(id=job_id) for job_id in ids])
    jobs = postgres_storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=3)
    leases = [(j.id, j.lease_token or "") for j in jobs]
    assert postgres_storage.release_many(leases) == [True, True, True]
    jobs = postgres_storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=3)
    outcomes = [(j.id, j.lease_token or "", {"n": n}) for n, j in enumerate(jobs)]
    assert postgres_storage.complete_many(outcomes) == [True, True, True]
    assert [postgres_storage.get(i).status for i in ids] == [JobStatus.COMPLETED] * 3
    assert postgres_storage.get("with,comma").attempts == 1


# -- MySQL/MariaDB: text compares byte for byte, whatever the database's defaults ------------

# Loose defaults a database may have: latin1 (latin1_swedish_ci: no emoji, no CJK,
# case-insensitive, padding) and a case- and accent-insensitive utf8mb4 collation.
LOOSE_DEFAULTS = {
    "latin1": "CHARACTER SET latin1",
    "unicode_ci": "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
}


@pytest.fixture(params=sorted(LOOSE_DEFAULTS))
def loose_mysql(request: pytest.FixtureRequest) -> Any:
    """A StorageConfig in a database of its own, made with loose default collation."""
    url = os.environ.get("DBJOBQ_TEST_MYSQL_URL") or pytest.skip("set DBJOBQ_TEST_MYSQL_URL")
    name = f"dbjobq_loose_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = SQLAlchemyStorage(url).engine
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} {LOOSE_DEFAULTS[request.param]}")
    yield StorageConfig(url, "dbjobq_", name)
    admin.dispose()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


def text_collations(storage: SQLAlchemyStorage) -> set[tuple[str, str, str]]:
    """(table or table.column, charset, collation) of every dbjobq table and text column."""
    names = [t.name for t in storage._metadata.sorted_tables]
    where = "TABLE_SCHEMA = :s AND TABLE_NAME IN :names"
    query = sa.text(
        "SELECT TABLE_NAME, 'utf8mb4', TABLE_COLLATION FROM information_schema.TABLES "
        f"WHERE {where} UNION SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), "
        f"CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE {where} "
        "AND COLLATION_NAME IS NOT NULL"
    ).bindparams(sa.bindparam("names", expanding=True))
    with storage.engine.connect() as conn:
        rows = conn.execute(query, {"s": storage.schema, "names": names})
        return {(str(a), str(b), str(c)) for a, b, c in rows}


def test_mysql_collation_is_binary_and_does_not_pad_on_each_server() -> None:
    assert mysql_collation(True, (10, 11, 9)) == "utf8mb4_nopad_bin"
    assert mysql_collation(False, (8, 0, 17)) == "utf8mb4_0900_bin"
    assert mysql_collation(False, (8, 4, 3)) == "utf8mb4_0900_bin"
    for old in ((8, 0, 16), (5, 7, 44), None):
        with pytest.raises(ConfigurationError, match=r"MySQL 8\.0\.17"):
            mysql_collation(False, old)


def test_mysql_tables_declare_utf8mb4_nopad_bin_whatever_the_database_default(
    loose_mysql: StorageConfig,
) -> None:
    queue = JobQueue(loose_mysql.open())
    queue.initialize()
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    found = text_collations(storage)
    assert len(found) > 20  # every table and text column
    assert {(charset, collation) for _, charset, collation in found} == {
        ("utf8mb4", "utf8mb4_nopad_bin")
    }
    ran: list[str] = []

    @queue.handler("mail")
    def mail(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    keys = ["user-A", "user-a", "café", "cafe", "k", "k "]
    keyed = [queue.enqueue("mail", unique_key=key) for key in keys]
    assert len(set(keyed)) == len(keys)
    others = [queue.enqueue("MAIL"), queue.enqueue("mail", queue="Default ")]
    emoji = queue.enqueue("mail", {"text": "邮件 🚀"}, unique_key="🔑 キー")
    assert Worker(queue).run_until_empty() == len(keys) + 1
    assert sorted(ran) == sorted([*keyed, emoji])
    for job_id in others:  # never claimed: no handler, no attempt
        job = queue.get_job(job_id)
        assert (job.status, job.attempts) == (JobStatus.PENDING, 0)
    assert queue.get_job(emoji).payload == {"text": "邮件 🚀"}
    queue.close()


def create_tables_the_old_way(config: StorageConfig) -> SQLAlchemyStorage:
    """The tables as earlier releases made them: with the database's default collation."""
    storage = config.open()
    metadata = sa.MetaData(schema=config.schema)
    build_tables(metadata, config.table_prefix, partial_indexes=False)
    with storage.engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(sa.insert(storage._version).values(version=2))
    return storage  # not initialised: it would convert them


def test_mysql_tables_made_the_old_way_are_converted_at_initialize(
    loose_mysql: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    old = create_tables_the_old_way(loose_mysql)
    first = make_job(unique_key="user-A", payload={"text": "é"})
    assert old.enqueue([first]) == [first.id]
    # What the loose collation did: another key taken for the same.
    assert old.enqueue([make_job(unique_key="user-a")]) == [first.id]
    assert ("utf8mb4", "utf8mb4_nopad_bin") not in {(b, c) for _, b, c in text_collations(old)}

    new = loose_mysql.open()
    with caplog.at_level(logging.WARNING, "dbjobq"):
        new.initialize()
    assert "converting table dbjobq_jobs" in caplog.text
    assert {(b, c) for _, b, c in text_collations(new)} == {("utf8mb4", "utf8mb4_nopad_bin")}
    assert new.get(first.id).payload == {"text": "é"}  # rows kept as they were
    other = make_job(unique_key="user-a", type="邮件 🚀")
    assert new.enqueue([other]) == [other.id]
    assert new.enqueue([make_job(unique_key="user-A")]) == [first.id]
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]

    caplog.clear()
    again = loose_mysql.open()
    with caplog.at_level(logging.WARNING, "dbjobq"):
        again.initialize()  # nothing left to convert
    assert "converting" not in caplog.text
    for storage in (old, new, again):
        storage.close()


def test_mysql_collation_upgrade_of_a_busy_table_names_the_fix(
    loose_mysql: StorageConfig,
) -> None:
    """A table that stays locked (a long transaction) is reported, not waited on for ever."""
    old = create_tables_the_old_way(loose_mysql)
    new = loose_mysql.open()
    new._dialect.upgrade_lock_wait = 1
    with old.engine.connect() as busy, busy.begin():
        busy.execute(sa.select(old._jobs.c.id)).all()  # holds the table's metadata lock
        with pytest.raises(ConfigurationError) as info:
            new.initialize()
    message = str(info.value)
    assert "compares text loosely" in message
    assert "CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin" in message
    new.initialize()  # once the table is free, the next start converts it
    assert {(b, c) for _, b, c in text_collations(new)} == {("utf8mb4", "utf8mb4_nopad_bin")}
    old.close()
    new.close()


# -- passwords never show -----------------------------------------------------------------------

SECRET = "hunter2"
# Every form in which SQLAlchemy and the drivers take a password.
PASSWORD_FORMS = [
    "postgresql://postgres:hunter2@127.0.0.1/db",
    "postgresql+psycopg://postgres:hunter2@127.0.0.1:5432/db?sslmode=prefer",
    "postgresql://postgres@127.0.0.1/db?password=hunter2",
    "postgresql://postgres@127.0.0.1/db?sslmode=prefer&password=hunter2&application_name=x",
    "postgresql://127.0.0.1/db?user=postgres&PASSWORD=hunter2",
    "postgresql:///db?host=/run/postgresql&password=hunter2",
    "postgresql://postgres:hunter2@127.0.0.1/db?password=hunter2",
    "postgresql://postgres@127.0.0.1/db?sslpassword=hunter2",
    "postgresql://postgres:hunter2%40x@127.0.0.1/db",
    "postgresql://postgres:hunter2%2Fx%3Ay@127.0.0.1/db",
    "mysql://root:hunter2@127.0.0.1:3306/db",
    "mysql://root@127.0.0.1:3306/db?passwd=hunter2&charset=utf8mb4",
    "mysql+pymysql://root@127.0.0.1/db?password=hunter2",
]


@pytest.mark.parametrize("url", PASSWORD_FORMS)
def test_passwords_never_show_in_repr(url: str) -> None:
    for given in (url, sa.engine.make_url(url)):
        storage = SQLAlchemyStorage(given)
        queue = JobQueue(storage)
        for shown in (repr(storage), str(storage), repr(queue), mask_url(given)):
            assert SECRET not in shown
            assert "***" in shown
        storage.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cr@t-tail@db.example/app", "postgresql://u:***@db.example/app"),
        (
            "postgresql://u:s3cr@t:tail@db.example:5432/app",
            "postgresql://u:***@db.example:5432/app",
        ),
        ("mysql://u:s3cr@t/tail@db.example/app", "mysql://u:***@db.example/app"),
        ("postgresql://u:s3cr?t@h/app?password=s3cr@t", "postgresql://u:***@h/app?password=***"),
        ("postgresql://h/app?password=s3cr@t-tail", "postgresql://h/app?password=***"),
        ("host=h password=s3cr@t-tail user=u", "host=h password=*** user=u"),
        ("sqlite:///jobs.db", "sqlite:///jobs.db"),
        ("mysql://root@127.0.0.1:3306/test", "mysql://root@127.0.0.1:3306/test"),
    ],
)
def test_mask_url_masks_passwords_with_unencoded_characters(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr@t-tail@127.0.0.1/app",  # parsed: password "s3cr", host "t-tail@..."
        "postgresql://u:s3cr@t:tail@127.0.0.1:5432/app",  # the port does not parse
        "mysql://u:s3cr@t-tail@127.0.0.1/app?charset=utf8mb4",
    ],
)
def test_an_unencoded_at_in_a_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SQLAlchemyStorage(url)
    told = "".join(traceback.format_exception(info.value))
    assert "%40" in str(info.value)
    assert "s3cr" not in told and "tail" not in told


def test_the_worker_start_up_log_masks_a_query_password(
    postgres_config: StorageConfig, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(
        "from dbjobq import JobQueue\nfrom dbjobq.storage import MemoryStorage\n"
        "queue = JobQueue(MemoryStorage())\n"
    )
    base = postgres_config.url.rstrip("/")
    url = f"{base}?password={SECRET}&options=-csearch_path%3D{postgres_config.schema}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for log_format in ("text", "json"):
        args = ["worker", "app:queue", "--url", url, "--log-format", log_format]
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbjobq", *args, "--poll-interval", "0.1"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        lines: list[str] = []
        while "worker(s) on" not in (line := proc.stderr.readline()):
            assert line, f"the worker exited: {''.join(lines)}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        told = "".join(lines) + line + out + err
        assert proc.returncode == 0, told
        assert "password=***" in line
        assert SECRET not in told


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cr@t-tail@127.0.0.1/app",
        "postgresql://postgres:s3cr@t:tail@127.0.0.1:5432/app",
        "postgresql://postgres@127.0.0.1:1/app?password=s3cr-tail",
    ],
)
def test_the_command_line_never_prints_a_password(tmp_path: Path, url: str) -> None:
    (tmp_path / "app.py").write_text("from dbjobq import JobQueue\nqueue = JobQueue('sqlite://')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for args in (["stats", "--url", url], ["worker", "app:queue", "--url", url]):
        done = subprocess.run(
            [sys.executable, "-m", "dbjobq", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        told = done.stdout + done.stderr
        assert done.returncode != 0, told
        assert "s3cr" not in told and "tail" not in told, told
