"""dbjobq: background jobs for Python, stored in your database.

```python
from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///jobs.db")

@queue.handler("send_email")
def send_email(ctx: JobContext) -> dict:
    return {"sent_to": ctx.payload["to"]}

queue.enqueue("send_email", {"to": "a@example.com"})
Worker(queue).start()
```
"""

from __future__ import annotations

from dbjobq.context import CancelReason, JobContext
from dbjobq.errors import (
    ConfigurationError,
    DBJobQError,
    DuplicateJobError,
    GroupNotFound,
    InvalidJobError,
    JobError,
    JobInterrupted,
    JobNotFound,
    JobTimeoutError,
    JobValidationError,
    PayloadError,
    StorageError,
)
from dbjobq.events import Event
from dbjobq.flow import Concurrency, RateLimit, Snooze
from dbjobq.job import Insertion, Job, JobSpec, JobStatus
from dbjobq.periodic import Schedule
from dbjobq.queue import Handler, JobQueue
from dbjobq.registry import WorkerInfo
from dbjobq.retry import RetryPolicy
from dbjobq.stats import QueueStats, Stats
from dbjobq.worker import Worker
from dbjobq.workflow import Group, GroupStatus

__version__ = "0.1.0"

__all__ = [
    "CancelReason",
    "Concurrency",
    "ConfigurationError",
    "DBJobQError",
    "DuplicateJobError",
    "Event",
    "Group",
    "GroupNotFound",
    "GroupStatus",
    "Handler",
    "Insertion",
    "InvalidJobError",
    "Job",
    "JobContext",
    "JobError",
    "JobInterrupted",
    "JobNotFound",
    "JobQueue",
    "JobSpec",
    "JobStatus",
    "JobTimeoutError",
    "JobValidationError",
    "PayloadError",
    "QueueStats",
    "RateLimit",
    "RetryPolicy",
    "Schedule",
    "Snooze",
    "Stats",
    "StorageError",
    "Worker",
    "WorkerInfo",
]
