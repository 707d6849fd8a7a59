"""Unique keys with a window and a conflict rule (`Capabilities.unique_rules`) on SQL.

A call with any job that asks for `unique_for` or an `on_conflict` other than
`"return"` takes this route, in the order given: runs of jobs without a key go
through the dialect's fast route (`insert_plain`: COPY, the driver's
executemany, a multi-row INSERT), and each job with a key is looked up, then
inserted, one at a time. The unique index on unfinished keys still decides
races: of concurrent inserts of one key, one is stored and the others find it
as their holder when they look again.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.errors import DuplicateJobError, StorageError
from dbjobq.job import NewJob
from dbjobq.storage._sql.rows import insert_params
from dbjobq.storage._sql.schema import PENDING, db_now, db_now_plus, seconds

if TYPE_CHECKING:
    from dbjobq.storage._sql.dialects.base import Dialect

_WAITING: sa.ColumnElement[str] = sa.literal_column("'waiting'")
REPLACEABLE = (PENDING, _WAITING)
"""The states of a holder that `on_conflict="replace"` changes."""

_ROUNDS = 10  # a key that changes hands this often in one call is an error


def insert_in_order(dialect: Dialect, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
    """Insert `jobs` in `conn`'s transaction, keeping unique rules; the id for each.

    Raises:
        DuplicateJobError: If a job with `on_conflict="raise"` met a holder; the
            caller's transaction must be rolled back (or its savepoint).
    """
    ids: list[str] = []
    for keyed, group in itertools.groupby(jobs, key=lambda job: job.unique_key is not None):
        run = list(group)
        if keyed:
            ids.extend(insert_keyed(dialect, conn, job) for job in run)
        else:
            dialect.insert_plain(conn, run)
            ids.extend(job.id for job in run)
    return ids


def insert_keyed(dialect: Dialect, conn: Connection, job: NewJob) -> str:
    """Insert one job with a unique key, or apply its `on_conflict` to the holder."""
    key = job.unique_key
    assert key is not None
    for _ in range(_ROUNDS):
        # Stored already (a call sent again): its own id, whatever became of it.
        if dialect.exists(conn, job.id):
            return job.id
        holder = find_holder(dialect, conn, key, job.unique_for)
        if holder is not None:
            return meet_holder(dialect, conn, job, holder)
        # Skipped if a concurrent call stored a job with the key meanwhile: the
        # next round finds that job.
        conn.execute(dialect.insert_statement(), [insert_params(job)])
    raise StorageError(f"unique key {key!r} keeps changing hands")


def find_holder(dialect: Dialect, conn: Connection, key: str, within: float | None) -> str | None:
    """The id of the job that holds `key`, or `None`.

    An unfinished job with the key; else, with `within`, the job with the key
    that finished last, if that was less than `within` seconds ago.
    """
    c = dialect.jobs.c
    found = conn.execute(sa.select(c.id).where(dialect.unique_holder(key))).scalar()
    if found is None and within is not None:
        recent = (
            sa.select(c.id)
            .where(
                c.unique_key == key,
                c.finished_at.is_not(None),
                c.finished_at > db_now_plus(seconds("u_within", -within)),
            )
            .order_by(c.finished_at.desc(), c.id.desc())
            .limit(1)
        )
        found = conn.execute(recent).scalar()
    return None if found is None else str(found)


def meet_holder(dialect: Dialect, conn: Connection, job: NewJob, holder_id: str) -> str:
    """Apply `job.on_conflict` against the holder; its id."""
    if job.on_conflict == "raise":
        assert job.unique_key is not None
        raise DuplicateJobError(job.unique_key, holder_id)
    if job.on_conflict == "replace":
        replace(dialect, conn, job, holder_id)
    return holder_id


def replace(dialect: Dialect, conn: Connection, job: NewJob, holder_id: str) -> None:
    """Give a pending or waiting holder `job`'s payload, concurrency key and run_at.

    The status test is in the UPDATE: a holder claimed or finished since the
    lookup is left as it is.
    """
    c = dialect.jobs.c
    values: dict[str, Any] = {
        "payload": job.payload_json,
        "concurrency_key": job.concurrency_key,
        "run_at": sa.func.coalesce(
            sa.bindparam("r_run_at", job.run_at, type_=c.run_at.type),
            db_now_plus(seconds("r_delay", job.delay)),
        ),
        "updated_at": db_now(),
    }
    stmt = (
        sa.update(dialect.jobs).where(c.id == holder_id, c.status.in_(REPLACEABLE)).values(**values)
    )
    conn.execute(stmt)
