"""Peers measured in the same run, when installed (`pip install -e ".[bench]"`).

pgqueuer on PostgreSQL: bulk and one-per-call enqueue, and an async worker
draining the queue with batches of 10 and of 100 (its best configuration).

huey's SQLite storage does the same work as a dbjobq worker thread on SQLite: a
no-op task enqueued one per call, then dequeued and executed one at a time with its
result stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any


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


@dataclasses.dataclass
class PgQueuerFigures:
    """What pgqueuer did on PostgreSQL, in jobs per second."""

    bulk_enqueue: float
    single_enqueue: float
    drain: dict[int, float]  # by batch size


def pgqueuer_postgres(url: str, schema: str, jobs: int, single: int) -> PgQueuerFigures | None:
    """Run pgqueuer (asyncpg driver) in `schema`: enqueue rates, drain per batch size.

    `None` if pgqueuer is not installed. One process, its defaults otherwise, as
    its own benchmark runs it: an async worker whose no-op entrypoint is awaited.
    """
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return None
    return asyncio.run(_pgqueuer(url, schema, jobs, single))


async def _pgqueuer(url: str, schema: str, jobs: int, single: int) -> PgQueuerFigures:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        driver = AsyncpgDriver(conn)
        queries = Queries(driver)
        await queries.install(create_schema=False)

        def payloads(n: int) -> list[bytes | None]:
            return [json.dumps({"n": i}).encode() for i in range(n)]

        began = time.perf_counter()
        await queries.enqueue(["noop"] * jobs, payloads(jobs), [0] * jobs)
        bulk = jobs / (time.perf_counter() - began)
        await queries.clear_queue()
        began = time.perf_counter()
        for i in range(single):
            await queries.enqueue("noop", json.dumps({"n": i}).encode())
        one = single / (time.perf_counter() - began)
        await queries.clear_queue()
        drain = {}
        for batch in (10, 100):
            await queries.enqueue(["noop"] * jobs, payloads(jobs), [0] * jobs)
            manager = QueueManager(queries)
            done = 0

            @manager.entrypoint("noop")
            async def noop(job: Any) -> None:
                nonlocal done
                done += 1

            began = time.perf_counter()
            await manager.run(batch_size=batch, mode=QueueExecutionMode.drain)
            drain[batch] = done / (time.perf_counter() - began)
            assert done == jobs, f"pgqueuer ran {done} of {jobs} jobs"
        return PgQueuerFigures(bulk, one, drain)
    finally:
        await conn.close()
