"""Several workers in one process: up to four jobs run at the same time."""

import time
from collections.abc import Callable
from pathlib import Path

from dbjobq import JobContext, JobQueue, JobSpec, Worker

for old in Path().glob("workers_many.db*"):  # start from an empty file, for the output below
    old.unlink()
queue = JobQueue("sqlite:///workers_many.db")


@queue.handler("resize")
def resize(ctx: JobContext) -> dict[str, int]:
    time.sleep(0.05)  # stands for real work that waits on I/O
    return {"n": ctx.payload["n"]}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


workers = [Worker(queue) for _ in range(4)]
for worker in workers:
    worker.start()

started = time.monotonic()
queue.enqueue_many([JobSpec(type="resize", payload={"n": n}) for n in range(40)])
wait_for(lambda: queue.counts()["default"]["completed"] == 40)
elapsed = time.monotonic() - started

assert Worker.stop_all(workers), "a worker is still busy"
per_worker = [worker.jobs_processed for worker in workers]
print(f"{elapsed:.1f}s, per worker: {per_worker}")  # e.g. 0.6s, per worker: [10, 10, 10, 10]
assert sum(per_worker) == 40
assert sum(1 for n in per_worker if n > 0) > 1  # the jobs were shared
