"""A rate limit: at most 5 calls to a partner API start in any second, across all workers."""

import time
from datetime import datetime, timedelta
from pathlib import Path

from dbjobq import JobContext, JobQueue, JobSpec, RateLimit, Worker

for old in Path().glob("flow_rate.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///flow_rate.db")
starts: list[datetime] = []


@queue.handler("call_partner", rate_limit=RateLimit(5, per=1.0))
def call_partner(ctx: JobContext) -> None:
    assert ctx.job.started_at is not None
    starts.append(ctx.job.started_at)  # when the database let it start


queue.enqueue_many(JobSpec(type="call_partner", payload={"n": n}) for n in range(12))
began = time.monotonic()
workers = [Worker(queue, poll_interval=0.05) for _ in range(3)]
for worker in workers:
    worker.start()
while queue.counts()["default"]["completed"] < 12:
    time.sleep(0.05)
Worker.stop_all(workers)
busiest = max(sum(1 for s in starts if t <= s < t + timedelta(seconds=1)) for t in starts)
print(busiest)  # 5
print(f"took about {time.monotonic() - began:.0f} s")  # about 2 s: three windows' worth
