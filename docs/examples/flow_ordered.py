"""One at a time per key, in order: each account's events are applied in the order sent."""

import time
from pathlib import Path

from dbjobq import Concurrency, JobContext, JobQueue, Worker

for old in Path().glob("flow_ordered.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///flow_ordered.db")
applied: list[str] = []


@queue.handler("apply_event", concurrency=Concurrency(1, key=lambda p: p["account"], ordered=True))
def apply_event(ctx: JobContext) -> None:
    applied.append(f"{ctx.payload['account']}:{ctx.payload['event']}")


# Later events even get higher priorities: within an account, order still holds.
for n, event in enumerate(["opened", "deposit", "withdrawal", "closed"]):
    queue.enqueue("apply_event", {"account": "A", "event": event}, priority=n)
    queue.enqueue("apply_event", {"account": "B", "event": event}, priority=n)

workers = [Worker(queue, poll_interval=0.01) for _ in range(4)]
for worker in workers:
    worker.start()
while queue.counts()["default"]["completed"] < 8:
    time.sleep(0.05)
Worker.stop_all(workers)
print([e for e in applied if e.startswith("A:")])
# ['A:opened', 'A:deposit', 'A:withdrawal', 'A:closed']
print([e for e in applied if e.startswith("B:")])
# ['B:opened', 'B:deposit', 'B:withdrawal', 'B:closed']
