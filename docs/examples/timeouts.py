"""Timeouts, cancellation and progress, seen from a handler."""

import threading

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///timeouts.db")
stopped_early = threading.Event()


@queue.handler("export", timeout=0.5, max_retries=0)
def export(ctx: JobContext) -> int:
    rows = 0
    for batch in range(100):
        if ctx.cancelled.wait(0.1):  # wait on the signal instead of sleeping
            stopped_early.set()
            ctx.raise_if_cancelled()  # not done: raise rather than return
        rows += 1000
        ctx.progress(batch + 1, f"{rows} rows")
    return rows


job_id = queue.enqueue("export")
Worker(queue).run_until_empty()
job = queue.get_job(job_id)
print(job.status, job.last_error)  # failed JobTimeoutError: job exceeded its timeout of 0.5s
assert job.status == "failed" and job.last_error is not None
assert job.last_error.startswith("JobTimeoutError")
assert stopped_early.is_set()  # the handler saw ctx.cancelled and stopped
assert job.progress is not None and job.progress >= 1
