"""What each change of a job's state writes to its row (the SET of its UPDATE).

Times are the database's (`db_now`); every end of a lease clears it (`RELEASED`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa

from dbjobq.job import JobStatus
from dbjobq.storage._sql.rows import HANDLERS
from dbjobq.storage._sql.schema import PENDING, RUNNING, db_now, db_now_plus, seconds

RELEASED: Mapping[str, Any] = {"lease_token": None, "lease_expires_at": None, "worker_id": None}
"""What every end of a lease sets."""


class LeaseChange(NamedTuple):
    """An UPDATE of the jobs among a batch of leases that are still held."""

    tag: str
    """The kind of change: a dialect may build one statement per kind, and reuse it."""
    values: Mapping[str, Any]
    """What the UPDATE sets."""
    params: Mapping[str, Any] | None = None
    """The values of bind parameters in `values`."""


def claimed(jobs: sa.Table) -> dict[str, Any]:
    """A claim; bind parameters `c_worker`, `c_token` and `c_lease` (seconds)."""
    c = jobs.c
    return {
        "status": RUNNING,
        "attempts": c.attempts + 1,
        "worker_id": sa.bindparam("c_worker", type_=c.worker_id.type),
        "lease_token": sa.bindparam("c_token", type_=c.lease_token.type),
        "lease_expires_at": db_now_plus(sa.bindparam("c_lease", type_=sa.Double())),
        "started_at": db_now(),
        "updated_at": db_now(),
        "progress": None,
        "progress_message": None,
    }


def completed(result: Any) -> dict[str, Any]:
    """Success; `result` is JSON text, `None` or a bind parameter that holds either."""
    return {
        "status": JobStatus.COMPLETED.value,
        "result": result,
        "finished_at": db_now(),
        "updated_at": db_now(),
        **RELEASED,
    }


def released(jobs: sa.Table) -> dict[str, Any]:
    """A claimed job given back unstarted: its attempt is not used up."""
    return {
        "status": PENDING,
        "attempts": jobs.c.attempts - 1,
        "started_at": None,
        "updated_at": db_now(),
        **RELEASED,
    }


def snoozed(jobs: sa.Table, delay: float) -> dict[str, Any]:
    """A running job put back unfinished, due in `delay` seconds: as `released`."""
    return {**released(jobs), "run_at": db_now_plus(seconds("delay", delay))}


def failed(error: Any, retry_in: float | None) -> dict[str, Any]:
    """A failed attempt: pending again in `retry_in` seconds, or failed for good."""
    values: dict[str, Any] = {"last_error": error, "updated_at": db_now(), **RELEASED}
    if retry_in is None:
        values.update(status=JobStatus.FAILED.value, finished_at=db_now())
    else:
        values.update(status=PENDING, run_at=db_now_plus(seconds("retry_in", retry_in)))
    return values


def rescues(
    jobs: sa.Table, lost: sa.ColumnElement[bool], why: tuple[str, str], retry_in: float
) -> tuple[sa.Update, sa.Update]:
    """The UPDATEs that retry, and fail, the `lost` jobs (retries left or not).

    `last_error` is `why` around the worker id. The one place that decides
    between retry and failure, for every kind of rescue.
    """
    c = jobs.c
    error = sa.literal(why[0]) + sa.func.coalesce(c.worker_id, "?") + sa.literal(why[1])
    retries_left = sa.or_(c.attempts <= c.max_retries, c.max_retries == HANDLERS)
    to_retry = sa.update(jobs).where(lost, retries_left).values(**failed(error, retry_in))
    used_up = sa.and_(c.attempts > c.max_retries, c.max_retries != HANDLERS)
    to_fail = sa.update(jobs).where(lost, used_up).values(**failed(error, None))
    return to_retry, to_fail


def cancelled() -> dict[str, Any]:
    """A cancel of a pending or running job."""
    return {
        "status": JobStatus.CANCELLED.value,
        "finished_at": db_now(),
        "updated_at": db_now(),
        **RELEASED,
    }


def retried() -> dict[str, Any]:
    """A failed or cancelled job made pending again, with fresh attempts, due now."""
    return {
        "status": PENDING,
        "attempts": 0,
        "run_at": db_now(),
        "finished_at": None,
        "result": None,
        "progress": None,
        "progress_message": None,
        "updated_at": db_now(),
    }


def corrupt(problem: str) -> dict[str, Any]:
    """A row that cannot be read (edited by hand), failed with the reason."""
    return {
        "status": JobStatus.FAILED.value,
        "last_error": f"StorageError: the stored job is corrupt: {problem}",
        "finished_at": db_now(),
        "updated_at": db_now(),
        **RELEASED,
    }
