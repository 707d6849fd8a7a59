"""Pausing a queue: its jobs wait, every worker leaves them alone, resuming lets them run."""

from pathlib import Path

from dbjobq import JobContext, JobQueue, Worker

for old in Path().glob("pausing.db*"):  # start from an empty file, for the output below
    old.unlink()
queue = JobQueue("sqlite:///pausing.db")


@queue.handler("charge")
def charge(ctx: JobContext) -> None:
    print("charging order", ctx.payload["order"])  # charging order 2


queue.pause("billing")  # say, while the payment provider has an outage
queue.enqueue("charge", {"order": 1}, queue="billing")  # enqueueing still works
queue.enqueue("charge", {"order": 2})
worker = Worker(queue, queues=["billing", "default"])
print(worker.run_until_empty())  # 1
print(queue.paused_queues())  # {'billing'}
print(queue.counts()["billing"]["pending"])  # 1

queue.resume("billing")
print(worker.run_until_empty())  # 1
print(queue.counts()["billing"]["completed"])  # 1
