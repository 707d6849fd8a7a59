"""Hostile input and misbehaving handlers: always a typed error or a readable failed job."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import (
    ConfigurationError,
    InvalidJobError,
    JobContext,
    JobError,
    JobQueue,
    JobValidationError,
    PayloadError,
    RetryPolicy,
    StorageError,
    Worker,
)
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage

from .helpers import wait_until

SURROGATE = "caf\udce9"  # what a filename decoded with surrogateescape looks like


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_type": SURROGATE},
        {"queue": SURROGATE},
        {"unique_key": SURROGATE},
    ],
    ids=["type", "queue", "unique_key"],
)
def test_names_that_are_not_valid_unicode_are_rejected(
    queue: JobQueue, kwargs: dict[str, Any]
) -> None:
    kwargs = dict(kwargs)  # shared between the backends' runs: do not mutate
    job_type = kwargs.pop("job_type", "t")
    with pytest.raises(InvalidJobError, match="not valid Unicode"):
        queue.enqueue(job_type, {}, **kwargs)
    assert queue.list_jobs() == []


@pytest.mark.parametrize(
    ("payload", "meta"),
    [
        ({"name": SURROGATE}, None),
        ({SURROGATE: 1}, None),
        ({}, {"note": SURROGATE}),
        ({"big": 10**5000}, None),
        ({"big": 2**64}, None),
        ({"small": -(2**63) - 1}, None),
    ],
    ids=["value", "key", "meta", "huge int", "2**64", "below int64"],
)
def test_unstorable_payloads_are_rejected(
    queue: JobQueue, payload: dict[str, Any], meta: dict[str, Any] | None
) -> None:
    with pytest.raises(PayloadError):
        queue.enqueue("t", payload, meta=meta)
    assert queue.list_jobs() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay": 1e12},
        {"delay": timedelta(days=999_999_999)},
        {"run_at": datetime(9999, 1, 1, tzinfo=timezone.utc)},
        {"run_at": datetime(1000, 1, 1, tzinfo=timezone.utc)},
    ],
    ids=["delay 1e12", "delay timedelta", "run_at 9999", "run_at 1000"],
)
def test_due_times_every_backend_cannot_store_are_rejected(
    queue: JobQueue, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidJobError):
        queue.enqueue("t", **kwargs)
    assert queue.list_jobs() == []


def test_ten_megabyte_payloads_get_a_clear_error_by_default(queue: JobQueue) -> None:
    with pytest.raises(PayloadError, match="more than the limit of 1048576"):
        queue.enqueue("t", {"blob": "x" * 10_000_000})


def test_a_ten_megabyte_payload_round_trips_when_allowed(backend: str, queue: JobQueue) -> None:
    big = JobQueue(queue.storage, max_payload_bytes=None)
    job_id = big.enqueue("t", {"blob": "x" * 10_000_000})
    assert big.get_job(job_id).payload["blob"] == "x" * 10_000_000


def test_error_text_the_database_cannot_store_is_cleaned(queue: JobQueue) -> None:
    @queue.handler("t", max_retries=5)
    def handler(ctx: JobContext) -> None:
        raise JobValidationError(f"bad \x00 byte in {SURROGATE}")

    job_id = queue.enqueue("t")
    assert Worker(queue).run_until_empty() == 1
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None
    assert job.last_error.startswith("JobValidationError: bad \\x00 byte in caf\\udce9")


@pytest.mark.parametrize(
    "result",
    [{"path": SURROGATE}, 10**5000, {"n": float("nan")}, (1, 2)],
    ids=["surrogate", "huge int", "nan", "tuple"],
)
def test_unstorable_results_fail_the_job_without_retry(queue: JobQueue, result: Any) -> None:
    queue.register("t", lambda ctx: result, max_retries=5)
    job_id = queue.enqueue("t")
    assert Worker(queue).run_until_empty() == 1
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None and job.last_error.startswith("PayloadError")


def test_retry_in_may_be_a_timedelta(queue: JobQueue) -> None:
    def handler(ctx: JobContext) -> None:
        raise JobError("later", retry_in=timedelta(minutes=5))

    queue.register("t", handler)
    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert job.status == "pending"
    assert 299 <= (job.run_at - job.updated_at).total_seconds() <= 301


@pytest.mark.parametrize("retry_in", [float("inf"), -5, 1e12, "soon"])
def test_a_bad_retry_in_falls_back_to_the_retry_policy(queue: JobQueue, retry_in: Any) -> None:
    def handler(ctx: JobContext) -> None:
        raise JobError("later", retry_in=retry_in)

    queue.register("t", handler, retry_policy=RetryPolicy(base_delay=100, jitter=0))
    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert job.status == "pending"
    assert 99 <= (job.run_at - job.updated_at).total_seconds() <= 101


def test_an_exception_whose_str_fails_is_still_recorded(queue: JobQueue) -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no string for you")

    def handler(ctx: JobContext) -> None:
        raise Weird()

    queue.register("t", handler, max_retries=0)
    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert job.status == "failed"
    assert job.last_error is not None and job.last_error.startswith("Weird")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay": float("nan")},
        {"max_delay": float("inf")},
        {"factor": "2"},
        {"jitter": 2},
        {"factor": 0.5},
        {"max_delay": 1e12},
    ],
)
def test_bad_retry_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_a_steep_retry_policy_does_not_overflow() -> None:
    policy = RetryPolicy(base_delay=1, factor=1e10, max_delay=60, jitter=0)
    assert policy.delay(10**6) == 60


@pytest.mark.parametrize(
    "kwargs",
    [
        {"worker_id": "x" * 201},
        {"worker_id": ""},
        {"worker_id": SURROGATE},
        {"queues": [SURROGATE]},
        {"queues": ["ok", 5]},
        {"max_poll_interval": 1e13},
        {"lease_seconds": float("inf")},
    ],
)
def test_worker_options_the_database_cannot_store_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Worker(JobQueue(MemoryStorage()), **kwargs)


def test_run_until_empty_leaves_no_threads_behind() -> None:
    queue = JobQueue(MemoryStorage())
    queue.register("t", lambda ctx: None)
    before = threading.active_count()
    for _ in range(20):
        queue.enqueue("t")
        assert Worker(queue).run_until_empty() == 1
    wait_until(lambda: threading.active_count() <= before, timeout=5, what="runner threads to end")


def test_stop_with_an_enormous_timeout_is_fine() -> None:
    worker = Worker(JobQueue(MemoryStorage()), poll_interval=0.01)
    worker.start()
    assert worker.stop(timeout=1e300)


def test_a_handler_is_told_to_stop_when_its_lease_cannot_be_renewed() -> None:
    from .test_worker import FlakyStorage

    storage = FlakyStorage(heartbeat=1000)
    queue = JobQueue(storage, retry_policy=RetryPolicy(base_delay=0))
    told = threading.Event()

    @queue.handler("t")
    def handler(ctx: JobContext) -> str:
        if ctx.cancelled.wait(10):
            told.set()
        return "finished anyway"

    job_id = queue.enqueue("t")
    assert Worker(queue, lease_seconds=0.3).run_until_empty() == 1
    assert told.is_set()
    # Nobody rescued the job meanwhile, so the fence lets the late outcome in.
    assert queue.get_job(job_id).result == "finished anyway"


def test_enqueue_with_a_past_run_at_wakes_an_idle_worker() -> None:
    queue = JobQueue(MemoryStorage())
    queue.register("t", lambda ctx: "woken")
    worker = Worker(queue, poll_interval=30, max_poll_interval=30)
    worker.start()
    try:
        wait_until(lambda: worker._idle, what="worker to go idle")
        job_id = queue.enqueue("t", run_at=datetime.now(timezone.utc) - timedelta(hours=1))
        wait_until(lambda: queue.get_job(job_id).status.is_finished, timeout=5)
    finally:
        worker.stop()


# -- engines handed in by the application -------------------------------------------------


def test_two_storages_can_share_one_sqlite_engine(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    with engine.begin() as conn:  # the application's own use of the engine, before dbjobq
        conn.exec_driver_sql("CREATE TABLE app (x INTEGER)")
    first = SQLAlchemyStorage(engine, table_prefix="a_")
    second = SQLAlchemyStorage(engine, table_prefix="b_")
    one, two = JobQueue(first), JobQueue(second)
    one.enqueue("t")
    two.enqueue("t")
    with engine.begin() as conn:  # and after
        conn.exec_driver_sql("INSERT INTO app VALUES (1)")
    assert len(one.list_jobs()) == len(two.list_jobs()) == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM app").scalar() == 1


def test_an_in_memory_sqlite_engine_without_static_pool_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="StaticPool"):
        SQLAlchemyStorage(sa.create_engine("sqlite://"))


# -- rows edited by hand ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_queue(request: pytest.FixtureRequest) -> JobQueue:
    storage: SQLAlchemyStorage = request.getfixturevalue(f"{request.param}_storage")
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: ctx.payload["n"])
    return queue


def corrupt(queue: JobQueue, job_id: str, **values: Any) -> None:
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    table = storage._jobs
    with storage.engine.begin() as conn:
        for column, raw in values.items():
            conn.execute(
                sa.update(table)
                .where(table.c.id == job_id)
                .values({column: sa.literal_column(raw)})
            )


def raw_row(queue: JobQueue, job_id: str) -> Any:
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    table = storage._jobs
    with storage.engine.connect() as conn:
        return conn.execute(
            sa.select(table.c.status, table.c.last_error).where(table.c.id == job_id)
        ).one()


@pytest.mark.parametrize(
    ("column", "raw", "reason"),
    [
        ("payload", "'[1, 2]'", "payload is not a JSON object"),
        ("meta", "'\"text\"'", "meta is not"),
        ("max_retries", "-5", "max_retries is -5"),  # -1 alone stands for "the handler's"
    ],
)
def test_a_job_with_a_payload_edited_into_nonsense_is_failed_and_the_rest_run(
    sql_queue: JobQueue, column: str, raw: str, reason: str
) -> None:
    ids = [sql_queue.enqueue("t", {"n": n}, priority=-n) for n in range(3)]
    corrupt(sql_queue, ids[0], **{column: raw})  # the head of the queue
    assert Worker(sql_queue).run_until_empty() == 2
    assert [sql_queue.get_job(i).result for i in ids[1:]] == [1, 2]
    status, last_error = raw_row(sql_queue, ids[0])
    assert status == "failed"
    assert reason in last_error
    with pytest.raises(StorageError, match=f"job {ids[0]} is corrupt: {reason}"):
        sql_queue.get_job(ids[0])


def test_text_that_is_not_json_at_all_is_failed_too(sqlite_storage: SQLAlchemyStorage) -> None:
    queue = JobQueue(sqlite_storage)
    queue.register("t", lambda ctx: "ran")
    bad, good = queue.enqueue("t"), queue.enqueue("t")
    corrupt(queue, bad, payload="'{not json'")
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(good).result == "ran"
    status, last_error = raw_row(queue, bad)
    assert (status, "payload is not valid JSON" in last_error) == ("failed", True)


def test_an_unknown_status_is_reported_not_fatal(
    sql_queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    odd, fine = sql_queue.enqueue("t", {"n": 1}), sql_queue.enqueue("t", {"n": 2})
    corrupt(sql_queue, odd, status="'paused'")
    assert Worker(sql_queue).run_until_empty() == 1
    assert sql_queue.get_job(fine).result == 2
    assert sql_queue.counts()["default"]["completed"] == 1
    assert "unknown status 'paused'" in caplog.text
    with pytest.raises(StorageError, match="unknown status 'paused'"):
        sql_queue.get_job(odd)
