"""Flow control on the SQL backends: limits that hold across threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import Concurrency, JobStatus, RateLimit
from dbjobq._contract.concurrency import run_together
from dbjobq.flow import Limits
from dbjobq.job import Job
from dbjobq.storage import SQLAlchemyStorage
from dbjobq.storage._sql.schema import KEY_INDEXES, SCHEMA_VERSION
from dbjobq.testing import make_job

from .conftest import StorageConfig

SQL_BACKENDS = ["sqlite", "postgres", "mysql"]


def make_layout_3(storage: SQLAlchemyStorage) -> None:
    """Turn fresh tables into what a release of layout 3 made."""
    jobs = storage._jobs
    preparer = storage.engine.dialect.identifier_preparer
    with storage.engine.begin() as conn:
        for index in jobs.indexes:
            if index.name in {f"{storage.table_prefix}{name}" for name in KEY_INDEXES}:
                index.drop(conn)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(jobs)} DROP COLUMN concurrency_key"
        )
        storage._dialect.tables.rate_starts.drop(conn)
        conn.execute(sa.update(storage._version).values(version=3))


def index_names(storage: SQLAlchemyStorage) -> set[str]:
    with storage.engine.connect() as conn:
        found = sa.inspect(conn).get_indexes(storage._jobs.name, schema=storage.schema)
    return {str(index["name"]) for index in found}


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_tables_of_layout_3_gain_concurrency_keys_and_rate_starts(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    old = config.open()
    old.initialize()
    kept = make_job(type="kept")
    old.enqueue([kept])  # a row that stays through the upgrade
    make_layout_3(old)
    with old.engine.connect() as conn:
        columns = sa.inspect(conn).get_columns(old._jobs.name, schema=config.schema)
    assert "concurrency_key" not in {c["name"] for c in columns}
    old.close()

    new = config.open()
    new.initialize()
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]
        assert sa.inspect(conn).has_table(new._dialect.tables.rate_starts.name, config.schema)
    assert {f"{config.table_prefix}{name}" for name in KEY_INDEXES} <= index_names(new)
    assert new.get(kept.id).concurrency_key is None
    new.enqueue([make_job(type="keyed", concurrency_key="k")])
    claimed = new.claim(queues=["default"], worker_id="w", lease_seconds=60, types={"keyed"})
    assert [j.concurrency_key for j in claimed] == ["k"]
    again = config.open()
    again.initialize()  # nothing left to upgrade
    assert again.get(kept.id).type == "kept"
    again.close()
    new.close()


# -- racing claimers: threads and processes --------------------------------------------

HOUR = 3600.0
KEYS = [f"k{n}" for n in range(6)]
PER_KEY_2 = {"task": Limits(Concurrency(2))}
RATE_7 = {"task": Limits(rate_limit=RateLimit(7, per=HOUR))}


def most_running_per_key(storage: SQLAlchemyStorage) -> int:
    """The most running jobs any concurrency key has right now (a fresh read)."""
    c = storage._jobs.c
    stmt = (
        sa.select(sa.func.count())
        .where(c.status == "running", c.concurrency_key.is_not(None))
        .group_by(c.concurrency_key)
    )
    with storage.engine.connect() as conn:
        return max(conn.execute(stmt).scalars(), default=0)


def pending_left(storage: SQLAlchemyStorage) -> int:
    return sum(n for (_, status), n in storage.count_jobs().items() if status == "pending")


def churn(config: StorageConfig, worker: str, barrier: Any) -> tuple[int, int]:
    """Claim under Concurrency(2) per key and complete, until no job is left.

    After each claim that took jobs (still running), counts the running jobs per key
    in the database: more than 2 anywhere means a limit was broken. Returns the
    most seen and how many jobs this claimer took.
    """
    storage = config.open()
    most = taken = 0
    barrier.wait()
    try:
        for _ in range(20_000):
            jobs = storage.claim_limited(
                queues=["default"],
                worker_id=worker,
                lease_seconds=HOUR,
                types=["task"],
                limits=PER_KEY_2,
                limit=12,
            )
            if jobs:
                most = max(most, most_running_per_key(storage))
                taken += len(jobs)
                for job in jobs:
                    assert storage.complete(job.id, job.lease_token or "", result=None)
            elif pending_left(storage) == 0:
                return most, taken
        raise AssertionError("the claimers did not drain the queue")
    finally:
        storage.close()


def rate_claims(config: StorageConfig, worker: str, barrier: Any) -> tuple[int, int]:
    """Claim under RateLimit(7 per hour) until the window is full; (0, jobs taken)."""
    storage = config.open()
    taken = 0
    barrier.wait()
    try:
        for _ in range(20_000):
            jobs = storage.claim_limited(
                queues=["default"],
                worker_id=worker,
                lease_seconds=HOUR,
                types=["task"],
                limits=RATE_7,
                limit=2,
            )
            taken += len(jobs)
            if not jobs and len(storage.recent_starts("task", within=HOUR)) >= 7:
                return 0, taken
        raise AssertionError("the claimers never filled the window")
    finally:
        storage.close()


def _in_process(fn: Any, config: StorageConfig, worker: str, barrier: Any, out: Any) -> None:
    try:
        out.put((worker, fn(config, worker, barrier)))
    except BaseException as error:  # reported to the test, which fails
        out.put((worker, repr(error)))


def race(fn: Any, config: StorageConfig, how: str, count: int = 3) -> list[tuple[int, int]]:
    """Run `fn(config, worker, barrier)` in `count` threads or processes at once."""
    if how == "threads":
        results: list[Any] = [None] * count
        barrier = threading.Barrier(count)

        def run(n: int) -> None:
            try:
                results[n] = fn(config, f"w{n}", barrier)
            except BaseException as error:
                results[n] = repr(error)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(isinstance(r, tuple) for r in results), results
        return results
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(count), ctx.Queue()
    procs = [
        ctx.Process(target=_in_process, args=(fn, config, f"p{n}", barrier, out))
        for n in range(count)
    ]
    for proc in procs:
        proc.start()
    found = dict(out.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert all(isinstance(r, tuple) for r in found.values()), found
    return list(found.values())


@pytest.mark.parametrize("how", ["threads", "processes"])
@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_racing_claimers_never_run_more_than_the_limit_of_a_key(
    request: pytest.FixtureRequest, backend: str, how: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    # Keys in turn: every claim reads jobs of every key, and can take two of each.
    storage.enqueue([make_job(concurrency_key=key) for _ in range(20) for key in KEYS])
    results = race(churn, config, how)
    assert max(most for most, _ in results) == 2  # reached, never passed
    assert sum(taken for _, taken in results) == 20 * len(KEYS)
    assert {job.status for job in storage.list_jobs(limit=None)} == {JobStatus.COMPLETED}
    storage.close()


@pytest.mark.parametrize("how", ["threads", "processes"])
@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_racing_claimers_never_start_more_than_a_rate_limit_allows(
    request: pytest.FixtureRequest, backend: str, how: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    storage.enqueue([make_job() for _ in range(30)])
    results = race(rate_claims, config, how)
    assert sum(taken for _, taken in results) == 7
    assert len(storage.recent_starts("task", within=HOUR)) == 7
    assert len(storage.list_jobs(status=JobStatus.RUNNING)) == 7
    storage.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_racing_claimers_start_ordered_keys_in_enqueue_order(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    storage = config.open()
    storage.initialize()
    ordered = {"task": Limits(Concurrency(1, key=lambda p: p["k"], ordered=True))}
    enqueued: dict[str, list[str]] = {}
    for n in range(24):  # each job a higher priority than the one before
        job = make_job(payload={"k": n % 4}, priority=n)
        storage.enqueue([job])
        enqueued.setdefault(f"task:{n % 4}", []).append(job.id)
    started: dict[str, list[str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        mine = config.open()
        barrier.wait()
        while pending_left(mine):
            for job in mine.claim_limited(
                queues=["default"],
                worker_id=f"w{n}",
                lease_seconds=HOUR,
                types=["task"],
                limits=ordered,
                limit=2,
            ):
                with lock:  # before it completes: the next of its key waits for that
                    started.setdefault(job.concurrency_key or "", []).append(job.id)
                assert mine.complete(job.id, job.lease_token or "", result=None)
        mine.close()

    assert run_together(4, work) == []
    assert started == enqueued
    storage.close()


# -- what one claim takes ------------------------------------------------------------------


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_a_full_key_far_ahead_does_not_block_the_jobs_behind_it(
    request: pytest.FixtureRequest, backend: str
) -> None:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    # Far more jobs of the hot key than a claim reads ahead.
    storage.enqueue([make_job(concurrency_key="hot", priority=5) for _ in range(300)])
    cold = [make_job(concurrency_key=f"cold{n}") for n in range(3)]
    storage.enqueue(cold)
    one = {"task": Limits(Concurrency(1))}

    def claim() -> list[Job]:
        return storage.claim_limited(
            queues=["default"], worker_id="w", lease_seconds=HOUR, types=["task"], limits=one
        )

    assert [job.concurrency_key for job in claim()] == ["hot"]
    assert [job.id for job in claim() + claim() + claim()] == [job.id for job in cold]
    assert claim() == []


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_keys_worked_out_at_claim_are_stored_on_held_back_jobs_too(
    request: pytest.FixtureRequest, backend: str
) -> None:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    jobs = [make_job(payload={"account": n % 2}) for n in range(6)]
    storage.enqueue(jobs)
    assert {storage.get(job.id).concurrency_key for job in jobs} == {None}
    limits = {"task": Limits(Concurrency(1, key=lambda p: p["account"]))}
    claimed = storage.claim_limited(
        queues=["default"], worker_id="w", lease_seconds=HOUR, types=["task"], limits=limits
    )
    assert len(claimed) == 1
    stored = [storage.get(job.id).concurrency_key for job in jobs]
    assert stored == ["task:0", "task:1"] * 3


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_a_key_another_claim_holds_is_skipped_without_waiting(
    request: pytest.FixtureRequest, backend: str
) -> None:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    busy, free = make_job(concurrency_key="busy"), make_job(concurrency_key="free")
    storage.enqueue([busy, free])
    one = {"task": Limits(Concurrency(1))}

    def claim() -> list[str]:
        jobs = storage.claim_limited(
            queues=["default"], worker_id="w", lease_seconds=HOUR, types=["task"], limits=one
        )
        return [job.id for job in jobs]

    with storage._dialect.transaction(write=True, single=False) as conn:  # another claim
        assert storage._dialect.try_key_locks(conn, [("c", "busy")]) == [("c", "busy")]
        assert claim() == [free.id]
    assert claim() == [busy.id]  # released with the other transaction


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_claims_forget_starts_that_left_the_window_and_purge_the_rest(
    request: pytest.FixtureRequest, backend: str
) -> None:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{backend}_storage")
    starts = storage._dialect.tables.rate_starts
    long_ago = storage.now() - timedelta(days=2)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.insert(starts),
            [
                {"rate_key": "task", "started_at": long_ago, "job_id": "old"},
                {"rate_key": "gone", "started_at": long_ago, "job_id": "older"},
            ],
        )
    storage.enqueue([make_job()])
    limits = {"task": Limits(rate_limit=RateLimit(5, per=60))}
    (job,) = storage.claim_limited(
        queues=["default"], worker_id="w", lease_seconds=HOUR, types=["task"], limits=limits
    )

    def kept() -> list[str]:
        with storage.engine.connect() as conn:
            return sorted(conn.execute(sa.select(starts.c.job_id)).scalars())

    assert kept() == sorted(["older", job.id])  # the claimed key's old start is gone
    storage.purge(statuses=[JobStatus.COMPLETED], older_than=HOUR)
    assert kept() == [job.id]
