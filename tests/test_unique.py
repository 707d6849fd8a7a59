"""Unique keys through the queue: unique_for, on_conflict, insert and Insertion."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import (
    Concurrency,
    ConfigurationError,
    DuplicateJobError,
    Insertion,
    InvalidJobError,
    JobQueue,
    JobSpec,
)
from dbjobq.job import OnConflict
from dbjobq.storage import Capabilities, MemoryStorage, SQLAlchemyStorage
from dbjobq.storage._sql.schema import UNIQUE_FINISHED_INDEX

from .conftest import BACKENDS, StorageConfig

SQL_BACKENDS = ["sqlite", "postgres", "mysql"]


@pytest.fixture(params=BACKENDS)
def any_queue(request: pytest.FixtureRequest) -> JobQueue:
    return JobQueue(request.getfixturevalue(f"{request.param}_storage"))


@pytest.fixture(params=SQL_BACKENDS)
def sql_queue(request: pytest.FixtureRequest) -> JobQueue:
    return JobQueue(request.getfixturevalue(f"{request.param}_storage"))


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def run_one(queue: JobQueue, *, fail: bool = False) -> str:
    """Claim the one due job and complete (or fail) it; its id."""
    (job,) = queue.storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
    token = job.lease_token or ""
    if fail:
        assert queue.storage.fail(job.id, token, error="boom", retry_in=None)
    else:
        assert queue.storage.complete(job.id, token, result=None)
    return job.id


# -- checking the arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"unique_for": 60}, "unique_for needs a unique_key"),
        ({"on_conflict": "raise"}, "on_conflict='raise' needs a unique_key"),
        ({"on_conflict": "replace"}, "on_conflict='replace' needs a unique_key"),
        ({"unique_key": "k", "on_conflict": "update"}, "on_conflict must be one of"),
        ({"unique_key": "k", "on_conflict": None}, "on_conflict must be one of"),
        ({"unique_key": "k", "unique_for": 0}, "unique_for must be a finite number more"),
        ({"unique_key": "k", "unique_for": -1}, "unique_for must be a finite number more"),
        ({"unique_key": "k", "unique_for": math.nan}, "unique_for must be a finite"),
        ({"unique_key": "k", "unique_for": True}, "unique_for must be a number"),
        ({"unique_key": "k", "unique_for": "60"}, "unique_for must be a number"),
        ({"unique_key": "k", "unique_for": 1e12}, "unique_for must be at most 100 years"),
    ],
)
def test_bad_unique_rules_are_refused_and_nothing_is_written(
    fields: dict[str, Any], message: str
) -> None:
    queue = JobQueue(MemoryStorage())
    with pytest.raises(InvalidJobError, match=message):
        queue.enqueue("t", **fields)
    with pytest.raises(InvalidJobError, match=message):
        queue.insert("t", **fields)
    with pytest.raises(InvalidJobError, match=f"job 1: {message}"):
        queue.insert_many([JobSpec(type="t"), JobSpec(type="t", **fields)])
    assert queue.list_jobs() == []


def test_a_backend_without_unique_rules_refuses_them_and_writes_nothing() -> None:
    class Plain(MemoryStorage):
        capabilities = Capabilities(release=True)

    queue = JobQueue(Plain())
    with pytest.raises(ConfigurationError, match="unique_for needs a backend"):
        queue.enqueue("t", unique_key="k", unique_for=60)
    with pytest.raises(ConfigurationError, match="on_conflict needs a backend"):
        queue.insert_many(
            [JobSpec(type="t"), JobSpec(type="t", unique_key="k", on_conflict="raise")]
        )
    assert queue.list_jobs() == []
    # Today's rule still works there, and insert tells the two apart.
    first = queue.insert("t", unique_key="k")
    assert first.inserted
    assert queue.insert("t", unique_key="k", on_conflict="return") == Insertion(first.id, False)


def test_unique_for_takes_a_timedelta() -> None:
    clock = FakeClock()
    queue = JobQueue(MemoryStorage(clock=clock))
    old = queue.enqueue("t", unique_key="k")
    run_one(queue)
    clock.now += timedelta(minutes=59)
    assert queue.insert("t", unique_key="k", unique_for=timedelta(hours=1)) == Insertion(old, False)


# -- the window, on a clock the test moves -------------------------------------------


def test_the_window_holds_less_than_unique_for_seconds_after_the_finish() -> None:
    clock = FakeClock()
    queue = JobQueue(MemoryStorage(clock=clock))
    old = queue.enqueue("t", unique_key="k")
    run_one(queue, fail=True)
    clock.now += timedelta(seconds=59.999)
    assert queue.enqueue("t", unique_key="k", unique_for=60) == old
    clock.now += timedelta(milliseconds=1)  # exactly 60 s after: no longer "less than"
    new = queue.insert("t", unique_key="k", unique_for=60)
    assert new.inserted
    assert queue.get_job(new.id).status == "pending"


# -- insert and Insertion -------------------------------------------------------------


def test_insert_tells_a_new_job_from_a_duplicate(any_queue: JobQueue) -> None:
    first = any_queue.insert("t", {"n": 1}, unique_key="k")
    assert first.inserted
    assert any_queue.get_job(first.id).payload == {"n": 1}
    again = any_queue.insert("t", {"n": 2}, unique_key="k")
    assert again == Insertion(first.id, False)
    plain = any_queue.insert("t")
    assert plain.inserted and plain.id != first.id
    assert any_queue.enqueue("t", unique_key="k") == first.id


def test_insert_many_reports_each_job(any_queue: JobQueue) -> None:
    held = any_queue.enqueue("t", unique_key="held")
    result = any_queue.insert_many(
        [
            JobSpec(type="t"),
            JobSpec(type="t", unique_key="held"),
            JobSpec(type="t", unique_key="new"),
            JobSpec(type="t", unique_key="new", on_conflict="replace", payload={"v": 2}),
        ]
    )
    assert [r.inserted for r in result] == [True, False, True, False]
    assert result[1].id == held
    assert result[3].id == result[2].id
    assert any_queue.get_job(result[2].id).payload == {"v": 2}
    assert any_queue.enqueue_many([JobSpec(type="t", unique_key="held")]) == [held]


def test_insertion_is_frozen() -> None:
    insertion = Insertion("a", True)
    with pytest.raises(AttributeError):
        insertion.inserted = False  # type: ignore[misc]


# -- conflict rules through the queue ------------------------------------------------


def test_raise_carries_the_holder_and_enqueue_many_writes_nothing(any_queue: JobQueue) -> None:
    holder = any_queue.enqueue("t", unique_key="k")
    with pytest.raises(DuplicateJobError) as raised:
        any_queue.enqueue("t", unique_key="k", on_conflict="raise")
    assert (raised.value.job_id, raised.value.unique_key) == (holder, "k")
    specs = [JobSpec(type="a"), JobSpec(type="b", unique_key="k", on_conflict="raise")]
    with pytest.raises(DuplicateJobError):
        any_queue.enqueue_many(specs)
    assert [j.id for j in any_queue.list_jobs()] == [holder]


def test_replace_takes_the_new_delay_and_recomputes_the_concurrency_key(
    any_queue: JobQueue,
) -> None:
    any_queue.register(
        "sync", lambda ctx: None, concurrency=Concurrency(1, key=lambda p: p["account"])
    )
    holder = any_queue.enqueue("sync", {"account": "a"}, unique_key="sync", delay=10)
    before = any_queue.get_job(holder)
    assert before.concurrency_key == "sync:a"
    got = any_queue.insert(
        "sync", {"account": "b"}, unique_key="sync", on_conflict="replace", delay=7200
    )
    assert got == Insertion(holder, False)
    after = any_queue.get_job(holder)
    assert (after.payload, after.concurrency_key) == ({"account": "b"}, "sync:b")
    assert after.run_at >= before.run_at + timedelta(seconds=7000)


def test_replace_of_a_running_job_changes_nothing(any_queue: JobQueue) -> None:
    holder = any_queue.enqueue("t", {"v": 1}, unique_key="k")
    (running,) = any_queue.storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
    got = any_queue.insert("t", {"v": 2}, unique_key="k", on_conflict="replace")
    assert got == Insertion(holder, False)
    assert any_queue.get_job(holder) == running


# -- SQL: the application's transaction, threads, the index ---------------------------


def jobs_table_users(queue: JobQueue) -> tuple[SQLAlchemyStorage, sa.Table]:
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    users = sa.Table(
        f"{storage.table_prefix}users",
        sa.MetaData(schema=storage.schema),
        sa.Column("id", sa.Integer, primary_key=True),
    )
    with storage.engine.begin() as conn:
        users.create(conn)
    return storage, users


def test_raise_in_the_applications_transaction_leaves_it_usable(sql_queue: JobQueue) -> None:
    storage, users = jobs_table_users(sql_queue)
    holder = sql_queue.enqueue("t", unique_key="k")
    with storage.engine.connect() as conn, conn.begin():
        conn.execute(users.insert().values(id=1))
        specs = [JobSpec(type="a"), JobSpec(type="t", unique_key="k", on_conflict="raise")]
        with pytest.raises(DuplicateJobError) as raised:
            sql_queue.insert_many(specs, connection=conn)
        assert raised.value.job_id == holder
        conn.execute(users.insert().values(id=2))  # the transaction goes on
        fresh = sql_queue.insert("t", unique_key="fresh", on_conflict="raise", connection=conn)
    assert fresh.inserted
    with storage.engine.connect() as conn:
        assert conn.execute(sa.select(users.c.id).order_by(users.c.id)).scalars().all() == [1, 2]
    assert sorted(j.id for j in sql_queue.list_jobs()) == sorted([holder, fresh.id])


def test_replace_in_the_applications_transaction_goes_with_it(sql_queue: JobQueue) -> None:
    storage, _ = jobs_table_users(sql_queue)
    holder = sql_queue.enqueue("t", {"v": 1}, unique_key="k")
    with storage.engine.connect() as conn:
        with conn.begin() as transaction:
            got = sql_queue.insert(
                "t", {"v": 2}, unique_key="k", on_conflict="replace", connection=conn
            )
            assert got == Insertion(holder, False)
            transaction.rollback()
        assert sql_queue.get_job(holder).payload == {"v": 1}
        with conn.begin():
            sql_queue.enqueue("t", {"v": 3}, unique_key="k", on_conflict="replace", connection=conn)
    assert sql_queue.get_job(holder).payload == {"v": 3}


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
@pytest.mark.parametrize("rule", ["return", "raise", "replace"])
def test_queues_on_their_own_pools_race_to_one_job(
    request: pytest.FixtureRequest, backend: str, rule: OnConflict
) -> None:
    """Eight threads, each with its own queue and connection pool, insert one key."""
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    request.getfixturevalue(f"{backend}_storage")  # the tables, dropped afterwards
    queues = [JobQueue(config.open()) for _ in range(8)]
    barrier = threading.Barrier(len(queues))
    results: list[Insertion] = []
    held: list[str] = []
    errors: list[BaseException] = []

    def race(n: int) -> None:
        try:
            barrier.wait()
            results.append(
                queues[n].insert("t", {"n": n}, unique_key="race", unique_for=60, on_conflict=rule)
            )
        except DuplicateJobError as error:
            held.append(error.job_id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(queues))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        stored = queues[0].list_jobs()
        assert len(stored) == 1
        assert [r.id for r in results if r.inserted] == [stored[0].id]
        assert {r.id for r in results} | set(held) == {stored[0].id}
        assert len(results) + len(held) == len(queues)
        if rule == "raise":
            assert len(held) == len(queues) - 1
    finally:
        for queue in queues:
            queue.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_tables_of_layout_4_gain_the_unique_finished_index(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    name = f"{config.table_prefix}{UNIQUE_FINISHED_INDEX}"
    (index,) = (i for i in storage._jobs.indexes if i.name == name)
    with storage.engine.begin() as conn:
        index.drop(conn)
        conn.execute(sa.update(storage._version).values(version=4))
    assert name not in index_names(storage)
    for _ in range(2):  # the second start finds nothing left to do
        new = config.open()
        new.initialize()
        assert name in index_names(new)
        with new.engine.connect() as conn:
            assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [5]
        new.close()


def index_names(storage: SQLAlchemyStorage) -> set[str]:
    with storage.engine.connect() as conn:
        found = sa.inspect(conn).get_indexes(storage._jobs.name, schema=storage.schema)
    return {str(index["name"]) for index in found}


def test_the_window_lookup_uses_its_index_on_sqlite(sqlite_storage: SQLAlchemyStorage) -> None:
    from dbjobq.storage._sql import unique

    dialect = sqlite_storage._dialect
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "finished_at >" in statement:
            captured.append((statement, parameters))

    sa.event.listen(sqlite_storage.engine, "before_cursor_execute", capture)
    try:
        with dialect.transaction(False, False) as conn:
            assert unique.find_holder(dialect, conn, "k", 60.0) is None
            ((statement, parameters),) = captured
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            details = " ".join(str(row[-1]) for row in plan)
    finally:
        sa.event.remove(sqlite_storage.engine, "before_cursor_execute", capture)
    assert f"{sqlite_storage.table_prefix}{UNIQUE_FINISHED_INDEX}" in details


RACER = """
import json, os, sys, time
from dbjobq import DuplicateJobError, JobQueue
from dbjobq.storage import SQLAlchemyStorage

url, prefix, schema, go = sys.argv[1:5]
queue = JobQueue(SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None))
queue.initialize()
print("ready", flush=True)
while not os.path.exists(go):  # all processes start their insert together
    time.sleep(0.001)
try:
    got = queue.insert("t", {"pid": os.getpid()}, unique_key="race", unique_for=60,
                       on_conflict="raise")
    print(json.dumps({"id": got.id, "inserted": got.inserted}))
except DuplicateJobError as error:
    print(json.dumps({"id": error.job_id, "raised": True}))
queue.close()
"""


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_processes_racing_with_raise_leave_one_job_and_one_winner(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    go = tmp_path / "go"
    args = [config.url, config.table_prefix, config.schema or "", str(go)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        go.touch()
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    stored = storage.list_jobs()
    assert len(stored) == 1
    assert [o["id"] for o in outcomes if o.get("inserted")] == [stored[0].id]
    assert sum(1 for o in outcomes if o.get("raised")) == 3
    assert {o["id"] for o in outcomes} == {stored[0].id}
