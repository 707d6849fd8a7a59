"""Bad input at the API boundary: a typed DBJobQError, the same on every backend."""

from __future__ import annotations

import math
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
    RetryPolicy,
)
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage

# -- ids and filters (every backend) -------------------------------------------------------

NOT_STR = [123, None, b"0190c1d2-aaaa", ["id"], 1.5]
NO_JOB_CAN_HAVE = ["\ud800", "0190c1d2-\udc80", "a\x00b"]


@pytest.mark.parametrize("job_id", NOT_STR, ids=repr)
def test_an_id_that_is_not_a_str_is_an_invalid_argument(queue: JobQueue, job_id: Any) -> None:
    queue.enqueue("task")
    for call in (queue.get_job, queue.cancel, queue.retry):
        with pytest.raises(InvalidJobError, match="job id must be a str") as info:
            call(job_id)
        assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("job_id", NO_JOB_CAN_HAVE, ids=ascii)
def test_an_id_no_job_can_have_is_not_found(queue: JobQueue, job_id: str) -> None:
    queue.enqueue("task")
    for call in (queue.get_job, queue.cancel, queue.retry):
        with pytest.raises(JobNotFound):
            call(job_id)


@pytest.mark.parametrize("text", NO_JOB_CAN_HAVE, ids=ascii)
def test_a_filter_no_job_can_match_finds_nothing(queue: JobQueue, text: str) -> None:
    queue.enqueue("task")
    assert queue.list_jobs(queue=text) == []
    assert queue.list_jobs(type=text) == []
    assert queue.list_jobs("pending", queue="default", type=text) == []
    assert len(queue.list_jobs(queue="default", type="task")) == 1


@pytest.mark.parametrize("value", [123, b"default", ["default"]], ids=repr)
def test_a_filter_that_is_not_a_str_is_an_invalid_argument(queue: JobQueue, value: Any) -> None:
    for filters in ({"queue": value}, {"type": value}):
        with pytest.raises(InvalidJobError, match="must be a str"):
            queue.list_jobs(**filters)
    with pytest.raises(InvalidJobError, match="unknown status"):
        queue.list_jobs("\ud800")


@pytest.mark.parametrize("text", NO_JOB_CAN_HAVE, ids=ascii)
def test_text_no_job_can_hold_is_refused_at_enqueue(queue: JobQueue, text: str) -> None:
    for kwargs in (
        {"queue": text},
        {"unique_key": text},
        {"payload": {"k": text}},
        {"payload": {text: 1}},
        {"meta": {"k": text}},
    ):
        with pytest.raises(InvalidJobError):
            queue.enqueue("task", **kwargs)
    with pytest.raises(InvalidJobError):
        queue.enqueue(text)
    assert queue.list_jobs() == []


