"""The cost of workflows: a fan-out of N children plus a callback, against a plain drain.

Both from fresh tables, in rounds (one of each per round, so that a drift in the
machine's speed touches both alike), with the same no-op handler and worker threads:

- plain: N + 1 independent jobs, enqueued with one `enqueue_many`.
- fan-out: `queue.group` of N members and a callback that depends on all of them
  (and reads their N results); timed until the callback has completed.

The enqueue of each (one call) is timed too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from dbjobq import JobContext, JobQueue, JobSpec, Worker

from .cases import Figure, Store, wait_drained


def _noop(ctx: JobContext) -> None:
    return None


def _merge(ctx: JobContext) -> int:
    return len(ctx.parent_results)


def _queue(store: Store) -> JobQueue:
    queue = JobQueue(store.storage())
    queue.initialize()
    queue.register("noop", _noop)
    queue.register("merge", _merge)
    # The first enqueue of a storage prepares its statements: not measured.
    for job_id in queue.enqueue_many(JobSpec(type="noop") for _ in range(100)):
        queue.cancel(job_id)
    return queue


def _run(queue: JobQueue, threads: int, done: Callable[[], None]) -> float:
    workers = [Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    done()
    elapsed = time.perf_counter() - began
    Worker.stop_all(workers)
    return elapsed


def plain(store: Store, jobs: int, threads: int) -> tuple[float, float]:
    """(enqueue, drain) jobs per second for `jobs` + 1 independent jobs."""
    queue = _queue(store)
    began = time.perf_counter()
    queue.enqueue_many([JobSpec(type="noop", payload={"n": n}) for n in range(jobs + 1)])
    enqueued = time.perf_counter() - began
    elapsed = _run(queue, threads, lambda: wait_drained(store, queue, 0.02))
    queue.close()
    return (jobs + 1) / enqueued, (jobs + 1) / elapsed


def fan_out(store: Store, jobs: int, threads: int) -> tuple[float, float]:
    """(enqueue, drain) jobs per second for a group of `jobs` members and a callback."""
    queue = _queue(store)
    began = time.perf_counter()
    group = queue.group(
        [JobSpec(type="noop", payload={"n": n}) for n in range(jobs)],
        then=JobSpec(type="merge"),
    )
    enqueued = time.perf_counter() - began
    callback = group.callback_id
    assert callback is not None

    def until_merged() -> None:
        while not queue.get_job(callback).status.is_finished:
            time.sleep(0.02)

    elapsed = _run(queue, threads, until_merged)
    assert queue.get_job(callback).result == jobs, "the callback did not see every member"
    queue.close()
    return (jobs + 1) / enqueued, (jobs + 1) / elapsed


def workflow_figures(
    store_factory: Callable[[], Any], backend: str, jobs: int, threads: int, runs: int
) -> list[Figure]:
    """The fan-out against the plain drain of as many jobs: medians of `runs` rounds."""
    found: dict[str, list[tuple[float, float]]] = {"plain": [], "fan-out": []}
    for _ in range(runs):
        for name, case in (("plain", plain), ("fan-out", fan_out)):
            with store_factory() as store:
                found[name].append(case(store, jobs, threads))
    enqueue = {name: statistics.median(e for e, _ in values) for name, values in found.items()}
    drain = {name: statistics.median(d for _, d in values) for name, values in found.items()}
    label = f"{threads} worker thread{'s' if threads > 1 else ''}"
    return [
        Figure(
            backend,
            f"enqueue a group of {jobs:,} + callback (one call)",
            enqueue["fan-out"],
            "jobs/s",
            enqueue["plain"],
            "enqueue_many of as many jobs",
        ),
        Figure(
            backend,
            f"fan-out: {jobs:,} members, then their callback, {label}",
            drain["fan-out"],
            "jobs/s",
            drain["plain"],
            "plain drain of as many jobs",
        ),
    ]
