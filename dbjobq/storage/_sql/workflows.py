"""Workflows on the SQL backends: dependency edges, settling children, groups.

A job enqueued with `depends_on` gets one row per parent in
`<prefix>dependencies` (see `schema._workflow_tables`), and each parent gets
`jobs.children = 1`: "its children are to be settled when it finishes". Jobs
outside workflows keep `NULL` there, and that is all a transition of theirs
pays: the statement that finishes a job returns the flag with the job's id
(`finish`), and only a flagged job leads to `settle`.

Settling is safe against write skew in READ COMMITTED (PostgreSQL, MySQL): the
two last parents of a child, finishing at the same moment, each write their
outcome on their edge first, then lock the child row, then read its edges. The
transaction that gets the lock second sees the other's committed outcome, so
one of the two always decides the child. Children are locked in id order; a
deadlock that remains possible (a child that is also the grandchild of the same
parent) is rolled back whole and retried by `engine.retrying`, never half-done.

"Has this child a parent still to finish, or one that failed?" is one probe of
the `dependencies_open` index, however many parents the child has: the callback
of a group of 10,000 costs the same per member as a child of one parent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.errors import InvalidJobError
from dbjobq.job import JobStatus, NewJob
from dbjobq.storage._sql.changes import RELEASED
from dbjobq.storage._sql.schema import SETTLED, TO_SETTLE, UNFINISHED, WAITING, db_now

if TYPE_CHECKING:
    from dbjobq.storage._sql.dialects.base import Dialect

T = TypeVar("T")

CHUNK = 500
"""Ids per `IN (...)` list: well below every database's limit on parameters."""

COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value
_FINISHED = (COMPLETED, FAILED, CANCELLED)
_BAD = (FAILED, CANCELLED)

