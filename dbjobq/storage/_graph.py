"""MemoryStorage's workflows: who waits for whom, groups, and settling children.

It decides, the storage applies: `Graph` says which waiting child becomes
`pending` or `cancelled` when a parent finishes, and the storage writes that under
its lock. Each parent is settled once per child (`open` forgets it), so a fan-in of
thousands of parents costs one step per parent, not a scan of all of them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dbjobq.errors import GroupNotFound, InvalidJobError
from dbjobq.job import Job, JobStatus, NewJob
from dbjobq.workflow import GroupStatus

__all__ = ["Graph", "GroupRecord", "MemoryWorkflows", "parent_verdict"]

PENDING = "pending"
"""The verdict that makes a waiting job pending."""


def parent_verdict(parent_id: str, status: JobStatus) -> str:
    """The `last_error` of a job cancelled because parent `parent_id` ended in `status`."""
    verb = "failed" if status is JobStatus.FAILED else "was cancelled"
    return f"parent {parent_id} {verb}"


@dataclasses.dataclass
class GroupRecord:
    """One group: its members (ids still stored) and callback."""

    callback_id: str | None
    created_at: datetime
    members: set[str] = dataclasses.field(default_factory=set)


class Graph:
    """Edges between jobs, the parents each waiting job still waits for, and groups."""

    def __init__(self) -> None:
        self.parents: dict[str, tuple[str, ...]] = {}
        self.children: dict[str, set[str]] = {}
        self.open: dict[str, set[str]] = {}  # child -> parents not finished yet
        self.run_anyway: set[str] = set()
        self.groups: dict[str, GroupRecord] = {}
        self.group_of: dict[str, str] = {}

    def verdict(
        self, parents: Sequence[str], run_anyway: bool, status: Callable[[str], JobStatus | None]
    ) -> tuple[str | None, set[str]]:
        """What a job with these parents is, as they stand: its verdict and open parents.

        The verdict is `PENDING`, the `last_error` of a cancel, or `None` (it
        waits). A parent that is not stored (`status` gives `None`) counts as
        completed.
        """
        still_open: set[str] = set()
        for parent_id in parents:
            state = status(parent_id)
            if state is None or state is JobStatus.COMPLETED:
                continue
            if state in (JobStatus.FAILED, JobStatus.CANCELLED):
                if not run_anyway:
                    return parent_verdict(parent_id, state), set()
                continue
            still_open.add(parent_id)
        return (None if still_open else PENDING), still_open

    def add(
        self, child: str, parents: Sequence[str], run_anyway: bool, still_open: set[str]
    ) -> None:
        """Record a new job's parents (`still_open`: those it waits for)."""
        self.parents[child] = tuple(parents)
        for parent_id in parents:
            self.children.setdefault(parent_id, set()).add(child)
        if still_open:
            self.open[child] = set(still_open)
        if run_anyway:
            self.run_anyway.add(child)

    def finished(self, parent_id: str, status: JobStatus) -> list[tuple[str, str]]:
        """Parent `parent_id` ended in `status`: the children it decides, with verdicts.

        Only children still waiting for it are returned (once each); the caller
        skips those that are no longer `waiting`, and reports each child it
        cancels back here in turn.
        """
        decided: list[tuple[str, str]] = []
        for child in sorted(self.children.get(parent_id, ())):
            waiting_for = self.open.get(child)
            if waiting_for is None or parent_id not in waiting_for:
                continue
            waiting_for.discard(parent_id)
            failed = status in (JobStatus.FAILED, JobStatus.CANCELLED)
            if failed and child not in self.run_anyway:
                del self.open[child]
                decided.append((child, parent_verdict(parent_id, status)))
            elif not waiting_for:
                del self.open[child]
                decided.append((child, PENDING))
        return decided

    def settled(self, child: str) -> None:
        """A waiting job left `waiting` some other way (cancelled): forget what it waits for."""
        self.open.pop(child, None)

    def keeps(self, job_id: str, unfinished: Callable[[str], bool]) -> bool:
        """Whether `job_id` must outlive a purge: a job that depends on it is unfinished."""
        return any(unfinished(child) for child in self.children.get(job_id, ()))

    def forget(self, job_ids: Iterable[str], stored: Callable[[str], bool]) -> None:
        """Jobs were purged: drop their edges, and groups with nothing left."""
        for job_id in job_ids:
            for parent_id in self.parents.pop(job_id, ()):
                kids = self.children.get(parent_id)
                if kids is not None:
                    kids.discard(job_id)
                    if not kids:
                        del self.children[parent_id]
            self.children.pop(job_id, None)
            self.open.pop(job_id, None)
            self.run_anyway.discard(job_id)
            group_id = self.group_of.pop(job_id, None)
            if group_id is not None:
                self.groups[group_id].members.discard(job_id)
        for group_id, group in list(self.groups.items()):
            if group.callback_id is not None and not stored(group.callback_id):
                group.callback_id = None  # purged: the group no longer has one to show
            if not group.members and group.callback_id is None:
                del self.groups[group_id]


