"""`dbjobq demo`: real jobs through a real SQLite queue, with live progress."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, TextIO

from dbjobq.context import JobContext
from dbjobq.errors import JobValidationError
from dbjobq.job import JobSpec
from dbjobq.queue import JobQueue
from dbjobq.retry import RetryPolicy
from dbjobq.worker import Worker

__all__ = ["DEMO_DB", "run_demo"]

DEMO_DB = "dbjobq-demo.db"
"""The SQLite file the demo uses by default, in the current directory."""


def _register(queue: JobQueue) -> None:
    @queue.handler("resize_image")
    def resize_image(ctx: JobContext) -> dict[str, Any]:
        width = ctx.payload["width"]
        for step in (25, 50, 75):
            time.sleep(random.uniform(0.001, 0.005))
            ctx.progress(step)
        return {"thumbnail": f"{ctx.payload['image']}@{width // 4}px"}

    @queue.handler("send_email", max_retries=3)
    def send_email(ctx: JobContext) -> dict[str, Any]:
        time.sleep(random.uniform(0.002, 0.01))
        if ctx.attempt == 1 and random.random() < 0.3:
            raise ConnectionError("SMTP server timed out")  # retried with back-off
        return {"sent_to": ctx.payload["to"], "attempt": ctx.attempt}

    @queue.handler("charge_card")
    def charge_card(ctx: JobContext) -> dict[str, Any]:
        if not ctx.payload["card"].startswith("4"):
            raise JobValidationError(f"card {ctx.payload['card']} is not a valid card number")
        return {"charged": ctx.payload["amount"]}


def _specs(count: int) -> list[JobSpec]:
    specs: list[JobSpec] = []
    for n in range(count):
        kind = n % 10
        if kind < 6:
            specs.append(
                JobSpec(type="resize_image", payload={"image": f"img-{n}.png", "width": 1024})
            )
        elif kind < 9:
            specs.append(
                JobSpec(
                    type="send_email",
                    payload={"to": f"user{n}@example.com"},
                    priority=10 if n % 30 == 7 else 0,  # a few urgent ones jump the queue
                    unique_key=f"welcome:{n}",
                )
            )
        else:
            card = "5555" if n % 50 == 9 else "4242"  # every fifth charge has a bad card
            specs.append(
                JobSpec(
                    type="charge_card",
                    payload={"card": card, "amount": 10 + n % 7},
                    delay=0.5 if n % 20 == 19 else None,  # some are scheduled for later
                )
            )
    return specs


def run_demo(
    url: str | None = None, *, jobs: int = 300, workers: int = 4, out: TextIO | None = None
) -> int:
    """Enqueue `jobs` demo jobs, process them with `workers` workers, print progress.

    Args:
        url: Database URL; defaults to a fresh `dbjobq-demo.db` in the current
            directory (recreated on each run).
        jobs: How many jobs to enqueue.
        workers: How many `Worker` threads to run.
        out: Where to print; standard output by default.

    Returns:
        0 if every job ended as expected (bad cards fail on purpose), else 1.
    """
    import sys

    out = out or sys.stdout
    if url is None:
        for suffix in ("", "-wal", "-shm"):
            Path(DEMO_DB + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{DEMO_DB}"
    logging.getLogger("dbjobq").setLevel(logging.CRITICAL)  # the table below tells the story
    queue = JobQueue(url, retry_policy=RetryPolicy(base_delay=0.05, max_delay=0.5))
    _register(queue)
    specs = _specs(jobs)
    expected_failures = sum(
        1
        for s in specs
        if s.type == "charge_card" and not (s.payload or {})["card"].startswith("4")
    )
    print(f"dbjobq demo: {jobs} jobs, {workers} workers, {queue.storage!r}", file=out)
    started = time.monotonic()
    ids = queue.enqueue_many(specs)
    print(
        f"enqueued {len(ids)} jobs in one transaction ({time.monotonic() - started:.3f}s)", file=out
    )
    pool = [Worker(queue, poll_interval=0.05, max_poll_interval=0.5) for _ in range(workers)]
    for worker in pool:
        worker.start()
    try:
        _watch(queue, len(set(ids)), started, out)
    finally:
        for worker in pool:
            worker.stop()
    ok = _summary(queue, ids, pool, time.monotonic() - started, out, expected_failures)
    queue.close()
    return 0 if ok else 1


def _watch(queue: JobQueue, total: int, started: float, out: TextIO) -> None:
    """Print the counts four times a second until `total` jobs have finished."""
    header = f"{'elapsed':>8} {'pending':>8} {'running':>8} {'completed':>10} {'failed':>7}"
    print(header, file=out)
    while True:
        counts = queue.counts().get("default", {})
        done = counts.get("completed", 0) + counts.get("failed", 0)
        print(
            f"{time.monotonic() - started:>7.1f}s {counts.get('pending', 0):>8} "
            f"{counts.get('running', 0):>8} {counts.get('completed', 0):>10} "
            f"{counts.get('failed', 0):>7}",
            file=out,
            flush=True,
        )
        if done >= total:
            return
        time.sleep(0.25)


def _summary(
    queue: JobQueue,
    ids: list[str],
    pool: list[Worker],
    elapsed: float,
    out: TextIO,
    expected_failures: int,
) -> bool:
    """Print how the jobs ended; whether exactly the bad cards failed."""
    finished = [queue.get_job(job_id) for job_id in dict.fromkeys(ids)]
    retried = sum(1 for job in finished if job.attempts > 1)
    failed = [job for job in finished if job.status == "failed"]
    completed = sum(1 for job in finished if job.status == "completed")
    print(
        f"\n{len(finished)} jobs finished in {elapsed:.2f}s ({len(finished) / elapsed:.0f} jobs/s)",
        file=out,
    )
    print(f"  completed: {completed}  (retried after a failed attempt: {retried})", file=out)
    print(f"  failed:    {len(failed)}  (bad card numbers, not retried)", file=out)
    for job in failed[:3]:
        print(f"    {job.id} {job.type}: {(job.last_error or '').splitlines()[0]}", file=out)
    per_worker = ", ".join(str(w.jobs_processed) for w in pool)
    print(f"  jobs per worker: {per_worker}", file=out)
    return len(failed) == expected_failures and completed == len(finished) - expected_failures
