"""The application module that the dbjobq command examples use: `--app tasks:queue`."""

import time
from datetime import timedelta

from dbjobq import JobContext, JobQueue

queue = JobQueue("sqlite:///jobs.db")


@queue.handler("send_email", max_retries=2)
def send_email(ctx: JobContext) -> dict:
    if "@" not in ctx.payload["to"]:
        raise ValueError(f"not an address: {ctx.payload['to']}")
    time.sleep(ctx.payload.get("seconds", 0))
    return {"sent_to": ctx.payload["to"]}


@queue.periodic(every=timedelta(minutes=10))
def cleanup(ctx: JobContext) -> None:
    queue.purge(timedelta(days=7))
