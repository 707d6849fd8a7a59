"""A concurrency limit per key: at most two imports per customer run at once, anywhere."""

import threading
import time
from collections import Counter
from pathlib import Path

from dbjobq import Concurrency, JobContext, JobQueue, JobSpec, Worker

for old in Path().glob("flow_concurrency.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///flow_concurrency.db")
lock = threading.Lock()
running: Counter[str] = Counter()
most: Counter[str] = Counter()


@queue.handler("import_file", concurrency=Concurrency(2, key=lambda p: p["customer"]))
def import_file(ctx: JobContext) -> None:
    customer = ctx.payload["customer"]
    with lock:
        running[customer] += 1
        most[customer] = max(most[customer], running[customer])
    time.sleep(0.02)  # the import itself
    with lock:
        running[customer] -= 1


# One big customer enqueues 20 files, a small one 2.
ids = queue.enqueue_many(
    [JobSpec(type="import_file", payload={"customer": "big", "file": n}) for n in range(20)]
    + [JobSpec(type="import_file", payload={"customer": "small", "file": n}) for n in range(2)]
)
print(queue.get_job(ids[0]).concurrency_key)  # import_file:big
print(queue.get_job(ids[-1]).concurrency_key)  # import_file:small

workers = [Worker(queue, poll_interval=0.01) for _ in range(6)]
for worker in workers:
    worker.start()
while queue.counts()["default"]["completed"] < 22:
    time.sleep(0.05)
Worker.stop_all(workers)
print(most["big"] <= 2, most["small"] <= 2)  # True True
print(queue.counts()["default"]["completed"])  # 22

# An explicit key wins over the key function, and lets several types share a limit.
queue.enqueue("import_file", {"customer": "big"}, concurrency_key="tenant-7")
print(queue.list_jobs(status="pending")[0].concurrency_key)  # tenant-7
