"""Day-to-day operations: logging, counts, failed jobs, retrying, purging."""

import logging
from datetime import timedelta
from pathlib import Path

from dbjobq import JobContext, JobQueue, RetryPolicy, Worker

logging.basicConfig(
    level=logging.INFO, format="%(levelname)s %(name)s %(message)s"
)  # dbjobq logs through the standard logging module and adds no handlers
for old in Path().glob("operations.db*"):  # start from an empty file, for the output below
    old.unlink()
queue = JobQueue("sqlite:///operations.db", retry_policy=RetryPolicy(base_delay=0))


@queue.handler("sync", max_retries=0)
def sync(ctx: JobContext) -> None:
    ctx.logger.info("syncing account %s", ctx.payload["account"])  # "[sync <id>] syncing ..."
    if ctx.payload["account"] == 3:
        raise RuntimeError("account 3 is locked")


for account in range(5):
    queue.enqueue("sync", {"account": account})
Worker(queue).run_until_empty()

print(queue.counts())
# {'default': {'waiting': 0, 'pending': 0, 'running': 0, 'completed': 4, 'failed': 1, ...}}
assert queue.counts()["default"]["failed"] == 1

for job in queue.get_failed_jobs():
    print(job.id, job.last_error.splitlines()[0])  # <id> RuntimeError: account 3 is locked
    queue.retry(job.id)  # after fixing the cause

# Keep the table small: delete finished jobs after a while (failed ones only if asked).
deleted = queue.purge(timedelta(days=7))
print(f"purged {deleted} jobs")