Finished = tuple[str, str]
"""A job that reached a terminal state in this transaction: `(id, status)`."""


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size`."""
    for at in range(0, len(items), size):
        yield items[at : at + size]


def parent_error(parent_id: str, status: str) -> str:
    """`last_error` of a child cancelled because of its parent."""
    if status == FAILED:
        return f"parent {parent_id} failed"
    return f"parent {parent_id} was cancelled"


def decide(statuses: Sequence[tuple[str, str | None]], on_failure: str) -> tuple[str, str | None]:
    """A child's status from its parents' `(id, status)`: waiting, pending or cancelled.

    `status` is `None` for a parent that has not finished. Returns the status and,
    for `cancelled`, the `last_error`.
    """
    if on_failure != "run":
        for parent_id, status in statuses:
            if status in _BAD:
                return CANCELLED, parent_error(parent_id, status)
    wanted = _FINISHED if on_failure == "run" else (COMPLETED,)
    if all(status in wanted for _, status in statuses):
        return JobStatus.PENDING.value, None
    return JobStatus.WAITING.value, None


# -- finishing a job ----------------------------------------------------------------------


def finish(
    dialect: Dialect, conn: Connection, stmt: sa.Update, params: Mapping[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """Run an UPDATE that finishes jobs; `(id, children)` of each row it changed.

    One `UPDATE ... RETURNING` where the database has it; on MySQL the rows are
    locked and read first (`SELECT ... FOR UPDATE`), then updated.
    """
    c = dialect.jobs.c
    if dialect.update_returns:
        return [(r[0], r[1]) for r in conn.execute(stmt.returning(c.id, c.children), params or {})]
    where = stmt.whereclause
    query = sa.select(c.id, c.children).with_for_update()
    if where is not None:
        query = query.where(where)
    rows = [(r[0], r[1]) for r in conn.execute(query, params or {})]
    for chunk in chunks([job_id for job_id, _ in rows]):
        conn.execute(stmt.where(c.id.in_(chunk)), params or {})
    return rows


def flagged(rows: Iterable[tuple[str, Any]], status: str) -> list[Finished]:
    """The finished jobs among `rows` (from `finish`) whose children are to be settled."""
    return [(job_id, status) for job_id, children in rows if children == 1]


def settle_finished(
    dialect: Dialect, conn: Connection, rows: Iterable[tuple[str, Any]], status: str
) -> list[Finished]:
    """Settle the children of jobs just finished (`rows` from `finish`) in `conn`'s transaction.

    On a connection that commits each statement (PostgreSQL's `single` route),
    nothing is settled here: the flagged jobs are returned, for a transaction of
    their own (locks taken by an autocommitted statement would not hold).
    """
    unsettled = flagged(rows, status)
    if unsettled and not dialect.autocommitted(conn):
        settle(dialect, conn, unsettled)
        return []
    return unsettled


# -- settling children --------------------------------------------------------------------


def settle(dialect: Dialect, conn: Connection, finished: Iterable[Finished]) -> int:
    """Settle the waiting children of jobs that finished, down the graph.

    Call it in the transaction that finished them (or, for jobs finished
    already, in a transaction of its own). Returns how many jobs it moved.
    """
    jobs, deps = dialect.jobs, dialect.tables.dependencies
    c = jobs.c
    moved = 0
    frontier = dict(finished)
    while frontier:
        modes = _record_outcomes(dialect, conn, frontier)
        parents = sorted(frontier)
        for chunk in chunks(parents):
            conn.execute(
                sa.update(jobs)
                .where(c.id.in_(chunk), c.children == TO_SETTLE, c.finished_at.is_not(None))
                .values(children=SETTLED)
            )
        # Locked after the outcomes are written, read after the lock: see the module.
        waiting: dict[str, Any] = {}  # locked waiting child -> its children flag
        for chunk in chunks(sorted(modes)):
            stmt = (
                sa.select(c.id, c.children)
                .where(c.id.in_(chunk), c.status == WAITING)
                .order_by(c.id)
                .with_for_update()
            )
            waiting.update((row[0], row[1]) for row in conn.execute(stmt))
        promote, cancel = _decide_locked(conn, deps, jobs, sorted(waiting), modes)
        moved += _move(conn, jobs, promote, cancel)
        if promote:
            dialect.announce(conn)
        frontier = {job_id: CANCELLED for job_id in cancel if waiting[job_id] == 1}
    return moved


def _record_outcomes(
    dialect: Dialect, conn: Connection, frontier: Mapping[str, str]
) -> dict[str, str]:
    """Write each parent's outcome on its edges; its children with their `on_failure`."""
    deps = dialect.tables.dependencies
    d = deps.c
    by_status: dict[str, list[str]] = {}
    for job_id, status in sorted(frontier.items()):
        by_status.setdefault(status, []).append(job_id)
    modes: dict[str, str] = {}
    for status, ids in sorted(by_status.items()):
        for chunk in chunks(ids):
            stmt = sa.update(deps).where(d.parent_id.in_(chunk)).values(parent_status=status)
            if dialect.update_returns:
                rows = conn.execute(stmt.returning(d.child_id, d.on_failure))
                modes.update((row[0], row[1]) for row in rows)
            else:
                conn.execute(stmt)
                found = sa.select(d.child_id, d.on_failure).where(d.parent_id.in_(chunk))
                modes.update((row[0], row[1]) for row in conn.execute(found))
    return modes


def _decide_locked(
    conn: Connection, deps: sa.Table, jobs: sa.Table, ids: Sequence[str], modes: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Which locked waiting children become pending, and which cancelled (with why).

    One statement per chunk of children, each child decided by index probes: an
    edge still open, and the first failed or cancelled parent.
    """
    c = jobs.c
    opened, bad = deps.alias("open_edge"), deps.alias("bad_edge")
    still_open = sa.exists().where(opened.c.child_id == c.id, opened.c.parent_status.is_(None))
    first_bad = (
        sa.select(bad.c.parent_id, bad.c.parent_status)
        .where(bad.c.child_id == c.id, bad.c.parent_status.in_(_BAD))
        .order_by(bad.c.parent_id)
        .limit(1)
    )
    culprit = first_bad.with_only_columns(bad.c.parent_id).scalar_subquery()
    culprit_status = first_bad.with_only_columns(bad.c.parent_status).scalar_subquery()
    promote: list[str] = []
    cancel: dict[str, str] = {}
    for chunk in chunks(ids):
        stmt = sa.select(c.id, still_open, culprit, culprit_status).where(c.id.in_(chunk))
        for job_id, blocked, parent_id, status in conn.execute(stmt):
            if parent_id is not None and modes[job_id] != "run":
                cancel[job_id] = parent_error(parent_id, status)
            elif not blocked:
                promote.append(job_id)
    return promote, cancel


def _move(
    conn: Connection, jobs: sa.Table, promote: Sequence[str], cancel: Mapping[str, str]
) -> int:
    """Make `promote` pending and `cancel` cancelled (waiting jobs only); how many moved."""
    c = jobs.c
    moved = 0
    for chunk in chunks(promote):
        stmt = (
            sa.update(jobs)
            .where(c.id.in_(chunk), c.status == WAITING)
            .values(status=JobStatus.PENDING.value, updated_at=db_now())
        )
        moved += conn.execute(stmt).rowcount
    by_error: dict[str, list[str]] = {}
    for job_id, error in sorted(cancel.items()):
        by_error.setdefault(error, []).append(job_id)
    for error, ids in by_error.items():
        for chunk in chunks(ids):
            stmt = (
                sa.update(jobs)
                .where(c.id.in_(chunk), c.status == WAITING)
                .values(
                    status=CANCELLED,
                    finished_at=db_now(),
                    updated_at=db_now(),
                    last_error=error,
                    **RELEASED,
                )
            )
            moved += conn.execute(stmt).rowcount
    return moved


def due_parents(dialect: Dialect, conn: Connection, limit: int) -> list[Finished]:
    """Finished parents whose children were not settled yet (locked, skipping locked ones)."""
    c = dialect.jobs.c
    stmt = (
        sa.select(c.id, c.status)
        .where(c.children == TO_SETTLE, c.finished_at.is_not(None))
        .order_by(c.finished_at, c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [(job_id, status) for job_id, status in conn.execute(stmt) if status in _FINISHED]


def missing_parents(dialect: Dialect, conn: Connection, limit: int) -> list[Finished]:
    """Parents of unsettled edges that are no longer stored: they count as completed.

    Only a row deleted by hand leaves such an edge (`purge` keeps the parents of
    unfinished jobs). This reads every unsettled edge, so callers run it seldom.
    """
    d = dialect.tables.dependencies.c
    parent = dialect.jobs.alias("parent")
    stmt = (
        sa.select(d.parent_id)
        .select_from(dialect.tables.dependencies.outerjoin(parent, parent.c.id == d.parent_id))
        .where(d.parent_status.is_(None), parent.c.id.is_(None))
        .distinct()
        .limit(limit)
    )
    return [(parent_id, COMPLETED) for parent_id in conn.execute(stmt).scalars()]


# -- enqueue --------------------------------------------------------------------------------


def insert_dependent(dialect: Dialect, conn: Connection, jobs: Sequence[NewJob]) -> list[str]:
    """Insert `jobs`, some with `depends_on`, in `conn`'s transaction; the stored ids.

    The parents stored before this call are locked first (in id order), which
    also checks that they exist: an unknown one raises `InvalidJobError` before
    anything is written. Then every job is inserted as `enqueue` inserts it
    (`pending`), and those with parents are given their status, their edges and
    their parents' flags.
    """
    c = dialect.jobs.c
    dependent = [job for job in jobs if job.depends_on]
    earlier_ids = {job.id for job in jobs}
    referenced = {p for job in dependent for p in job.depends_on if p in earlier_ids}
    asked = sorted({job.id for job in dependent} | referenced)
    stored_before: set[str] = set()
    for chunk in chunks(asked):
        stored_before.update(conn.execute(sa.select(c.id).where(c.id.in_(chunk))).scalars())
    external: dict[str, None] = {}  # in the order named, for the error
    seen: set[str] = set()
    for job in jobs:
        if job.depends_on and job.id not in stored_before:
            external.update((p, None) for p in job.depends_on if p not in seen)
        seen.add(job.id)
    statuses = lock_parents(dialect, conn, sorted(external))
    for job_id in external:
        if job_id not in statuses:
            raise InvalidJobError(f"depends_on: no job with id {job_id!r}")
    ids = dialect.store_jobs(conn, jobs)
    fresh = {
        job.id
        for job, stored in zip(jobs, ids, strict=True)
        if stored == job.id and job.id not in stored_before
    }
    resolved: dict[str, str] = {}
    for job, stored in zip(jobs, ids, strict=True):
        resolved.setdefault(job.id, stored)
    look_up = (
        {resolved.get(p, p) for job in dependent if job.id in fresh for p in job.depends_on}
        - fresh
        - set(statuses)
    )
    statuses.update(lock_parents(dialect, conn, sorted(look_up)))
    plan = _plan(jobs, fresh, resolved, statuses)
    _write_plan(dialect, conn, plan, statuses)
    return ids


def lock_parents(dialect: Dialect, conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Lock the stored jobs `ids` in id order; their statuses."""
    c = dialect.jobs.c
    found: dict[str, str] = {}
    for chunk in chunks(ids):
        stmt = sa.select(c.id, c.status).where(c.id.in_(chunk)).order_by(c.id).with_for_update()
        found.update((row[0], row[1]) for row in conn.execute(stmt))
    return found


@dataclasses.dataclass
class _Plan:
    """What an enqueue writes for its jobs with parents."""

    status: dict[str, tuple[str, str | None, int]] = dataclasses.field(default_factory=dict)
    """child -> (status, last_error, number of parents)"""
    edges: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    parents: set[str] = dataclasses.field(default_factory=set)


def _plan(
    jobs: Sequence[NewJob],
    fresh: set[str],
    resolved: Mapping[str, str],
    statuses: dict[str, str],
) -> _Plan:
    """Each new job's status, in the order given (an earlier job may be a later one's parent)."""
    plan = _Plan()
    for job in jobs:
        if job.id not in fresh:
            continue
        if not job.depends_on:
            statuses[job.id] = JobStatus.PENDING.value
            continue
        parents = list(dict.fromkeys(resolved.get(p, p) for p in job.depends_on))
        # A parent gone since its child's call resolved it counts as completed.
        known = [(p, statuses.get(p, COMPLETED)) for p in parents]
        outcome = [(p, s if s in _FINISHED else None) for p, s in known]
        status, error = decide(outcome, job.on_parent_failure)
        statuses[job.id] = status
        plan.status[job.id] = (status, error, len(parents))
        plan.parents.update(parents)
        plan.edges.extend(
            {"child_id": job.id, "parent_id": p, "parent_status": s, "on_failure": mode}
            for p, s in outcome
            for mode in (job.on_parent_failure,)
        )
    return plan


def _write_plan(
    dialect: Dialect, conn: Connection, plan: _Plan, statuses: Mapping[str, str]
) -> None:
    jobs, c = dialect.jobs, dialect.jobs.c
    groups: dict[tuple[str, str | None, int], list[str]] = {}
    for job_id, key in plan.status.items():
        groups.setdefault(key, []).append(job_id)
    for (status, error, count), ids in groups.items():
        values: dict[str, Any] = {"status": status, "parents": count}
        if status == CANCELLED:
            values.update(finished_at=db_now(), updated_at=db_now(), last_error=error)
        for chunk in chunks(ids):
            conn.execute(sa.update(jobs).where(c.id.in_(chunk)).values(**values))
    if plan.edges:
        conn.execute(sa.insert(dialect.tables.dependencies), plan.edges)
    open_parents = sorted(p for p in plan.parents if statuses.get(p) not in _FINISHED)
    done_parents = sorted(p for p in plan.parents if statuses.get(p) in _FINISHED)
    for chunk in chunks(open_parents):
        conn.execute(sa.update(jobs).where(c.id.in_(chunk)).values(children=TO_SETTLE))
    for chunk in chunks(done_parents):
        stmt = sa.update(jobs).where(c.id.in_(chunk), c.children.is_(None))
        conn.execute(stmt.values(children=SETTLED))


# -- purge ----------------------------------------------------------------------------------


def kept_for_children(dialect: Dialect) -> sa.ColumnElement[bool]:
    """Whether a job may go: it has no unfinished child (most jobs have no child)."""
    c, d = dialect.jobs.c, dialect.tables.dependencies.c
    child = dialect.jobs.alias("child")
    unfinished_child = (
        sa.select(sa.literal(1))
        .select_from(dialect.tables.dependencies.join(child, child.c.id == d.child_id))
        .where(d.parent_id == c.id, child.c.status.in_(UNFINISHED))
    )
    return sa.or_(c.children.is_(None), ~unfinished_child.exists())


def in_workflow(dialect: Dialect) -> sa.ColumnElement[bool]:
    """Whether a job has parents, children or a group (and so links to forget)."""
    c = dialect.jobs.c
    return sa.or_(c.children.is_not(None), c.parents.is_not(None), c.group_id.is_not(None))


def forget(dialect: Dialect, conn: Connection, rows: Sequence[tuple[str, str | None]]) -> None:
    """Delete the edges and groups of purged jobs `(id, group_id)`."""
    deps, groups = dialect.tables.dependencies, dialect.tables.groups
    d, g, c = deps.c, groups.c, dialect.jobs.c
    ids = sorted(job_id for job_id, _ in rows)
    candidates = {group_id for _, group_id in rows if group_id is not None}
    for chunk in chunks(ids):
        conn.execute(sa.delete(deps).where(d.child_id.in_(chunk)))
        conn.execute(sa.delete(deps).where(d.parent_id.in_(chunk)))
        candidates.update(conn.execute(sa.select(g.id).where(g.callback_id.in_(chunk))).scalars())
    for chunk in chunks(ids):  # a group whose callback went keeps its members
        conn.execute(sa.update(groups).where(g.callback_id.in_(chunk)).values(callback_id=None))
    member = sa.select(c.id).where(c.group_id == g.id).exists()
    callback = sa.select(c.id).where(c.id == g.callback_id).exists()
    for chunk in chunks(sorted(candidates)):
        conn.execute(sa.delete(groups).where(g.id.in_(chunk), ~member, ~callback))


def purge_all(dialect: Dialect, conn: Connection, doomed: sa.ColumnElement[bool]) -> int:
    """Delete every `doomed` job that no unfinished job depends on; how many."""
    c = dialect.jobs.c
    linked = in_workflow(dialect)
    deleted = int(conn.execute(sa.delete(dialect.jobs).where(doomed, ~linked)).rowcount)
    links = sa.select(c.id, c.group_id).where(doomed, linked, kept_for_children(dialect))
    return deleted + delete_linked(dialect, conn, [(row[0], row[1]) for row in conn.execute(links)])


def purge_batch(
    dialect: Dialect, conn: Connection, doomed: sa.ColumnElement[bool], limit: int
) -> int:
    """Delete the `limit` `doomed` jobs that finished first, skipping kept parents."""
    c = dialect.jobs.c
    # Picked first: MySQL allows no LIMIT inside an IN subquery.
    batch = (
        sa.select(c.id, c.group_id, in_workflow(dialect))
        .where(doomed, kept_for_children(dialect))
        .order_by(c.finished_at, c.id)
        .limit(limit)
    )
    rows = [(row[0], row[1], row[2]) for row in conn.execute(batch)]
    deleted = 0
    for chunk in chunks([job_id for job_id, _, linked in rows if not linked]):
        deleted += conn.execute(sa.delete(dialect.jobs).where(c.id.in_(chunk))).rowcount
    linked_rows = [(job_id, group_id) for job_id, group_id, linked in rows if linked]
    return deleted + delete_linked(dialect, conn, linked_rows)


def delete_linked(
    dialect: Dialect, conn: Connection, rows: Sequence[tuple[str, str | None]]
) -> int:
    """Delete jobs in workflows `(id, group_id)`, with their edges and emptied groups."""
    c = dialect.jobs.c
    deleted = 0
    for chunk in chunks([job_id for job_id, _ in rows]):
        deleted += conn.execute(sa.delete(dialect.jobs).where(c.id.in_(chunk))).rowcount
    if rows:
        forget(dialect, conn, rows)
    return int(deleted)