class MemoryWorkflows:
    """The workflow half of `MemoryStorage`: settling children, groups, parents."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _jobs: dict[str, Job]
        _graph: Graph

        def _now(self) -> datetime: ...
        def _out(self, job: Job) -> Job: ...
        def _find(self, job_id: str) -> Job: ...
        def _write(self, job: Job, **changes: Any) -> Job: ...
        def _set(self, job: Job, **changes: Any) -> Job: ...
        def enqueue(self, jobs: Sequence[NewJob]) -> list[str]: ...

    def _settle_children(self, parent: Job) -> None:
        """The waiting children that `parent`'s outcome decides, down the graph."""
        now = self._now()
        finished = [parent]
        while finished:
            done = finished.pop()
            for child_id, verdict in self._graph.finished(done.id, done.status):
                child = self._jobs.get(child_id)
                if child is None or child.status is not JobStatus.WAITING:
                    continue
                if verdict == PENDING:
                    self._write(child, status=JobStatus.PENDING, updated_at=now)
                    continue
                cancelled = self._write(
                    child,
                    status=JobStatus.CANCELLED,
                    last_error=verdict,
                    finished_at=now,
                    updated_at=now,
                )
                finished.append(cancelled)

    def _parents_of(
        self, new: NewJob, alias: Mapping[str, str], added: Mapping[str, Job]
    ) -> list[str]:
        """`new.depends_on` as stored ids, distinct; `InvalidJobError` for an unknown one."""
        parents: dict[str, None] = {}  # distinct, in order: a callback may have 100,000
        for given in new.depends_on:
            parent_id = alias.get(given, given)
            if parent_id not in added and parent_id not in self._jobs:
                raise InvalidJobError(f"depends_on: no job with id {given!r}")
            parents[parent_id] = None
        return list(parents)

    def enqueue_group(
        self, group_id: str, members: Sequence[NewJob], callback: NewJob | None
    ) -> list[str]:
        with self._lock:
            ids = self.enqueue([*members, *([] if callback is None else [callback])])
            if group_id not in self._graph.groups:
                record = GroupRecord(
                    callback_id=None if callback is None else ids[-1], created_at=self._now()
                )
                for new, stored in zip(members, ids, strict=False):
                    if stored == new.id and stored not in self._graph.group_of:
                        record.members.add(stored)
                        self._graph.group_of[stored] = group_id
                        self._write(self._jobs[stored], group_id=group_id)
                self._graph.groups[group_id] = record
            return ids

    def get_group(self, group_id: str) -> GroupStatus:
        with self._lock:
            record = self._graph.groups.get(group_id) if isinstance(group_id, str) else None
            if record is None:
                raise GroupNotFound(group_id)
            counts: dict[JobStatus, int] = {}
            for member in record.members:
                status = self._jobs[member].status
                counts[status] = counts.get(status, 0) + 1
            return GroupStatus(group_id, record.callback_id, record.created_at, counts)

    def parents(self, job_id: str) -> list[Job]:
        with self._lock:
            self._find(job_id)
            found = sorted(p for p in self._graph.parents.get(job_id, ()) if p in self._jobs)
            return [self._out(self._jobs[p]) for p in found]

    def children(self, job_id: str) -> list[Job]:
        with self._lock:
            self._find(job_id)
            found = sorted(c for c in self._graph.children.get(job_id, ()) if c in self._jobs)
            return [self._out(self._jobs[c]) for c in found]

    def settle_waiting(self, *, limit: int = 1000) -> int:
        with self._lock:
            waiting = sorted(j.id for j in self._jobs.values() if j.status is JobStatus.WAITING)
            decided = 0
            for job_id in waiting:
                job = self._jobs[job_id]
                if decided >= limit:
                    break
                if job.status is not JobStatus.WAITING:
                    continue  # settled meanwhile, by a cancel down the graph
                verdict, _ = self._graph.verdict(
                    self._graph.parents.get(job_id, ()),
                    job_id in self._graph.run_anyway,
                    lambda p: None if p not in self._jobs else self._jobs[p].status,
                )
                if verdict is None:
                    continue
                now = self._now()
                if verdict == PENDING:
                    self._graph.settled(job_id)
                    self._write(job, status=JobStatus.PENDING, updated_at=now)
                else:
                    changes = {"last_error": verdict, "finished_at": now, "updated_at": now}
                    self._set(job, status=JobStatus.CANCELLED, **changes)  # and down the graph
                decided += 1
            # Every job that left `waiting`, those a cancel took down the graph included.
            return sum(
                1 for job_id in waiting if self._jobs[job_id].status is not JobStatus.WAITING
            )
