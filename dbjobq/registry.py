"""The worker registry: who is working, where, on what."""

from __future__ import annotations

import dataclasses
from datetime import datetime

__all__ = ["WorkerInfo"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker as it registered itself in storage (see `JobQueue.list_workers`).

    Workers save this record when they start, every few seconds while they run, and
    remove it when they stop. A worker that died without stopping stops being listed
    once its `last_seen` is older than the cut-off `list_workers` uses.
    """

    id: str
    """The worker's id (`Worker.id`), as in `Job.worker_id`."""
    hostname: str
    """Host the worker runs on."""
    pid: int
    """Process id on that host."""
    queues: tuple[str, ...]
    """Queues it takes jobs from."""
    types: tuple[str, ...]
    """Job types it has handlers for."""
    started_at: datetime
    """When it started (host clock)."""
    last_seen: datetime | None = None
    """When it last saved this record (storage clock); set by the storage."""
    current_job: str | None = None
    """Id of the job it is running, if any."""
    jobs_processed: int = 0
    """How many jobs it has processed."""
