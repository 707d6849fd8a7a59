"""The cost of flow control: drains under limits, against the plain drain of the same run.

Three drains of the same no-op jobs, from fresh tables each, in rounds (one of each
per round, so that a drift in the machine's speed touches all three alike):

- plain: no handler has limits; workers claim with `Storage.claim`.
- idle limit: the workers also handle a type with `Concurrency(1)` that has no
  jobs, so every claim goes through `Storage.claim_limited`, with nothing held back.
- keyed: the jobs' handler has `Concurrency(1, key=...)` over 100 keys, so at most
  100 jobs run (or are claimed) at once and each claim works out which keys are free.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from dbjobq import Concurrency, JobContext, JobQueue, JobSpec, Worker

from .cases import Figure, Store, wait_drained

KEYS = 100
PER_KEY = Concurrency(1, key=lambda payload: payload["k"])
IDLE = Concurrency(1)


def _noop(ctx: JobContext) -> None:
    return None


def _plain(queue: JobQueue) -> None:
    queue.register("noop", _noop)


def _idle_limit(queue: JobQueue) -> None:
    queue.register("noop", _noop)
    queue.register("limited", _noop, concurrency=IDLE)  # never enqueued


def _keyed(queue: JobQueue) -> None:
    queue.register("noop", _noop, concurrency=PER_KEY)


VARIANTS: dict[str, Callable[[JobQueue], None]] = {
    "plain": _plain,
    "idle limit": _idle_limit,
    "keyed": _keyed,
}


def drain(store: Store, jobs: int, threads: int, setup: Callable[[JobQueue], None]) -> float:
    """Jobs per second for `threads` workers emptying a full queue of `jobs` no-op jobs.

    `setup` registers the handlers. The jobs carry a key (`k`, one of `KEYS`) whether
    or not a handler uses it, so that every variant stores the same payloads.
    """
    queue = JobQueue(store.storage())
    queue.initialize()
    setup(queue)
    # The first enqueue_many of a storage prepares its statements: not measured.
    for job_id in queue.enqueue_many(_spec(n) for n in range(100)):
        queue.cancel(job_id)
    queue.enqueue_many([_spec(n) for n in range(jobs)])
    workers = [Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    wait_drained(store, queue, 0.02)
    elapsed = time.perf_counter() - began
    Worker.stop_all(workers)
    queue.close()
    return jobs / elapsed


def _spec(n: int) -> JobSpec:
    return JobSpec(type="noop", payload={"n": n, "k": n % KEYS})


def flow_drains(
    store_factory: Callable[[], Any], backend: str, jobs: int, threads: list[int], runs: int
) -> list[Figure]:
    """The idle-limit and keyed drains, each against the plain drain: medians of `runs`."""
    figures = []
    for t in threads:
        found: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(runs):
            for name, setup in VARIANTS.items():
                with store_factory() as store:
                    found[name].append(drain(store, jobs, t, setup))
        rate = {name: statistics.median(values) for name, values in found.items()}
        label = f"{t} worker thread{'s' if t > 1 else ''}"
        figures += [
            Figure(
                backend,
                f"drain, {label}, an idle limited type handled too",
                rate["idle limit"],
                "jobs/s",
                rate["plain"],
                "no limits, same case",
            ),
            Figure(
                backend,
                f"drain, {label}, {KEYS} keys x Concurrency(1)",
                rate["keyed"],
                "jobs/s",
                rate["plain"],
                "no limits, same case",
            ),
        ]
    return figures
