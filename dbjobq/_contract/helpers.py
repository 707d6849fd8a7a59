"""What the contract's tests build their jobs and workers with."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dbjobq._ids import new_job_id
from dbjobq.job import Job, NewJob
from dbjobq.registry import WorkerInfo
from dbjobq.storage.base import Storage

__all__ = ["claim_one", "make_job", "worker_info"]


def make_job(type: str = "task", **fields: Any) -> NewJob:  # noqa: A002 - the job field
    """Build a `NewJob` with a fresh id and defaults for every field not given."""
    values: dict[str, Any] = {
        "id": new_job_id(),
        "type": type,
        "queue": "default",
        "payload": {},
        "priority": 0,
        "max_retries": 3,
        "run_at": None,
        "delay": 0.0,
        "unique_key": None,
        "meta": {},
        "timeout": None,
    }
    values.update(fields)
    return NewJob(**values)


def claim_one(storage: Storage, worker: str = "w1", lease: float = 60.0, **kw: Any) -> Job:
    """Claim exactly one job from the default queue (or `queues=`), or fail the test."""
    jobs = storage.claim(
        queues=kw.pop("queues", ["default"]), worker_id=worker, lease_seconds=lease, **kw
    )
    assert len(jobs) == 1, f"expected to claim one job, got {len(jobs)}"
    return jobs[0]


def worker_info(worker_id: str, **fields: Any) -> WorkerInfo:
    """A worker's registry record, with defaults for every field not given."""
    values: dict[str, Any] = {
        "id": worker_id,
        "hostname": "host-1",
        "pid": 42,
        "queues": ("default", "mail"),
        "types": ("a", "b"),
        "started_at": datetime(2030, 1, 1, tzinfo=timezone.utc),
    }
    values.update(fields)
    return WorkerInfo(**values)
