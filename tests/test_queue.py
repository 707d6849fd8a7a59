"""JobQueue: enqueue validation, inspection and management, on every backend."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq import (
    ConfigurationError,
    DBJobQError,
    InvalidJobError,
    JobNotFound,
    JobQueue,
    JobSpec,
    JobStatus,
    PayloadError,
)
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage, Storage


def _nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


BAD_PAYLOADS: list[tuple[str, Any]] = [
    ("object", {"x": object()}),
    ("nan", {"x": math.nan}),
    ("infinity", {"x": [1.0, math.inf]}),
    ("nul in string", {"s": "a\x00b"}),
    ("nul in key", {"a\x00": 1}),
    ("int key", {1: "one"}),
    ("tuple", {"t": (1, 2)}),
    ("set", {"s": {1}}),
    ("bytes", {"b": b"raw"}),
    ("datetime", {"d": datetime.now(timezone.utc)}),
    ("not an object", [1, 2, 3]),
    ("string", "hello"),
    ("too deep", _nest(200)),
]


@pytest.mark.parametrize(("case", "payload"), BAD_PAYLOADS, ids=[c for c, _ in BAD_PAYLOADS])
def test_bad_payload_raises_payload_error_and_writes_nothing(
    queue: JobQueue, case: str, payload: Any
) -> None:
    with pytest.raises(PayloadError) as info:
        queue.enqueue("task", payload)
    assert isinstance(info.value, DBJobQError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)
    assert queue.list_jobs() == []


def test_payload_error_names_the_bad_place(queue: JobQueue) -> None:
    with pytest.raises(PayloadError, match=r"\['user'\]\['score'\].*NaN"):
        queue.enqueue("task", {"user": {"score": math.nan}})


def test_payload_over_the_size_limit_is_rejected(storage: Storage) -> None:
    queue = JobQueue(storage, max_payload_bytes=1000)
    queue.enqueue("task", {"s": "x" * 900})
    with pytest.raises(PayloadError, match="more than the limit of 1000"):
        queue.enqueue("task", {"s": "x" * 1000})
    assert len(queue.list_jobs()) == 1


BAD_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("empty type", {"type": ""}),
    ("blank type", {"type": "  "}),
    ("type not str", {"type": 5}),
    ("type too long", {"type": "x" * 201}),
    ("queue empty", {"queue": ""}),
    ("queue not str", {"queue": 3}),
    ("priority str", {"priority": "5"}),
    ("priority float", {"priority": 1.5}),
    ("priority bool", {"priority": True}),
    ("priority too big", {"priority": 2**31}),
    ("negative delay", {"delay": -1}),
    ("delay str", {"delay": "10"}),
    ("delay nan", {"delay": math.nan}),
    ("delay inf", {"delay": math.inf}),
    ("naive run_at", {"run_at": datetime(2030, 1, 1)}),
    ("run_at str", {"run_at": "2030-01-01"}),
    ("run_at and delay", {"run_at": datetime.now(timezone.utc), "delay": 5}),
    ("negative max_retries", {"max_retries": -1}),
    ("max_retries str", {"max_retries": "3"}),
    ("max_retries huge", {"max_retries": 1001}),
    ("empty unique_key", {"unique_key": ""}),
    ("unique_key not str", {"unique_key": 5}),
    ("meta not dict", {"meta": ["x"]}),
    ("meta nan", {"meta": {"x": math.nan}}),
    ("zero timeout", {"timeout": 0}),
    ("negative timeout", {"timeout": -1}),
]


@pytest.mark.parametrize(("case", "kwargs"), BAD_ARGUMENTS, ids=[c for c, _ in BAD_ARGUMENTS])
def test_bad_argument_raises_invalid_job_error_and_writes_nothing(
    queue: JobQueue, case: str, kwargs: dict[str, Any]
) -> None:
    args = {"type": "task", **kwargs}
    job_type = args.pop("type")
    with pytest.raises(InvalidJobError):
        queue.enqueue(job_type, {}, **args)
    assert queue.list_jobs() == []


def test_enqueue_stores_the_job_with_defaults(queue: JobQueue) -> None:
    job_id = queue.enqueue("send_email", {"to": "a@example.com"})
    job = queue.get_job(job_id)
    assert job.type == "send_email"
    assert job.payload == {"to": "a@example.com"}
    assert job.queue == "default"
    assert job.priority == 0
    assert job.status == "pending"
    assert job.max_retries is None and job.timeout is None  # the handler's, when it runs
    assert job.meta == {}


def test_enqueue_without_payload_stores_an_empty_object(queue: JobQueue) -> None:
    assert queue.get_job(queue.enqueue("ping")).payload == {}


def test_enqueue_options_are_stored(queue: JobQueue) -> None:
    job_id = queue.enqueue(
        "t", {"a": 1}, queue="mail", priority=-5, max_retries=0, meta={"trace": "x"}, timeout=9
    )
    job = queue.get_job(job_id)
    assert (job.queue, job.priority, job.max_retries, job.meta, job.timeout) == (
        "mail",
        -5,
        0,
        {"trace": "x"},
        9.0,
    )


def test_delay_and_run_at_set_when_a_job_is_due(queue: JobQueue) -> None:
    delayed = queue.get_job(queue.enqueue("t", delay=timedelta(minutes=10)))
    assert timedelta(seconds=599) <= delayed.run_at - delayed.created_at <= timedelta(seconds=601)
    when = datetime(2031, 5, 4, 3, 2, 1, tzinfo=timezone(timedelta(hours=2)))
    scheduled = queue.get_job(queue.enqueue("t", run_at=when))
    assert scheduled.run_at == when
    assert scheduled.run_at.tzinfo == timezone.utc


def test_handler_max_retries_is_not_copied_into_the_job(queue: JobQueue) -> None:
    """The handler's value applies when the job runs (see tests/test_handler_defaults.py)."""
    queue.register("fragile", lambda ctx: None, max_retries=7)
    assert queue.get_job(queue.enqueue("fragile")).max_retries is None
    assert queue.get_job(queue.enqueue("fragile", max_retries=1)).max_retries == 1
    assert queue.get_job(queue.enqueue("other")).max_retries is None


