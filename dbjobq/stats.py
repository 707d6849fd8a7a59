"""Queue statistics: counts, backlog age, throughput, and jobs nobody can run."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import datetime

from dbjobq.job import JobStatus
from dbjobq.registry import WorkerInfo
from dbjobq.storage.base import Storage

__all__ = ["QueueStats", "Stats", "collect_stats"]

WINDOWS = (60, 300, 900)
"""Seconds over which throughput is counted: the last 1, 5 and 15 minutes."""

SEEN_WITHIN = 60.0
"""A worker counts as alive if it saved its record this many seconds ago at most."""


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's numbers (see `JobQueue.stats`)."""

    queue: str
    """The queue."""
    counts: dict[str, int]
    """Jobs per status, every status present."""
    oldest_pending_age: float | None
    """Seconds the longest-waiting due job has waited past its `run_at`; `None`
    when no pending job is due."""
    finished: dict[int, int]
    """Jobs that completed or failed within each window of `WINDOWS` seconds."""
    unhandled_types: tuple[str, ...]
    """Types of pending jobs that no live worker takes from this queue."""
    paused: bool = False
    """Whether the queue is paused (`JobQueue.pause`): its jobs wait until resumed."""
    running_keys: dict[str, int] = dataclasses.field(default_factory=dict)
    """Running jobs per concurrency key (`Job.concurrency_key`), the keys that have any:
    how full each key's limit is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the whole queue (see `JobQueue.stats`)."""

    now: datetime
    """When it was taken (storage clock)."""
    queues: tuple[QueueStats, ...]
    """Per queue, by name."""
    workers: tuple[WorkerInfo, ...]
    """Live workers, by id."""


def collect_stats(storage: Storage) -> Stats:
    """Gather the numbers with a few queries; see `JobQueue.stats`."""
    now = storage.now()
    counts = storage.count_jobs()
    finished = {w: storage.count_jobs(finished_within=w) for w in WINDOWS}
    pending = storage.pending_summary()
    workers = storage.list_workers(seen_within=SEEN_WITHIN)
    handled = {(q, t) for w in workers for q in w.queues for t in w.types}
    paused = storage.paused_queues() if storage.capabilities.pauses else set()
    names = sorted({q for q, _ in counts} | {g.queue for g in pending} | paused)
    keys: dict[str, Counter[str]] = {}
    if any(s is JobStatus.RUNNING and n for (_, s), n in counts.items()):
        for job in storage.list_jobs(status=JobStatus.RUNNING, limit=None):
            if job.concurrency_key is not None:
                keys.setdefault(job.queue, Counter())[job.concurrency_key] += 1
    queues = []
    for name in names:
        groups = [g for g in pending if g.queue == name]
        due = [g.oldest_run_at for g in groups if g.oldest_run_at <= now]
        queues.append(
            QueueStats(
                queue=name,
                counts={s.value: counts.get((name, s), 0) for s in JobStatus},
                oldest_pending_age=(now - min(due)).total_seconds() if due else None,
                finished={
                    w: sum(
                        n
                        for (q, s), n in finished[w].items()
                        if q == name and s in (JobStatus.COMPLETED, JobStatus.FAILED)
                    )
                    for w in WINDOWS
                },
                unhandled_types=tuple(g.type for g in groups if (name, g.type) not in handled),
                paused=name in paused,
                running_keys=dict(sorted(keys.get(name, Counter()).items())),
            )
        )
    return Stats(now=now, queues=tuple(queues), workers=tuple(workers))
