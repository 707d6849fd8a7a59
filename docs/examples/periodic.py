"""Periodic jobs: on a cron schedule, or at a fixed interval."""

import time
from datetime import timedelta

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///periodic.db")
beats: list[str] = []


@queue.periodic("0 3 * * *", tz="Europe/Berlin")  # every night at 03:00 Berlin time
def nightly_report(ctx: JobContext) -> None:
    print("report for", ctx.meta["tick"])


@queue.periodic(every=timedelta(seconds=1), name="heartbeat")
def beat(ctx: JobContext) -> None:
    beats.append(ctx.meta["tick"])  # the tick's time, as ISO 8601


print(sorted(queue.schedules))  # ['heartbeat', 'nightly_report']
workers = [Worker(queue, poll_interval=0.2) for _ in range(3)]
for worker in workers:
    worker.start()
time.sleep(3.5)
Worker.stop_all(workers)
print(len(beats), len(set(beats)))  # e.g. 4 4: one job per tick, though three workers saw each
assert len(beats) == len(set(beats)) >= 2