# -- constructor options ----------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"busy_timeout": -1}, "busy_timeout must be between 0 and"),
        ({"busy_timeout": math.nan}, "busy_timeout must be between 0 and"),
        ({"busy_timeout": math.inf}, "busy_timeout must be between 0 and"),
        ({"busy_timeout": 1e12}, "busy_timeout must be between 0 and"),
        ({"busy_timeout": "x"}, "busy_timeout must be a number of seconds, got str"),
        ({"busy_timeout": None}, "busy_timeout must be a number of seconds, got NoneType"),
        ({"busy_timeout": True}, "busy_timeout must be a number of seconds, got bool"),
        ({"engine_options": "pool_size=5"}, "engine_options must be a mapping"),
        ({"engine_options": [("echo", True)]}, "engine_options must be a mapping"),
        ({"engine_options": {1: True}}, "engine_options must be a mapping"),
        ({"engine_options": {"connect_args": "x"}}, r"engine_options\['connect_args'\]"),
        ({"engine_options": {"no_such_option": 1}}, "bad engine options"),
        ({"listen": "no"}, "listen must be True or False"),
        ({"listen": 1}, "listen must be True or False"),
        ({"listen": None}, "listen must be True or False"),
        ({"table_prefix": ""}, "table_prefix must be"),
        ({"table_prefix": "1x_"}, "table_prefix must be"),
        ({"table_prefix": "a-b"}, "table_prefix must be"),
        ({"table_prefix": "x" * 41}, "table_prefix must be"),
        ({"table_prefix": 5}, "table_prefix must be"),
        ({"schema": "a;b"}, "schema must be"),
        ({"schema": 5}, "schema must be"),
        ({"schema": "jobs"}, "schema is not supported on SQLite"),
    ],
    ids=repr,
)
def test_sqlalchemy_storage_options_are_checked_at_construction(
    db: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLAlchemyStorage(db, **options)


@pytest.mark.parametrize("url", [5, None, object(), b"sqlite://"], ids=repr)
def test_sqlalchemy_storage_url_must_be_a_url_or_an_engine(url: Any) -> None:
    with pytest.raises(ConfigurationError, match="database URL or a SQLAlchemy Engine"):
        SQLAlchemyStorage(url)


def test_engine_options_cannot_apply_to_a_made_engine(db: str) -> None:
    engine = sa.create_engine(db)
    with pytest.raises(ConfigurationError, match="engine_options cannot apply to an Engine"):
        SQLAlchemyStorage(engine, engine_options={"echo": True})
    SQLAlchemyStorage(engine, engine_options={}).close()
    engine.dispose()


@pytest.mark.parametrize("busy_timeout", [0, 0.5, 30, 86400.0])
def test_sensible_busy_timeouts_are_taken(db: str, busy_timeout: float) -> None:
    storage = SQLAlchemyStorage(db, busy_timeout=busy_timeout, listen=False)
    storage.initialize()
    storage.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"storage": 5}, "storage must be a Storage, a database URL or"),
        ({"storage": object()}, "storage must be a Storage, a database URL or"),
        ({"default_queue": ""}, "default_queue must not be empty"),
        ({"default_queue": " "}, "default_queue must not be empty"),
        ({"default_queue": 5}, "default_queue must be a str"),
        ({"default_queue": "\ud800"}, "default_queue is not valid Unicode"),
        ({"default_queue": "q\x00"}, "default_queue must not contain NUL"),
        ({"max_retries": -1}, "max_retries must be between 0 and 1000"),
        ({"max_retries": 1001}, "max_retries must be between 0 and 1000"),
        ({"max_retries": "3"}, "max_retries must be an int"),
        ({"max_retries": 2.0}, "max_retries must be an int"),
        ({"max_retries": True}, "max_retries must be an int"),
        ({"retry_policy": "fast"}, "retry_policy must be a RetryPolicy or None, got str"),
        ({"retry_policy": {"base_delay": 1}}, "retry_policy must be a RetryPolicy or None"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be a positive int or None"),
        ({"max_payload_bytes": -1}, "max_payload_bytes must be a positive int or None"),
        ({"max_payload_bytes": "1"}, "max_payload_bytes must be a positive int or None"),
        ({"max_payload_bytes": 1.5}, "max_payload_bytes must be a positive int or None"),
        ({"max_payload_bytes": True}, "max_payload_bytes must be a positive int or None"),
    ],
    ids=repr,
)
def test_job_queue_options_are_checked_at_construction(
    options: dict[str, Any], message: str
) -> None:
    storage = options.pop("storage", None) or MemoryStorage()
    with pytest.raises(ConfigurationError, match=message) as info:
        JobQueue(storage, **options)
    assert isinstance(info.value, (DBJobQError, ValueError))


def test_job_queue_takes_sensible_options() -> None:
    queue = JobQueue(
        MemoryStorage(),
        default_queue="emails",
        max_retries=0,
        retry_policy=RetryPolicy(base_delay=1),
        max_payload_bytes=None,
    )
    assert (queue.default_queue, queue.max_retries, queue.max_payload_bytes) == ("emails", 0, None)
