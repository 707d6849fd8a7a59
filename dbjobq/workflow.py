"""Workflows: jobs that wait for other jobs (`depends_on`), chains and groups."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from dbjobq.job import JobStatus

__all__ = ["ON_PARENT_FAILURE", "Group", "GroupStatus", "OnParentFailure"]

OnParentFailure = Literal["cancel", "run"]
"""What a job does when a parent ends `failed` or `cancelled`: be cancelled with
it (`"cancel"`, the default), or run once every parent has finished (`"run"`)."""

ON_PARENT_FAILURE: tuple[str, ...] = ("cancel", "run")
"""The values `on_parent_failure` takes."""


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
