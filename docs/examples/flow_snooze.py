"""Snoozing: a job that is not ready yet goes back to pending without using an attempt."""

import time
from pathlib import Path

from dbjobq import Event, JobContext, JobQueue, Snooze, Worker

for old in Path().glob("flow_snooze.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///flow_snooze.db")
checks = []


@queue.handler("fetch_report", max_retries=0)
def fetch_report(ctx: JobContext) -> str:
    checks.append(ctx.job.attempts)
    if len(checks) < 3:  # the partner has not finished the report yet
        raise Snooze(0.1)  # look again in 0.1 s (a timedelta works too)
    return "report.pdf"


@queue.on("job:snoozed")
def snoozed(event: Event) -> None:
    print(f"snoozed for {event.retry_in} s")  # snoozed for 0.1 s


job_id = queue.enqueue("fetch_report")
worker = Worker(queue, poll_interval=0.05)
while queue.get_job(job_id).status.value != "completed":
    worker.run_until_empty()  # runs what is due now
    time.sleep(0.05)
job = queue.get_job(job_id)
print(job.status, job.result)  # completed report.pdf
print(checks, job.attempts)  # [1, 1, 1] 1: max_retries=0, and no retry was used
