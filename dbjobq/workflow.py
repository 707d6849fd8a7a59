"""Workflows: jobs that wait for other jobs (`depends_on`), chains and groups."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from dbjobq._ids import new_job_id, new_job_ids
from dbjobq.errors import ConfigurationError, InvalidJobError
from dbjobq.job import Job, JobSpec, JobStatus, NewJob

if TYPE_CHECKING:
    from dbjobq.storage.base import Storage

__all__ = [
    "MAX_PARENTS",
    "ON_PARENT_FAILURE",
    "Group",
    "GroupStatus",
    "OnParentFailure",
    "WorkflowMethods",
]

OnParentFailure = Literal["cancel", "run"]
"""What a job does when a parent ends `failed` or `cancelled`: be cancelled with
it (`"cancel"`, the default), or run once every parent has finished (`"run"`)."""

ON_PARENT_FAILURE: tuple[str, ...] = ("cancel", "run")
"""The values `on_parent_failure` takes."""

MAX_PARENTS = 100_000
"""The most jobs one job may depend on (a group's callback depends on every member)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """A group as `JobQueue.group` made it."""

    id: str
    """The group's id, for `JobQueue.get_group`."""
    job_ids: list[str]
    """The members' ids, in the order given (an id that a unique key deduplicated
    is the id of the job that holds the key)."""
    callback_id: str | None
    """The id of the job that runs after every member has completed, or `None`."""


@dataclasses.dataclass(frozen=True, slots=True)
class GroupStatus:
    """Where the members of a group are (`JobQueue.get_group`)."""

    id: str
    """The group's id."""
    callback_id: str | None
    """The job that runs after the members, if the group has one."""
    created_at: datetime
    """When the group was enqueued (UTC)."""
    counts: Mapping[JobStatus, int]
    """How many members are in each status; statuses with none are left out."""

    @property
    def total(self) -> int:
        """How many members the group has (those stored as its members)."""
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        """Whether every member has finished (completed, failed or cancelled)."""
        return all(status.is_finished for status in self.counts)

    @property
    def completed(self) -> int:
        """How many members have completed."""
        return self.counts.get(JobStatus.COMPLETED, 0)


class WorkflowMethods:
    """The workflow methods of `JobQueue` (`chain`, `group`, `get_group`, `parents`, `children`)."""

    if TYPE_CHECKING:
        storage: Storage

        def _store(self) -> Storage: ...
        def _validate(self, spec: JobSpec, job_id: str | None = None) -> NewJob: ...
        def _enqueue(self, jobs: list[NewJob], connection: Any = None) -> list[str]: ...
        def _woken(self, jobs: Sequence[NewJob]) -> None: ...

    def chain(self, jobs: Iterable[JobSpec], *, connection: Any = None) -> list[str]:
        """Enqueue jobs that run one after another: each depends on the one before it.

        One transaction: all the jobs exist or none do. Each job waits (status
        `waiting`) until the one before it has completed; if one fails or is
        cancelled, the rest are cancelled (unless a job says
        `on_parent_failure="run"`). A job's own `depends_on` is kept, and
        the first job may have one too.

        Args:
            jobs: The jobs, in the order they are to run (at least one).
            connection: Join the application's open transaction (see
                `JobQueue.enqueue`).

        Returns:
            Their ids, in order.

        Raises:
            InvalidJobError: If a job has a bad argument (the message names its
                index), a `depends_on` id is unknown, or `jobs` is empty.
            ConfigurationError: If the storage has no `Capabilities.workflows`.
        """
        self._workflow_storage()
        new_jobs = self._specs(jobs, "chain")
        linked = new_jobs[:1]
        for before, job in itertools.pairwise(new_jobs):
            parents = tuple(dict.fromkeys((before.id, *job.depends_on)))
            linked.append(dataclasses.replace(job, depends_on=parents))
        return self._enqueue(linked, connection)

    def group(self, jobs: Iterable[JobSpec], *, then: JobSpec | None = None) -> Group:
        """Enqueue jobs that run side by side, and optionally one job that runs after all.

        One transaction: the members and the callback (`then`) exist or none do.
        The callback depends on every member: it runs once, after the last member
        has completed, and reads their results from `JobContext.parent_results`.
        If a member fails for good or is cancelled, the callback is cancelled
        (unless `then` says `on_parent_failure="run"`: it then runs once every
        member has finished). `get_group` counts the members per status.

        Args:
            jobs: The members (may be empty: the callback then runs at once).
            then: The callback, or `None` for a group without one.

        Returns:
            The group: its id, the members' ids and the callback's id.

        Raises:
            InvalidJobError: If a job has a bad argument (the message names its
                index; `then` is named as such), a `depends_on` id is unknown, the
                group has over 100,000 members, or `then` has a `unique_key`.
            ConfigurationError: If the storage has no `Capabilities.workflows`.
        """
        storage = self._workflow_storage()
        group_id = new_job_id()
        members = [
            dataclasses.replace(job, group_id=group_id)
            for job in self._specs(jobs, "group", allow_empty=True)
        ]
        if len(members) > MAX_PARENTS:
            raise InvalidJobError(f"a group has at most {MAX_PARENTS} members, got {len(members)}")
        callback = None
        if then is not None:
            if not isinstance(then, JobSpec):
                raise InvalidJobError(f"then must be a JobSpec, got {type(then).__name__}")
            if then.unique_key is not None:
                # A duplicate would stand for another job, which waits for no member.
                raise InvalidJobError("then: a group's callback cannot have a unique_key")
            try:
                job = self._validate(then)
            except InvalidJobError as error:
                raise type(error)(f"then: {error}") from None
            parents = tuple(dict.fromkeys([*(m.id for m in members), *job.depends_on]))
            callback = dataclasses.replace(job, depends_on=parents)
        ids = storage.enqueue_group(group_id, members, callback)
        self._woken([*members, *([] if callback is None else [callback])])
        return Group(group_id, ids[: len(members)], None if callback is None else ids[-1])

    def get_group(self, group_id: str) -> GroupStatus:
        """How many members of a group are in each status, and its callback's id.

        Raises:
            GroupNotFound: If there is no such group (or all its jobs were purged).
            ConfigurationError: If the storage has no `Capabilities.workflows`.
        """
        return self._workflow_storage().get_group(group_id)

    def parents(self, job_id: str) -> list[Job]:
        """The jobs that a job depends on (`depends_on`), by id; `[]` for none.

        On a storage without `Capabilities.workflows` no job has parents: `[]`.

        Raises:
            JobNotFound: If there is no such job.
        """
        storage = self._store()
        if not storage.capabilities.workflows:
            storage.get(job_id)  # JobNotFound for an unknown id, as everywhere
            return []
        return storage.parents(job_id)

    def children(self, job_id: str) -> list[Job]:
        """The jobs that depend on a job, by id; `[]` for none.

        Raises:
            JobNotFound: If there is no such job.
        """
        storage = self._store()
        if not storage.capabilities.workflows:
            storage.get(job_id)
            return []
        return storage.children(job_id)

    def _workflow_storage(self) -> Storage:
        storage = self._store()
        if not storage.capabilities.workflows:
            raise ConfigurationError(
                f"{type(storage).__name__} has no workflows (Capabilities.workflows): "
                "depends_on, chain and group need a backend that has"
            )
        return storage

    def _specs(self, jobs: Iterable[JobSpec], what: str, allow_empty: bool = False) -> list[NewJob]:
        specs = list(jobs)
        if not specs and not allow_empty:
            raise InvalidJobError(f"a {what} needs at least one job")
        new_jobs: list[NewJob] = []
        for index, (spec, job_id) in enumerate(zip(specs, new_job_ids(len(specs)), strict=True)):
            if not isinstance(spec, JobSpec):
                raise InvalidJobError(
                    f"{what} takes JobSpec objects; item {index} is a {type(spec).__name__}"
                )
            try:
                new_jobs.append(self._validate(spec, job_id))
            except InvalidJobError as error:
                raise type(error)(f"job {index}: {error}") from None
        return new_jobs
