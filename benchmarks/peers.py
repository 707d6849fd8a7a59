"""Peers measured in the same run, when installed (`pip install -e ".[bench]"`).

huey's SQLite storage does the same work as a dbjobq worker thread on SQLite: a
no-op task enqueued one per call, then dequeued and executed one at a time with its
result stored.
"""

from __future__ import annotations

import time
from pathlib import Path


def huey_sqlite(work: Path, jobs: int) -> tuple[float, float] | None:
    """Enqueue rate (one per call) and drain rate of huey's SqliteHuey; `None` if absent."""
    try:
        from huey import SqliteHuey
    except ImportError:
        return None
    path = work / "huey.db"
    for leftover in work.glob("huey.db*"):
        leftover.unlink()
    huey = SqliteHuey(filename=str(path))

    @huey.task()
    def noop(n: int) -> int:
        return n

    began = time.perf_counter()
    for n in range(jobs):
        noop(n)
    enqueue = jobs / (time.perf_counter() - began)
    began = time.perf_counter()
    done = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        done += 1
    drain = done / (time.perf_counter() - began)
    assert done == jobs, f"huey ran {done} of {jobs} tasks"
    return enqueue, drain
