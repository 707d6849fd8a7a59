"""Enqueue inside the application's own transaction: the job exists iff it commits."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbjobq import ConfigurationError, JobQueue, JobSpec, Worker
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage

from .conftest import StorageConfig
from .helpers import wait_until


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_queue(request: pytest.FixtureRequest) -> JobQueue:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{request.param}_storage")
    return JobQueue(storage)


def app_table(queue: JobQueue) -> sa.Table:
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    table = sa.Table(
        f"{storage.table_prefix}users",
        sa.MetaData(schema=storage.schema),
        sa.Column("id", sa.Integer, primary_key=True),
    )
    with storage.engine.begin() as conn:
        table.create(conn)
    return table


def test_a_rolled_back_transaction_leaves_no_job(sql_queue: JobQueue) -> None:
    users = app_table(sql_queue)
    engine = sql_queue.storage.engine  # type: ignore[attr-defined]
    conn = engine.connect()
    transaction = conn.begin()
    conn.execute(users.insert().values(id=1))
    job_id = sql_queue.enqueue("welcome", {"user": 1}, connection=conn)
    transaction.rollback()  # the request failed after the enqueue
    conn.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 0
    assert sql_queue.list_jobs() == []
    assert job_id  # an id was handed out, but no job exists


def test_a_committed_transaction_has_its_jobs_and_wakes_workers(sql_queue: JobQueue) -> None:
    users = app_table(sql_queue)
    engine = sql_queue.storage.engine  # type: ignore[attr-defined]
    sql_queue.register("welcome", lambda ctx: f"hello {ctx.payload['user']}")
    worker = Worker(sql_queue, poll_interval=30, max_poll_interval=30)
    worker.start()
    try:
        wait_until(lambda: worker._idle, what="worker to go idle")
        with engine.begin() as conn:
            conn.execute(users.insert().values(id=2))
            ids = sql_queue.enqueue_many(
                [JobSpec(type="welcome", payload={"user": 2})], connection=conn
            )
        wait_until(lambda: sql_queue.get_job(ids[0]).status.is_finished, timeout=10)
    finally:
        worker.stop()
    assert sql_queue.get_job(ids[0]).result == "hello 2"


def test_a_large_batch_follows_the_transaction(sql_queue: JobQueue) -> None:
    """Big batches take another road on PostgreSQL (COPY); the transaction still rules."""
    engine = sql_queue.storage.engine  # type: ignore[attr-defined]
    specs = [JobSpec(type="bulk", payload={"n": n}) for n in range(200)]
    with engine.connect() as conn:
        transaction = conn.begin()
        sql_queue.enqueue_many(specs, connection=conn)
        transaction.rollback()
    assert sql_queue.list_jobs(limit=None) == []
    with engine.begin() as conn:
        ids = sql_queue.enqueue_many(specs, connection=conn)
    stored = sql_queue.list_jobs(limit=None)
    assert [j.id for j in stored] == ids
    assert [j.payload["n"] for j in stored] == list(range(200))


def test_an_orm_session_can_be_joined(sql_queue: JobQueue) -> None:
    users = app_table(sql_queue)
    engine = sql_queue.storage.engine  # type: ignore[attr-defined]
    with Session(engine) as session, session.begin():
        session.execute(users.insert().values(id=3))
        job_id = sql_queue.enqueue("welcome", {"user": 3}, connection=session)
    assert sql_queue.get_job(job_id).payload == {"user": 3}


def test_unique_keys_hold_inside_a_transaction(sql_queue: JobQueue) -> None:
    engine = sql_queue.storage.engine  # type: ignore[attr-defined]
    first = sql_queue.enqueue("t", unique_key="k")
    with engine.begin() as conn:
        assert sql_queue.enqueue("t", unique_key="k", connection=conn) == first


def test_joining_needs_an_open_transaction_on_the_same_kind_of_database(
    sqlite_storage: SQLAlchemyStorage, sqlite_config: StorageConfig
) -> None:
    queue = JobQueue(sqlite_storage)
    with sqlite_storage.engine.connect() as conn, pytest.raises(ConfigurationError, match="begin"):
        queue.enqueue("t", connection=conn)
    with pytest.raises(ConfigurationError, match="Connection or Session"):
        queue.enqueue("t", connection="not a connection")
    with pytest.raises(ConfigurationError, match="cannot join"):
        JobQueue(MemoryStorage()).enqueue("t", connection=object())


def test_on_sqlite_the_tables_must_exist_before_joining(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    queue = JobQueue(engine)
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="initialize"):
        queue.enqueue("t", connection=conn)
    queue.initialize()
    with engine.begin() as conn:
        job_id = queue.enqueue("t", connection=conn)
    assert queue.get_job(job_id).type == "t"