def test_unique_key_returns_the_existing_job(queue: JobQueue) -> None:
    first = queue.enqueue("welcome", {"user": 42}, unique_key="welcome:42")
    assert queue.enqueue("welcome", {"user": 42}, unique_key="welcome:42") == first
    assert len(queue.list_jobs()) == 1


def test_enqueue_many_returns_ids_in_order(queue: JobQueue) -> None:
    ids = queue.enqueue_many(JobSpec(type="t", payload={"n": n}) for n in range(50))
    assert [queue.get_job(i).payload["n"] for i in ids] == list(range(50))


def test_enqueue_many_writes_nothing_if_one_job_is_bad(queue: JobQueue) -> None:
    specs = [JobSpec(type="t"), JobSpec(type="t", payload={"x": math.nan}), JobSpec(type="t")]
    with pytest.raises(PayloadError, match=r"^job 1: "):
        queue.enqueue_many(specs)
    with pytest.raises(InvalidJobError, match="item 1 is a tuple"):
        queue.enqueue_many([JobSpec(type="t"), ("t", {})])  # type: ignore[list-item]
    assert queue.list_jobs() == []


def test_enqueue_many_is_one_transaction(sqlite_storage: SQLAlchemyStorage) -> None:
    queue = JobQueue(sqlite_storage)
    queue.initialize()
    statements: list[str] = []  # what SQLite runs, whoever sends it
    sqlite_storage.engine.dispose()
    sa.event.listen(
        sqlite_storage.engine,
        "connect",
        lambda dbapi, record: dbapi.set_trace_callback(statements.append),
    )
    through_sqlalchemy: list[str] = []
    sa.event.listen(
        sqlite_storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *args: through_sqlalchemy.append(statement),
    )
    queue.enqueue_many(JobSpec(type="t", payload={"n": n}) for n in range(300))
    # The inserts go straight to the driver (executemany), in one transaction.
    assert not any(s.startswith("INSERT") for s in through_sqlalchemy)
    assert [s for s in statements if not s.startswith("INSERT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert sum(s.startswith("INSERT") for s in statements) == 300
    assert len(queue.list_jobs(limit=None)) == 300


def test_get_job_unknown_raises_job_not_found(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        queue.get_job("nope")


def test_status_listings(queue: JobQueue) -> None:
    a, b = queue.enqueue("t"), queue.enqueue("t")
    queue.cancel(b)
    assert [j.id for j in queue.get_pending_jobs()] == [a]
    assert queue.get_running_jobs() == []
    assert queue.get_completed_jobs() == []
    assert queue.get_failed_jobs() == []
    assert [j.id for j in queue.list_jobs(status="cancelled")] == [b]
    assert [j.id for j in queue.list_jobs(status=JobStatus.PENDING, limit=1)] == [a]


def test_list_jobs_rejects_an_unknown_status(queue: JobQueue) -> None:
    with pytest.raises(InvalidJobError, match="unknown status 'done'"):
        queue.list_jobs(status="done")


def test_counts_show_every_status_per_queue(queue: JobQueue) -> None:
    queue.enqueue("t")
    queue.cancel(queue.enqueue("t", queue="other"))
    assert queue.counts() == {
        "default": {
            "waiting": 0,
            "pending": 1,
            "running": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
        },
        "other": {
            "waiting": 0,
            "pending": 0,
            "running": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": 1,
        },
    }


def test_cancel_and_retry(queue: JobQueue) -> None:
    job_id = queue.enqueue("t")
    assert queue.cancel(job_id)
    assert not queue.cancel(job_id)
    assert queue.retry(job_id)
    assert queue.get_job(job_id).status == "pending"
    assert not queue.retry(job_id)
    with pytest.raises(JobNotFound):
        queue.cancel("missing")


def test_purge_removes_old_finished_jobs(queue: JobQueue) -> None:
    keep = queue.enqueue("t")
    queue.cancel(queue.enqueue("t"))
    assert queue.purge(timedelta(hours=1)) == 0
    with pytest.raises(InvalidJobError):
        queue.purge(-1)
    with pytest.raises(InvalidJobError, match="cannot purge pending"):
        queue.purge(0, statuses=["pending"])
    assert queue.storage.purge(statuses=[JobStatus.CANCELLED], older_than=-1) == 1
    assert [j.id for j in queue.list_jobs()] == [keep]


# -- handlers and configuration ------------------------------------------------------------


def test_a_type_gets_one_handler(queue: JobQueue) -> None:
    @queue.handler("t")
    def first(ctx: Any) -> None:
        return None

    assert queue.handlers["t"].fn is first
    with pytest.raises(ConfigurationError, match="already has a handler"):
        queue.register("t", first)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"timeout": 0}, {"timeout": "5"}],
    ids=["max_retries", "zero timeout", "timeout str"],
)
def test_bad_handler_options_raise_configuration_error(
    queue: JobQueue, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        queue.register("t", lambda ctx: None, **kwargs)


def test_handler_must_be_callable(queue: JobQueue) -> None:
    with pytest.raises(ConfigurationError, match="not callable"):
        queue.register("t", "not a function")  # type: ignore[arg-type]


def test_queue_options_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        JobQueue(MemoryStorage(), max_retries=-1)
    with pytest.raises(ConfigurationError):
        JobQueue(MemoryStorage(), default_queue="")
    with pytest.raises(ConfigurationError):
        JobQueue(MemoryStorage(), max_payload_bytes=0)
    with pytest.raises(ConfigurationError, match="must be a Storage, a database URL or"):
        JobQueue(42)


def test_default_queue_is_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    queue = JobQueue()
    job_id = queue.enqueue("t")
    assert (tmp_path / "jobs.db").exists()
    queue.close()
    assert JobQueue(f"sqlite:///{tmp_path / 'jobs.db'}").get_job(job_id).type == "t"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a valid database URL"),
        ("oracle://scott:tiger@db/orcl", "unsupported database 'oracle'"),
        ("postgresql+nosuchdriver://u@h/db", "no SQLAlchemy driver"),
    ],
)
def test_bad_urls_raise_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        JobQueue(url)
    assert "tiger" not in str(info.value)


def test_missing_driver_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match=r'pip install -e "\.\[postgres\]"'):
        SQLAlchemyStorage("postgresql://u:pw@localhost/db")


def test_passwords_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SQLAlchemyStorage("postgresql://user:s3cret@localhost/db")
    assert "s3cret" not in repr(storage)
    assert "s3cret" not in repr(JobQueue(storage))
    with pytest.raises(ConfigurationError) as info:
        SQLAlchemyStorage("postgresql://user:s3cret@localhost:notaport/db")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "1abc", "a-b", "x;drop table", "a" * 41])
def test_table_prefix_must_be_an_identifier(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        SQLAlchemyStorage(f"sqlite:///{tmp_path / 'j.db'}", table_prefix=prefix)
