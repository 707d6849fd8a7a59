"""The workflow methods of `SQLAlchemyStorage`: groups, parents and children, settling.

A mixin over the storage's dialect and its `run`, as `side.SideTables` is; the
SQL is in `workflows`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.errors import GroupNotFound, JobNotFound, StorageError
from dbjobq.job import Job, NewJob
from dbjobq.storage._sql import workflows
from dbjobq.storage._sql.dialects.base import Dialect
from dbjobq.storage._sql.rows import STATUS, JobReader, findable
from dbjobq.storage._sql.schema import db_now
from dbjobq.storage._sql.side import Runs
from dbjobq.workflow import GroupStatus

__all__ = ["WorkflowTables"]

logger = logging.getLogger("dbjobq.storage.sqlalchemy_storage")

ORPHAN_CHECK_EVERY = 600.0
"""Seconds between two looks of `settle_waiting` for parents deleted by hand (each
reads every unsettled edge, so they are rare: the first call of a storage object,
then every ten minutes)."""


class WorkflowTables:
    """`enqueue_group`, `get_group`, `parents`, `children` and `settle_waiting`.

    And the storage's helpers that finish jobs with children: `_finish_held`,
    `_settle_later`.
    """

    _dialect: Dialect
    _run: Runs
    _reader: JobReader
    _jobs: sa.Table
    _held: Callable[[str, str], sa.ColumnElement[bool]]
    _orphans_checked: float | None = None

    def enqueue_group(
        self, group_id: str, members: Sequence[NewJob], callback: NewJob | None
    ) -> list[str]:
        """Store a group, its members and its callback in one transaction.

        The group's row records the callback's id as stored (the id of the job
        holding its unique key, if one did). A group sent again (a call retried
        after a lost acknowledgement) keeps its first row.

        Raises:
            InvalidJobError: If a `depends_on` id is unknown (nothing is stored).
        """
        jobs = [
            job if job.group_id == group_id else dataclasses.replace(job, group_id=group_id)
            for job in members
        ]
        if callback is not None:
            jobs.append(callback)
        groups = self._dialect.tables.groups
        dialect = self._dialect

        def run(conn: Connection) -> list[str]:
            ids = dialect.insert_jobs(conn, jobs) if jobs else []
            row = {
                "id": group_id,
                "callback_id": ids[-1] if callback is not None else None,
                "created_at": db_now(),
            }
            conn.execute(dialect.insert_ignoring(groups).values(**row))
            return ids

        return self._run("enqueue_group", run, write=True)

    def get_group(self, group_id: str) -> GroupStatus:
        """How many members of the group are in each status, and its callback.

        Raises:
            GroupNotFound: If there is no such group (or it was purged).
        """
        if not findable(group_id):
            raise GroupNotFound(group_id)
        g, c = self._dialect.tables.groups.c, self._jobs.c
        head = sa.select(g.callback_id, g.created_at).where(g.id == group_id)
        counts = (
            sa.select(c.status, sa.func.count()).where(c.group_id == group_id).group_by(c.status)
        )

        def run(conn: Connection) -> GroupStatus | None:
            found = conn.execute(head).first()
            if found is None:
                return None
            per_status = {
                STATUS[status]: n for status, n in conn.execute(counts) if status in STATUS
            }
            return GroupStatus(group_id, found[0], found[1], per_status)

        status = self._run("get_group", run, write=False)
        if status is None:
            raise GroupNotFound(group_id)
        return status

    def parents(self, job_id: str) -> list[Job]:
        """The stored jobs that `job_id` depends on, by id.

        Raises:
            JobNotFound: If there is no such job.
        """
        d = self._dialect.tables.dependencies.c
        return self._linked("parents", job_id, d.child_id, d.parent_id)

    def children(self, job_id: str) -> list[Job]:
        """The stored jobs that depend on `job_id`, by id.

        Raises:
            JobNotFound: If there is no such job.
        """
        d = self._dialect.tables.dependencies.c
        return self._linked("children", job_id, d.parent_id, d.child_id)

    def _linked(
        self, what: str, job_id: str, given: sa.Column[str], wanted: sa.Column[str]
    ) -> list[Job]:
        if not findable(job_id):
            raise JobNotFound(job_id)
        c = self._jobs.c
        deps = self._dialect.tables.dependencies
        stmt = (
            sa.select(self._jobs)
            .select_from(self._jobs.join(deps, wanted == c.id))
            .where(given == job_id)
            .order_by(c.id)
        )

        def run(conn: Connection) -> list[Job] | None:
            if not self._dialect.exists(conn, job_id):
                return None
            return [self._reader.to_job(row) for row in conn.execute(stmt)]

        jobs = self._run(what, run, write=False)
        if jobs is None:
            raise JobNotFound(job_id)
        return jobs

    def settle_waiting(self, *, limit: int = 1000) -> int:
        """Settle waiting jobs whose parents' outcomes were recorded without them.

        Finds up to `limit` finished parents still flagged as having children to
        settle (the PostgreSQL route that completes jobs in one autocommitted
        statement settles their children in a second transaction; a crash in
        between leaves the flag) and settles their children, down the graph:
        all the children of one parent move together, so one call may move
        more than `limit` jobs. Cheap when there is nothing to do: one probe of
        an index that holds only such parents.

        On its first call, then every ten minutes, it also looks for unsettled
        edges whose parent is no longer stored (deleted by hand; `purge` keeps
        the parents of unfinished jobs): such a parent counts as completed. That
        look reads every unsettled edge.

        Returns:
            How many jobs it moved (to `pending` or `cancelled`).
        """
        if limit < 1:
            return 0
        now = time.monotonic()
        last = self._orphans_checked
        orphans = last is None or now - last >= ORPHAN_CHECK_EVERY
        dialect = self._dialect

        def run(conn: Connection) -> int:
            due = workflows.due_parents(dialect, conn, limit)
            if orphans:
                due.extend(workflows.missing_parents(dialect, conn, limit))
            return workflows.settle(dialect, conn, due) if due else 0

        moved = self._run("settle_waiting", run, write=True)
        if orphans:
            self._orphans_checked = now
        return moved

    def _settle_later(self, unsettled: Sequence[workflows.Finished]) -> None:
        """Settle the children of jobs finished by an autocommitted statement.

        A failure here loses nothing: the parents keep their flag, and
        `settle_waiting` settles them.
        """
        dialect = self._dialect
        try:
            self._run("settle", lambda conn: workflows.settle(dialect, conn, unsettled), write=True)
        except StorageError as error:
            logger.warning(
                "children of %d finished job(s) are left for settle_waiting: %s",
                len(unsettled),
                error,
            )

    def _finish_held(
        self, what: str, job_id: str, token: str, values: Mapping[str, Any], status: str
    ) -> bool:
        """Finish a held job as `values` say, and settle its children if it has any.

        One statement where the database commits it alone (PostgreSQL: the
        children, if any, in a second transaction); elsewhere one transaction.
        """
        stmt = sa.update(self._jobs).where(self._held(job_id, token)).values(**values)
        dialect = self._dialect

        def run(conn: Connection) -> tuple[bool, list[workflows.Finished]]:
            rows = workflows.finish(dialect, conn, stmt)
            return bool(rows), workflows.settle_finished(dialect, conn, rows, status)

        done, unsettled = self._run(what, run, write=True, single=True)
        if unsettled:
            self._settle_later(unsettled)
        return done
