"""JSONFormatter keeps what callers add to a record, not only dbjobq's own fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.jsonlog import JSONFormatter
from dbjobq.storage import MemoryStorage


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    log = logging.getLogger("tests.jsonlog")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_extra_fields_such_as_a_correlation_id_are_kept(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logged
    log.info("charged %s", "ada", extra={"correlation_id": "c-42", "amount": 12.5})
    (line,) = _lines(out)
    assert line["message"] == "charged ada"
    assert line["correlation_id"] == "c-42"
    assert line["amount"] == 12.5
    assert set(line) == {"time", "level", "logger", "message", "correlation_id", "amount"}


def test_nested_json_goes_in_as_it_is_and_anything_else_as_its_repr(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logged

    class Order:
        def __repr__(self) -> str:
            return "<Order 7>"

    log.info("x", extra={"ctx": {"ids": [1, 2], "ok": True}, "order": Order(), "nan": float("nan")})
    (line,) = _lines(out)
    assert line["ctx"] == {"ids": [1, 2], "ok": True}
    assert line["order"] == "<Order 7>"
    assert line["nan"] == "nan"  # strict JSON: NaN is not a JSON number


def test_an_extra_field_does_not_replace_a_fixed_key_and_exceptions_stay(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logged
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"level": "fake", "time": "fake", "request": "r-1"})
    (line,) = _lines(out)
    assert (line["level"], line["request"]) == ("ERROR", "r-1")
    assert line["time"] != "fake"
    assert "ValueError: boom" in str(line["exception"])


def test_a_handlers_extra_fields_join_the_job_id(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    """`ctx.logger` records carry the job's id and type and the handler's own extras."""
    _, out = logged
    handler = logging.getLogger("tests.jsonlog").handlers[0]
    job_log = logging.getLogger("dbjobq.job")
    job_log.addHandler(handler)
    job_log.setLevel(logging.INFO)
    queue = JobQueue(MemoryStorage())

    @queue.handler("charge")
    def charge(ctx: JobContext) -> None:
        ctx.logger.info("charging", extra={"correlation_id": ctx.job.meta["cid"]})

    try:
        job_id = queue.enqueue("charge", meta={"cid": "c-7"})
        assert Worker(queue).run_until_empty() == 1
    finally:
        job_log.removeHandler(handler)
    (line,) = [line for line in _lines(out) if line["logger"] == "dbjobq.job"]
    assert (line["job_id"], line["job_type"], line["correlation_id"]) == (job_id, "charge", "c-7")
