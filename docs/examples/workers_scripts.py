"""Workers in scripts and tests: run_until_empty() and max_jobs."""

import time
from pathlib import Path

from dbjobq import JobContext, JobQueue, Worker

for old in Path().glob("workers_scripts.db*"):  # start from an empty file, for the output below
    old.unlink()
queue = JobQueue("sqlite:///workers_scripts.db")


@queue.handler("thumbnail")
def thumbnail(ctx: JobContext) -> str:
    return f"thumb-{ctx.payload['n']}.png"


for n in range(3):
    queue.enqueue("thumbnail", {"n": n})
queue.enqueue("thumbnail", {"n": 99}, delay=60)  # not due yet

# Runs the due jobs in this thread, one after the other, and returns.
processed = Worker(queue).run_until_empty()
print(processed, queue.counts()["default"]["pending"])  # 3 1
assert processed == 3 and queue.counts()["default"]["pending"] == 1

# max_jobs: the worker thread ends by itself after that many jobs.
for n in range(5):
    queue.enqueue("thumbnail", {"n": n})
worker = Worker(queue, max_jobs=2)
worker.start()
deadline = time.monotonic() + 10
while worker.is_alive and time.monotonic() < deadline:
    time.sleep(0.02)
print(worker.is_alive, worker.jobs_processed)  # False 2
assert not worker.is_alive and worker.jobs_processed == 2
