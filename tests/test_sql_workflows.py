"""Workflows on the SQL backends: upgrades, races between last parents, big graphs."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import JobStatus
from dbjobq._contract.concurrency import run_together
from dbjobq.errors import GroupNotFound, InvalidJobError
from dbjobq.job import Job
from dbjobq.storage import SQLAlchemyStorage
from dbjobq.storage._sql import workflows
from dbjobq.storage._sql.schema import (
    CORRELATION_LENGTH,
    SCHEMA_VERSION,
    WORKFLOW_COLUMNS,
    WORKFLOW_INDEXES,
)
from dbjobq.testing import make_job

from .conftest import StorageConfig

SQL_BACKENDS = ["sqlite", "postgres", "mysql"]
HOUR = 3600.0


@pytest.fixture(params=SQL_BACKENDS)
def sql_storage(request: pytest.FixtureRequest) -> SQLAlchemyStorage:
    return request.getfixturevalue(f"{request.param}_storage")  # type: ignore[no-any-return]


def claim_all(storage: SQLAlchemyStorage, count: int, worker: str = "w") -> list[Job]:
    jobs = storage.claim(queues=["default"], worker_id=worker, lease_seconds=HOUR, limit=count)
    assert len(jobs) == count
    return jobs


def claim_ids(storage: SQLAlchemyStorage, ids: set[str], worker: str = "w") -> dict[str, Job]:
    """Claim every due job and return those with these ids (the others completed)."""
    found: dict[str, Job] = {}
    for job in storage.claim(queues=["default"], worker_id=worker, lease_seconds=HOUR, limit=1000):
        if job.id in ids:
            found[job.id] = job
        else:
            assert storage.complete(job.id, job.lease_token or "", result=None)
    assert set(found) == ids
    return found


def status(storage: SQLAlchemyStorage, job_id: str) -> JobStatus:
    return storage.get(job_id).status


# -- the rules, on each SQL backend ------------------------------------------------------


def test_a_child_waits_for_its_parents_and_is_listed_with_them(
    sql_storage: SQLAlchemyStorage,
) -> None:
    a, b = make_job(type="a"), make_job(type="b")
    child = make_job(type="child", depends_on=(a.id, b.id))
    assert sql_storage.enqueue([a, b, child]) == [a.id, b.id, child.id]
    assert status(sql_storage, child.id) is JobStatus.WAITING
    assert [j.id for j in sql_storage.parents(child.id)] == sorted([a.id, b.id])
    assert [j.id for j in sql_storage.children(a.id)] == [child.id]
    held = {j.id: j for j in claim_all(sql_storage, 2)}  # the child is not due
    assert sql_storage.complete(a.id, held[a.id].lease_token or "", result=1)
    assert status(sql_storage, child.id) is JobStatus.WAITING
    assert sql_storage.complete_many([(b.id, held[b.id].lease_token or "", 2)]) == [True]
    assert status(sql_storage, child.id) is JobStatus.PENDING
    assert [j.id for j in claim_all(sql_storage, 1)] == [child.id]


def test_unknown_parents_store_nothing(sql_storage: SQLAlchemyStorage) -> None:
    first = make_job()
    with pytest.raises(InvalidJobError, match="no-such-job"):
        sql_storage.enqueue([first, make_job(depends_on=(first.id, "no-such-job"))])
    later = make_job()
    with pytest.raises(InvalidJobError):  # a later job of the call is no parent
        sql_storage.enqueue([make_job(depends_on=(later.id,)), later])
    assert sql_storage.list_jobs(limit=None) == []


def test_a_parent_deduplicated_by_its_key_stands_for_the_holder(
    sql_storage: SQLAlchemyStorage,
) -> None:
    holder = make_job(unique_key="k")
    sql_storage.enqueue([holder])
    duplicate = make_job(unique_key="k")
    child = make_job(depends_on=(duplicate.id,))
    assert sql_storage.enqueue([duplicate, child]) == [holder.id, child.id]
    assert [j.id for j in sql_storage.parents(child.id)] == [holder.id]
    (job,) = claim_all(sql_storage, 1)
    assert sql_storage.complete(job.id, job.lease_token or "", result=None)
    assert status(sql_storage, child.id) is JobStatus.PENDING


def test_a_parent_deduplicated_within_its_window_is_the_finished_holder(
    sql_storage: SQLAlchemyStorage,
) -> None:
    holder = make_job(unique_key="daily")
    sql_storage.enqueue([holder])
    (held,) = claim_all(sql_storage, 1)
    sql_storage.complete(held.id, held.lease_token or "", result="done")
    again = make_job(unique_key="daily", unique_for=3600.0)
    child = make_job(depends_on=(again.id,))
    assert sql_storage.enqueue([again, child]) == [holder.id, child.id]
    assert status(sql_storage, child.id) is JobStatus.PENDING  # the holder completed
    assert [j.result for j in sql_storage.parents(child.id)] == ["done"]


def test_parents_that_finished_already_decide_at_enqueue(sql_storage: SQLAlchemyStorage) -> None:
    good, bad = make_job(), make_job()
    sql_storage.enqueue([good, bad])
    held = {j.id: j for j in claim_all(sql_storage, 2)}
    sql_storage.complete(good.id, held[good.id].lease_token or "", result=None)
    sql_storage.fail(bad.id, held[bad.id].lease_token or "", error="x", retry_in=None)
    after_good = make_job(depends_on=(good.id,))
    after_bad = make_job(depends_on=(good.id, bad.id))
    anyway = make_job(depends_on=(bad.id,), on_parent_failure="run")
    grandchild = make_job(depends_on=(after_bad.id,))
    sql_storage.enqueue([after_good, after_bad, anyway, grandchild])
    assert status(sql_storage, after_good.id) is JobStatus.PENDING
    cancelled = sql_storage.get(after_bad.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.last_error == f"parent {bad.id} failed"
    assert cancelled.finished_at is not None
    assert status(sql_storage, anyway.id) is JobStatus.PENDING
    assert sql_storage.get(grandchild.id).last_error == f"parent {after_bad.id} was cancelled"


def test_a_waiting_job_holds_its_unique_key_and_can_be_cancelled(
    sql_storage: SQLAlchemyStorage,
) -> None:
    parent = make_job()
    child = make_job(unique_key="once", depends_on=(parent.id,))
    grandchild = make_job(depends_on=(child.id,))
    sql_storage.enqueue([parent, child, grandchild])
    assert sql_storage.enqueue([make_job(unique_key="once")]) == [child.id]
    assert sql_storage.cancel(child.id)
    assert status(sql_storage, grandchild.id) is JobStatus.CANCELLED
    again = make_job(unique_key="once")
    assert sql_storage.enqueue([again]) == [again.id]
    # Retrying the cancelled child makes it pending: it does not wait again.
    sql_storage.cancel(again.id)
    assert sql_storage.retry(child.id)
    assert status(sql_storage, child.id) is JobStatus.PENDING


def test_cascade_cancel_three_levels_deep(sql_storage: SQLAlchemyStorage) -> None:
    root = make_job(type="root")
    one = make_job(depends_on=(root.id,))
    two = [make_job(depends_on=(one.id,)) for _ in range(3)]
    three = make_job(depends_on=tuple(j.id for j in two))
    survivor = make_job(depends_on=(two[0].id,), on_parent_failure="run")
    sql_storage.enqueue([root, one, *two, three, survivor])
    (held,) = claim_all(sql_storage, 1)
    assert sql_storage.fail(root.id, held.lease_token or "", error="boom", retry_in=None)
    assert sql_storage.get(one.id).last_error == f"parent {root.id} failed"
    for job in two:
        assert sql_storage.get(job.id).last_error == f"parent {one.id} was cancelled"
    deepest = sql_storage.get(three.id)
    assert deepest.status is JobStatus.CANCELLED
    assert deepest.last_error == f"parent {min(j.id for j in two)} was cancelled"
    # "run" runs once its parent has finished, however it ended.
    assert status(sql_storage, survivor.id) is JobStatus.PENDING


def test_a_rescued_parent_that_fails_and_a_corrupt_parent_settle_their_children(
    sql_storage: SQLAlchemyStorage,
) -> None:
    lost = make_job(max_retries=0)
    corrupt = make_job(type="corrupt")
    after_lost, after_corrupt = make_job(depends_on=(lost.id,)), make_job(depends_on=(corrupt.id,))
    sql_storage.enqueue([lost, corrupt, after_lost, after_corrupt])
    jobs = sql_storage._jobs
    with sql_storage.engine.begin() as conn:  # edited by hand: no longer an object
        conn.execute(sa.update(jobs).where(jobs.c.id == corrupt.id).values(payload="[1]"))
    (held,) = sql_storage.claim(
        queues=["default"], worker_id="gone", lease_seconds=HOUR, types={"task"}
    )
    assert sql_storage.rescue_workers(["gone"]) == 1
    assert sql_storage.get(after_lost.id).last_error == f"parent {lost.id} failed"
    assert sql_storage.claim(queues=["default"], worker_id="w", lease_seconds=HOUR) == []
    with sql_storage.engine.connect() as conn:  # get() would refuse the corrupt row
        stored = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == corrupt.id)).scalar()
    assert stored == "failed"
    assert sql_storage.get(after_corrupt.id).last_error == f"parent {corrupt.id} failed"
    assert held.id == lost.id


def test_a_parent_counts_once_for_a_child_when_it_first_finishes(
    sql_storage: SQLAlchemyStorage,
) -> None:
    flaky, slow = make_job(), make_job()
    child = make_job(depends_on=(flaky.id, slow.id), on_parent_failure="run")
    sql_storage.enqueue([flaky, slow, child])
    held = {j.id: j for j in claim_all(sql_storage, 2)}
    sql_storage.fail(flaky.id, held[flaky.id].lease_token or "", error="x", retry_in=None)
    assert sql_storage.retry(flaky.id)
    sql_storage.complete(slow.id, held[slow.id].lease_token or "", result=None)
    assert status(sql_storage, child.id) is JobStatus.PENDING  # flaky's failure counted
    assert status(sql_storage, flaky.id) is JobStatus.PENDING


def test_enqueue_in_transaction_with_parents(sql_storage: SQLAlchemyStorage) -> None:
    parent = make_job()
    sql_storage.enqueue([parent])
    child = make_job(depends_on=(parent.id,))
    with sql_storage.engine.begin() as conn:
        assert sql_storage.enqueue_in_transaction(conn, [child]) == [child.id]
    assert status(sql_storage, child.id) is JobStatus.WAITING
    with sql_storage.engine.connect() as conn, conn.begin():
        with pytest.raises(InvalidJobError):
            sql_storage.enqueue_in_transaction(conn, [make_job(depends_on=("nobody",))])
        assert conn.execute(sa.select(sa.func.count()).select_from(sql_storage._jobs)).scalar() == 2


def test_groups_count_their_members_and_are_forgotten_with_them(
    sql_storage: SQLAlchemyStorage,
) -> None:
    members = [make_job() for _ in range(3)]
    callback = make_job(type="callback", depends_on=tuple(m.id for m in members))
    ids = sql_storage.enqueue_group("g1", members, callback)
    assert ids == [*(m.id for m in members), callback.id]
    group = sql_storage.get_group("g1")
    assert (group.callback_id, group.total, group.counts) == (
        callback.id,
        3,
        {JobStatus.PENDING: 3},
    )
    assert {j.group_id for j in sql_storage.list_jobs(limit=None)} == {"g1", None}
    for job in claim_all(sql_storage, 3):
        sql_storage.complete(job.id, job.lease_token or "", result=None)
    assert sql_storage.get_group("g1").finished
    (cb,) = claim_all(sql_storage, 1)
    assert cb.id == callback.id and cb.group_id is None
    sql_storage.complete(cb.id, cb.lease_token or "", result=None)
    assert sql_storage.purge(statuses=[JobStatus.COMPLETED], older_than=-1, limit=2) == 2
    assert sql_storage.get_group("g1").total == 1
    assert sql_storage.purge(statuses=[JobStatus.COMPLETED], older_than=-1) == 2
    with pytest.raises(GroupNotFound):
        sql_storage.get_group("g1")
    assert edges(sql_storage) == 0


def edges(storage: SQLAlchemyStorage) -> int:
    table = storage._dialect.tables.dependencies
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0)


@pytest.mark.parametrize("limit", [None, 10])
def test_purge_keeps_the_parents_of_unfinished_jobs(
    sql_storage: SQLAlchemyStorage, limit: int | None
) -> None:
    done, slow, plain = make_job(), make_job(), make_job()
    child = make_job(depends_on=(done.id, slow.id))
    sql_storage.enqueue([done, slow, plain, child])
    held = {j.id: j for j in claim_all(sql_storage, 3)}
    for job_id in (done.id, plain.id):
        sql_storage.complete(job_id, held[job_id].lease_token or "", result=None)
    assert sql_storage.purge(statuses=[JobStatus.COMPLETED], older_than=-1, limit=limit) == 1
    assert [j.id for j in sql_storage.parents(child.id)] == sorted([done.id, slow.id])
    sql_storage.complete(slow.id, held[slow.id].lease_token or "", result=None)
    (last,) = claim_all(sql_storage, 1)
    sql_storage.complete(last.id, last.lease_token or "", result=None)
    assert sql_storage.purge(statuses=[JobStatus.COMPLETED], older_than=-1, limit=limit) == 3
    assert sql_storage.list_jobs(limit=None) == [] and edges(sql_storage) == 0


def test_jobs_are_listed_by_correlation_id(sql_storage: SQLAlchemyStorage) -> None:
    long_id = "x" * (CORRELATION_LENGTH + 10)
    near = long_id[:-1] + "y"  # the same stored prefix
    jobs = [
        make_job(meta={"correlation_id": "tree-1"}),
        make_job(meta={"correlation_id": "tree-2"}),
        make_job(meta={"correlation_id": 7}),  # not text: not listed
        make_job(meta={"correlation_id": "tree-1"}),
        make_job(meta={"correlation_id": long_id}),
        make_job(meta={"correlation_id": near}),
    ]
    sql_storage.enqueue(jobs)
    listed = sql_storage.list_jobs(correlation_id="tree-1")
    assert [j.id for j in listed] == [jobs[0].id, jobs[3].id]
    newest = sql_storage.list_jobs(correlation_id="tree-1", limit=1, newest_first=True)
    assert [j.id for j in newest] == [jobs[3].id]
    assert [j.id for j in sql_storage.list_jobs(correlation_id=long_id)] == [jobs[4].id]
    assert sql_storage.list_jobs(correlation_id="7") == []
    assert sql_storage.list_jobs(correlation_id="tree-1", status="running") == []


def test_settle_waiting_backs_up_an_outcome_recorded_alone(sql_storage: SQLAlchemyStorage) -> None:
    parent, gone = make_job(), make_job()
    child, orphan = make_job(depends_on=(parent.id,)), make_job(depends_on=(gone.id,))
    sql_storage.enqueue([parent, gone, child, orphan])
    jobs = sql_storage._jobs
    with sql_storage.engine.begin() as conn:
        # What a crash between PostgreSQL's completion and its settling leaves.
        done = {"status": "completed", "finished_at": sa.func.now()}
        if sql_storage.engine.dialect.name == "sqlite":
            done["finished_at"] = sa.literal(1.0)
        conn.execute(sa.update(jobs).where(jobs.c.id == parent.id).values(**done))
        conn.execute(sa.delete(jobs).where(jobs.c.id == gone.id))  # by hand
    assert status(sql_storage, child.id) is JobStatus.WAITING
    assert sql_storage.settle_waiting() == 2
    assert status(sql_storage, child.id) is JobStatus.PENDING
    assert status(sql_storage, orphan.id) is JobStatus.PENDING
    assert sql_storage.settle_waiting() == 0


def test_a_wide_fan_out_and_fan_in(sql_storage: SQLAlchemyStorage) -> None:
    count = workflows.CHUNK * 2 + 7  # several IN lists
    root = make_job(type="root")
    children = [make_job(depends_on=(root.id,)) for _ in range(count)]
    last = make_job(type="last", depends_on=tuple(c.id for c in children))
    sql_storage.enqueue([root, *children, last])
    (held,) = claim_all(sql_storage, 1)
    sql_storage.complete(held.id, held.lease_token or "", result=None)
    assert sql_storage.count_jobs() == {
        ("default", JobStatus.COMPLETED): 1,
        ("default", JobStatus.PENDING): count,
        ("default", JobStatus.WAITING): 1,
    }
    while batch := sql_storage.claim(
        queues=["default"], worker_id="w", lease_seconds=HOUR, limit=300
    ):
        done = sql_storage.complete_many([(j.id, j.lease_token or "", None) for j in batch])
        assert all(done)
    assert status(sql_storage, last.id) is JobStatus.COMPLETED


# -- upgrades ---------------------------------------------------------------------------------


def make_layout_4(storage: SQLAlchemyStorage) -> None:
    """Turn fresh tables into what a release of layout 4 made."""
    jobs = storage._jobs
    prefix = storage.table_prefix
    table = storage.engine.dialect.identifier_preparer.format_table(jobs)
    qualified = (
        f"{storage.schema}." if storage.schema and storage.engine.dialect.name != "mysql" else ""
    )
    with storage.engine.begin() as conn:
        for index in jobs.indexes:
            if index.name in {f"{prefix}{name}" for name in WORKFLOW_INDEXES}:
                index.drop(conn)
        for name in WORKFLOW_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")
        storage._dialect.tables.dependencies.drop(conn)
        storage._dialect.tables.groups.drop(conn)
        old = "status IN ('pending', 'running')"
        if storage.engine.dialect.name == "mysql":
            conn.exec_driver_sql(
                f"ALTER TABLE {table} MODIFY COLUMN active_unique_key VARCHAR(255) "
                f"GENERATED ALWAYS AS (CASE WHEN {old} THEN unique_key END) STORED"
            )
        else:
            conn.exec_driver_sql(f"DROP INDEX {qualified}{prefix}jobs_unique")
            conn.exec_driver_sql(f"DROP INDEX {qualified}{prefix}jobs_key_order")
            conn.exec_driver_sql(
                f"CREATE UNIQUE INDEX {prefix}jobs_unique ON {table} (unique_key) "
                f"WHERE unique_key IS NOT NULL AND {old}"
            )
            conn.exec_driver_sql(
                f"CREATE INDEX {prefix}jobs_key_order ON {table} (concurrency_key, "
                f"created_at, id) WHERE concurrency_key IS NOT NULL AND {old}"
            )
        conn.execute(sa.update(storage._version).values(version=4))


def definitions(storage: SQLAlchemyStorage) -> str:
    """The unique-key and key-order indexes' definitions (the computed column's, on MySQL)."""
    name = storage._jobs.name
    with storage.engine.connect() as conn:
        if storage.engine.dialect.name == "postgresql":
            query = (
                "SELECT string_agg(indexdef, ' ') FROM pg_indexes "
                "WHERE schemaname = :s AND indexname IN (:a, :b)"
            )
            params = {"s": storage.schema, "a": f"{name}_unique", "b": f"{name}_key_order"}
        elif storage.engine.dialect.name == "sqlite":
            query = "SELECT group_concat(sql, ' ') FROM sqlite_master WHERE name IN (:a, :b)"
            params = {"a": f"{name}_unique", "b": f"{name}_key_order"}
        else:
            query = (
                "SELECT GENERATION_EXPRESSION FROM information_schema.COLUMNS WHERE "
                "TABLE_SCHEMA = :s AND TABLE_NAME = :a AND COLUMN_NAME = 'active_unique_key'"
            )
            params = {"s": storage.schema, "a": name}
        return str(conn.execute(sa.text(query), params).scalar())


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_tables_of_layout_4_gain_workflows(request: pytest.FixtureRequest, backend: str) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    old = config.open()
    old.initialize()
    kept = make_job(type="kept", unique_key="kept", meta={"correlation_id": "c"})
    old.enqueue([kept, make_job(type="other")])
    make_layout_4(old)
    assert "waiting" not in definitions(old)
    old.close()

    new = config.open()
    new.initialize()
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]
    # Waiting jobs hold their unique keys, not their place in an ordered key.
    assert definitions(new).count("'waiting'") == 1
    assert new.get(kept.id).group_id is None
    # Rows from before layout 5 were never copied: listed from layout 5 on only.
    assert new.list_jobs(correlation_id="c") == []
    child = make_job(unique_key="child", depends_on=(kept.id,))
    assert new.enqueue([child]) == [child.id]
    assert status(new, child.id) is JobStatus.WAITING
    assert new.enqueue([make_job(unique_key="child")]) == [child.id]  # waiting holds it
    (held,) = new.claim(queues=["default"], worker_id="w", lease_seconds=HOUR, types={"kept"})
    assert new.complete(held.id, held.lease_token or "", result=None)
    assert status(new, child.id) is JobStatus.PENDING
    again = config.open()
    again.initialize()  # nothing left to upgrade
    assert len(again.list_jobs(limit=None)) == 3
    again.close()
    new.close()


# -- racing last parents ------------------------------------------------------------------


ROUNDS = 30


def finish_side(
    config: StorageConfig, side: int, leases: list[tuple[str, str]], barrier: Any
) -> int:
    """Finish one parent of each child, at the same moment as the other side.

    Side 0 fails its parent in odd rounds; everything else completes.
    """
    storage = config.open()
    try:
        for n, (job_id, token) in enumerate(leases):
            barrier.wait(timeout=60)
            if side == 0 and n % 2:
                assert storage.fail(job_id, token, error="no", retry_in=None)
            else:
                assert storage.complete(job_id, token, result=n)
        return len(leases)
    finally:
        storage.close()


def _in_process(config: StorageConfig, side: int, leases: Any, barrier: Any, out: Any) -> None:
    try:
        out.put((side, finish_side(config, side, leases, barrier)))
    except BaseException as error:  # reported to the test, which fails
        out.put((side, repr(error)))


def race_parents(config: StorageConfig, how: str) -> None:
    storage = config.open()
    storage.initialize()
    pairs = [(make_job(type="a"), make_job(type="b")) for _ in range(ROUNDS)]
    children = [make_job(type="child", depends_on=(a.id, b.id)) for a, b in pairs]
    storage.enqueue([job for pair in pairs for job in pair] + children)
    held = {j.id: j for j in claim_all(storage, 2 * ROUNDS)}
    sides = [
        [(pair[side].id, held[pair[side].id].lease_token or "") for pair in pairs]
        for side in (0, 1)
    ]
    if how == "threads":
        barrier = threading.Barrier(2)
        results: list[Any] = [None, None]

        def run(side: int) -> None:
            try:
                results[side] = finish_side(config, side, sides[side], barrier)
            except BaseException as error:
                results[side] = repr(error)

        threads = [threading.Thread(target=run, args=(side,)) for side in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [ROUNDS, ROUNDS]
    else:
        ctx = multiprocessing.get_context("spawn")
        pbarrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_in_process, args=(config, side, sides[side], pbarrier, out))
            for side in (0, 1)
        ]
        for proc in procs:
            proc.start()
        found = dict(out.get(timeout=300) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        assert found == {0: ROUNDS, 1: ROUNDS}
    for n, child in enumerate(children):
        stored = storage.get(child.id)
        if n % 2:
            assert stored.status is JobStatus.CANCELLED
            assert stored.last_error == f"parent {pairs[n][0].id} failed"
        else:
            assert stored.status is JobStatus.PENDING, n
    assert storage.settle_waiting() == 0  # nothing was left behind
    storage.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_last_parents_finishing_together_in_threads_settle_the_child(
    request: pytest.FixtureRequest, backend: str
) -> None:
    race_parents(request.getfixturevalue(f"{backend}_config"), "threads")


def test_last_parents_finishing_together_in_processes_settle_the_child(
    postgres_config: StorageConfig,
) -> None:
    race_parents(postgres_config, "processes")


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_settlings_that_lock_in_opposite_orders_lose_nothing(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """A child that is also a grandchild: failing its parent and cancelling its other
    parent lock the two in opposite orders. A deadlock is retried whole."""
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    rounds = []
    for _ in range(15):
        root = make_job(type="root")
        child_first = make_job(type="x")  # the lower id: locked first by the root's settling
        middle = make_job(type="x", depends_on=(root.id,))
        grandchild = dataclasses.replace(child_first, depends_on=(root.id, middle.id))
        storage.enqueue([root, middle, grandchild])
        rounds.append((root, middle, grandchild))
    held = {j.id: j for j in claim_all(storage, len(rounds))}
    for root, middle, grandchild in rounds:
        lease = held[root.id].lease_token or ""
        done: dict[int, bool] = {}

        def work(
            n: int,
            root_id: str = root.id,
            lease: str = lease,
            middle_id: str = middle.id,
            done: dict[int, bool] = done,
        ) -> None:
            mine = config.open()
            try:
                if n == 0:
                    done[n] = mine.fail(root_id, lease, error="boom", retry_in=None)
                else:  # False when the root's failure cancelled it first
                    done[n] = mine.cancel(middle_id)
            finally:
                mine.close()

        assert run_together(2, work) == []
        assert done[0] is True and 1 in done
        assert status(storage, root.id) is JobStatus.FAILED
        assert status(storage, middle.id) is JobStatus.CANCELLED
        assert status(storage, grandchild.id) is JobStatus.CANCELLED
    storage.close()


# -- a group drained by several workers -------------------------------------------------


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_a_group_callback_runs_once_after_the_last_member(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    members = [make_job(type="member") for _ in range(200)]
    callback = make_job(type="callback", depends_on=tuple(m.id for m in members))
    storage.enqueue_group("g", members, callback)
    seen: list[int] = []  # members completed when the callback was claimed
    stop = threading.Event()

    def drain(n: int, barrier: threading.Barrier) -> None:
        mine = config.open()
        barrier.wait()
        try:
            while not stop.is_set():
                batch = mine.claim(
                    queues=["default"], worker_id=f"w{n}", lease_seconds=HOUR, limit=7
                )
                for job in batch:
                    if job.type == "callback":
                        seen.append(mine.get_group("g").completed)
                        stop.set()
                if batch:
                    outcomes = [(j.id, j.lease_token or "", None) for j in batch]
                    if n % 2:
                        assert all(mine.complete_many(outcomes))
                    else:
                        for job_id, token, _ in outcomes:
                            assert mine.complete(job_id, token, result=None)
                elif mine.get(callback.id).status is JobStatus.COMPLETED:
                    break
        finally:
            mine.close()

    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            drain(n, barrier)
        except BaseException as error:
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert seen == [200]
    assert status(storage, callback.id) is JobStatus.COMPLETED
    assert storage.get_group("g").counts == {JobStatus.COMPLETED: 200}
    storage.close()


def test_a_child_made_pending_wakes_listeners_in_other_processes(
    postgres_storage: SQLAlchemyStorage,
) -> None:
    """PostgreSQL: the settling transaction NOTIFYs, as an insert does."""
    parent = make_job()
    child = make_job(depends_on=(parent.id,))
    postgres_storage.enqueue([parent, child])
    (held,) = claim_all(postgres_storage, 1)
    other = SQLAlchemyStorage(
        postgres_storage.engine.url,
        table_prefix=postgres_storage.table_prefix,
        schema=postgres_storage.schema,
    )
    fired = threading.Event()
    try:
        other.subscribe(fired.set)
        # Ready once it hears an insert (the enqueue of a job of another queue).
        postgres_storage.enqueue([make_job(queue="elsewhere")])
        assert fired.wait(20), "the listener did not start"
        fired.clear()
        assert postgres_storage.complete(held.id, held.lease_token or "", result=None)
        assert fired.wait(20), "no notification when the child became pending"
        assert status(postgres_storage, child.id) is JobStatus.PENDING
    finally:
        other.close()
