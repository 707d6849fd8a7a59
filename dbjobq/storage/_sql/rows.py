"""The one mapping between jobs and rows of the jobs table, both ways.

Every insert route (SQLAlchemy's executemany, SQLite's driver, PostgreSQL's COPY)
takes a job's values from `insert_row`, in the order of `INSERT_COLUMNS`; every
read builds its `Job` through `JobReader`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from dbjobq.errors import StorageError
from dbjobq.job import Job, JobStatus, NewJob
from dbjobq.payload import dumps
from dbjobq.registry import WorkerInfo
from dbjobq.storage._sql.schema import CORRELATION_LENGTH, Corrupt

STATUS = {s.value: s for s in JobStatus}  # stored text -> JobStatus

HANDLERS = -1
"""Stored in the NOT NULL max_retries column for `Job.max_retries=None` ("the
handler's"): no schema change, and it sorts below every real value in
`rescue_expired`'s test."""

INSERT_COLUMNS = (
    *("id", "type", "queue", "payload", "priority", "max_retries"),
    *("run_at", "delay", "unique_key", "meta", "timeout", "concurrency_key"),
    *("group_id", "correlation_id"),
)
"""What an insert takes from a `NewJob`, in `insert_row`'s order. `run_at` and
`delay` are not both stored: the row's run_at is `run_at`, or the database's
"now" plus `delay`."""

INSERT_PARAMS = tuple({"run_at": "p_run_at", "delay": "p_delay"}.get(c, c) for c in INSERT_COLUMNS)
"""The bind parameters of the jobs INSERT, one per `INSERT_COLUMNS` entry (run_at
and delay are named apart from the columns the statement computes from them)."""


def job_builder(names: Sequence[str]) -> Callable[[Iterable[Any]], Job]:
    """A fast `Job` constructor for storage rows: values of every field, in `names` order.

    It skips the generated `__init__` (a frozen dataclass sets each of its 23
    fields through `object.__setattr__`), which dominates turning a claimed batch
    into jobs. The values are taken as they are, so they must be of the right types.
    """
    fields = {field.name for field in dataclasses.fields(Job)}
    if set(names) != fields or len(names) != len(fields):
        raise ValueError(f"a Job needs exactly the fields {sorted(fields)}")
    setters = [getattr(Job, name).__set__ for name in names]
    new = object.__new__

    def build(values: Iterable[Any]) -> Job:
        job = new(Job)
        for set_value, value in zip(setters, values, strict=True):
            set_value(job, value)
        return job

    return build


def insert_row(job: NewJob) -> tuple[Any, ...]:
    """A job's values for an INSERT, in `INSERT_COLUMNS` order; JSON as stored text."""
    return (
        job.id,
        job.type,
        job.queue,
        job.payload_json,
        job.priority,
        HANDLERS if job.max_retries is None else job.max_retries,
        job.run_at,
        job.delay,
        job.unique_key,
        job.meta_json,
        job.timeout,
        job.concurrency_key,
        job.group_id,
        correlation_of(job.meta),
    )


def correlation_of(meta: Mapping[str, Any]) -> str | None:
    """What `jobs.correlation_id` stores: `meta["correlation_id"]` if it is text.

    Cut to `CORRELATION_LENGTH` characters: a longer id is listed by its stored
    prefix, then checked against `meta` (see `SQLAlchemyStorage.list_jobs`).
    """
    value = meta.get("correlation_id")
    if not isinstance(value, str):
        return None
    return str(value)[:CORRELATION_LENGTH]


def insert_params(job: NewJob) -> dict[str, Any]:
    """A job's values for the jobs INSERT, by bind parameter name."""
    return dict(zip(INSERT_PARAMS, insert_row(job), strict=True))


def findable(text: object) -> bool:
    """Whether `text` could be stored at all: an id or name that is not cannot exist.

    Such values would otherwise fail in the driver (a lone surrogate cannot be
    encoded, PostgreSQL refuses NUL characters, a number is not text).
    """
    if type(text) is not str:
        return isinstance(text, str) and findable(str(text))
    if text.isascii():
        return "\x00" not in text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def worker_values(info: WorkerInfo) -> dict[str, Any]:
    """A registry entry's values for its row (all but `id` and `last_seen`)."""
    return {
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": dumps(list(info.queues)),
        "types": dumps(list(info.types)),
        "started_at": info.started_at,
        "current_job": info.current_job,
        "jobs_processed": info.jobs_processed,
    }


def worker_info(row: sa.Row[Any]) -> WorkerInfo:
    """The registry entry of a row of the workers table."""
    return WorkerInfo(
        id=row.id,
        hostname=row.hostname,
        pid=row.pid,
        queues=tuple(row.queues),
        types=tuple(row.types),
        started_at=row.started_at,
        last_seen=row.last_seen,
        current_job=row.current_job,
        jobs_processed=row.jobs_processed,
    )


class JobReader:
    """Builds `Job`s from rows of one jobs table (all its columns, in order)."""

    def __init__(self, jobs: sa.Table) -> None:
        names = [column.name for column in jobs.c]
        wanted = {field.name for field in dataclasses.fields(Job)}
        self.columns = [(i, name) for i, name in enumerate(names) if name in wanted]
        fields = [name for _, name in self.columns]
        at = fields.index
        self._quick = (
            [i for i, _ in self.columns],
            *(at("status"), at("payload"), at("meta"), at("result"), at("max_retries")),
            job_builder(fields),
        )

    def fields(self, row: sa.Row[Any]) -> dict[str, Any]:
        """A row as Job fields, as stored."""
        return {name: row[i] for i, name in self.columns}

    def sound_job(self, row: sa.Row[Any]) -> Job | None:
        """The Job of a row, quickly; `None` if the row may be corrupt (look closer)."""
        indexes, at_status, at_payload, at_meta, at_result, at_retries, build = self._quick
        values = [row[i] for i in indexes]
        status = STATUS.get(values[at_status])
        retries = values[at_retries]
        if retries == HANDLERS:
            values[at_retries] = None
        elif type(retries) is not int or retries < 0:
            return None
        if (
            status is None
            or type(values[at_payload]) is not dict
            or type(values[at_meta]) is not dict
            or type(values[at_result]) is Corrupt
        ):
            return None
        values[at_status] = status
        job: Job = build(values)
        return job

    def to_job(self, row: sa.Row[Any]) -> Job:
        """Build a Job from a row; `StorageError` names the job if the row is corrupt."""
        job = self.sound_job(row)
        if job is not None:
            return job
        fields = self.fields(row)
        problem = corruption(fields)
        if problem:
            raise StorageError(f"job {fields['id']} is corrupt: {problem}")
        fields["status"] = STATUS[fields["status"]]
        if fields["max_retries"] == HANDLERS:
            fields["max_retries"] = None
        return Job(**fields)


def corruption(fields: Mapping[str, Any]) -> str | None:
    """What is wrong with a row edited by hand, or `None` if nothing is."""
    for name in ("payload", "meta", "result"):
        if isinstance(fields[name], Corrupt):
            return f"{name} is not valid JSON ({fields[name].error})"
    for name in ("payload", "meta"):
        if not isinstance(fields[name], dict):
            return f"{name} is not a JSON object"
    if fields["status"] not in STATUS:
        return f"unknown status {fields['status']!r}"
    retries = fields["max_retries"]
    if not isinstance(retries, int) or retries < HANDLERS:
        return f"max_retries is {retries!r}, not a count of retries"
    return None
