"""The side tables of `SQLAlchemyStorage`: schedules, pauses, the worker registry, rate starts.

A mixin over the storage's dialect and its `run`: each method one short
transaction on a table beside the jobs table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.job import NewJob
from dbjobq.registry import WorkerInfo
from dbjobq.storage._sql.dialects.base import Dialect
from dbjobq.storage._sql.rows import worker_info, worker_values
from dbjobq.storage._sql.schema import db_now, db_now_plus, seconds

__all__ = ["Runs", "SideTables"]

T = TypeVar("T")


class Runs(Protocol):
    """`Dialect.run`: `fn` in one transaction, transient errors retried."""

    def __call__(
        self, what: str, fn: Callable[[Connection], T], *, write: bool, single: bool = False
    ) -> T: ...


class SideTables:
    """Schedules' last ticks, paused queues, worker records and rate starts."""

    _dialect: Dialect
    _run: Runs
    _periodic: sa.Table
    _paused: sa.Table
    _workers: sa.Table

    # -- periodic jobs -------------------------------------------------------------------

    _NO_TICK = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        p = self._periodic.c
        ensure = self._dialect.insert_ignoring(self._periodic).values(
            name=schedule, last_tick=self._NO_TICK
        )
        # Compare-and-set: of all the callers for one tick, exactly one moves it on.
        advance = (
            sa.update(self._periodic)
            .where(p.name == schedule, p.last_tick < tick)
            .values(last_tick=tick)
        )

        def run(conn: Connection) -> bool:
            conn.execute(ensure)
            if conn.execute(advance).rowcount != 1:
                return False
            self._dialect.insert_jobs(conn, [job])
            return True

        return self._run("enqueue_tick", run, write=True)

    def last_tick(self, schedule: str) -> datetime | None:
        p = self._periodic.c
        stmt = sa.select(p.last_tick).where(p.name == schedule)
        found = self._run("last_tick", lambda conn: conn.execute(stmt).scalar(), write=False)
        return None if found is None or found <= self._NO_TICK else found

    # -- pausing queues -------------------------------------------------------------------

    def pause_queue(self, queue: str) -> bool:
        p = self._paused.c
        found = sa.select(p.queue).where(p.queue == queue)
        insert = self._dialect.insert_ignoring(self._paused).values(queue=queue, paused_at=db_now())

        def run(conn: Connection) -> bool:
            # Not the INSERT's rowcount: drivers do not all report it for a skipped row.
            if conn.execute(found).first() is not None:
                return False
            conn.execute(insert)
            return True

        return self._run("pause_queue", run, write=True)

    def resume_queue(self, queue: str) -> bool:
        stmt = sa.delete(self._paused).where(self._paused.c.queue == queue)
        return bool(self._run("resume_queue", lambda c: c.execute(stmt).rowcount, write=True))

    def paused_queues(self) -> set[str]:
        stmt = sa.select(self._paused.c.queue)
        return set(
            self._run("paused_queues", lambda c: c.execute(stmt).scalars().all(), write=False)
        )

    # -- the worker registry --------------------------------------------------------------

    def save_worker(self, info: WorkerInfo) -> None:
        values = {**worker_values(info), "last_seen": db_now()}
        stmt = self._dialect.upsert(self._workers, {"id": info.id, **values}, values)
        self._run("save_worker", lambda conn: conn.execute(stmt), write=True)

    def remove_worker(self, worker_id: str) -> None:
        stmt = sa.delete(self._workers).where(self._workers.c.id == worker_id)
        self._run("remove_worker", lambda conn: conn.execute(stmt), write=True)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        w = self._workers.c
        since = db_now_plus(seconds("seen", -float(seen_within)))
        stmt = sa.select(self._workers).where(w.last_seen >= since).order_by(w.id)

        return self._run(
            "list_workers",
            lambda conn: [worker_info(row) for row in conn.execute(stmt)],
            write=False,
        )

    def prune_workers(self, *, older_than: float) -> int:
        w = self._workers.c
        cutoff = db_now_plus(seconds("age", -float(older_than)))
        stmt = sa.delete(self._workers).where(w.last_seen < cutoff)
        return self._run("prune_workers", lambda conn: conn.execute(stmt).rowcount, write=True)

    # -- rate limits ------------------------------------------------------------------

    def recent_starts(self, key: str, *, within: float) -> list[datetime]:
        r = self._dialect.tables.rate_starts.c
        since = db_now_plus(seconds("within", -float(within)))
        stmt = (
            sa.select(r.started_at)
            .where(r.rate_key == key, r.started_at > since)
            .order_by(r.started_at)
        )
        return self._run(
            "recent_starts",
            lambda conn: list(conn.execute(stmt).scalars()),
            write=False,
            single=True,
        )

    def now(self) -> datetime:
        """The database server's current time."""
        found = self._run(
            "now",
            lambda conn: conn.execute(sa.select(db_now())).scalar(),
            write=False,
            single=True,
        )
        assert found is not None
        return found
