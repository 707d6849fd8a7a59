import time

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///jobs.db")  # or "postgresql://user@host/db" (the postgres extra)


@queue.handler("send_email", max_retries=3)
def send_email(ctx: JobContext) -> dict:
    ctx.progress(50, "rendering")  # stored on the job
    ctx.raise_if_cancelled()  # asked to stop (shutdown, cancel, timeout)? not done: raise
    return {"sent": True, "to": ctx.payload["to"]}  # stored as job.result


job_id = queue.enqueue("send_email", {"to": "a@example.com"}, priority=5)

worker = Worker(queue, poll_interval=1.0, max_poll_interval=10.0)
worker.start()  # returns at once; the job is picked up at once
while not queue.get_job(job_id).status.is_finished:
    time.sleep(0.05)
worker.stop()  # waits up to 30 s for a running job

job = queue.get_job(job_id)
print(job.status, job.attempts, job.result)  # completed 1 {'sent': True, 'to': 'a@example.com'}
