"""Waiting for a result: enqueue, let a worker run the job, wait for it, read the result."""

import asyncio
from pathlib import Path

from dbjobq import JobContext, JobQueue, JobStatus, Worker

for old in Path().glob("workflow_wait.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///workflow_wait.db")


@queue.handler("resize")
def resize(ctx: JobContext) -> dict:
    width, height = ctx.payload["size"]
    return {"thumbnail": f"{ctx.payload['image']}-{width // 4}x{height // 4}.jpg"}


@queue.handler("charge", max_retries=0)
def charge(ctx: JobContext) -> None:
    raise ValueError("card declined")


worker = Worker(queue)
worker.start()

# Block until the job is finished: completed, failed or cancelled.
job_id = queue.enqueue("resize", {"image": "cat", "size": [1600, 1200]})
job = queue.wait(job_id, timeout=30)
print(job.status.value, job.result)  # completed {'thumbnail': 'cat-400x300.jpg'}

# A failure is an answer too: wait returns the job, last_error says why.
job = queue.wait(queue.enqueue("charge"), timeout=30)
print(job.status.value, job.last_error.splitlines()[-1])  # failed ValueError: card declined

# No answer in time: TimeoutError, and the job goes on as before.
job_id = queue.enqueue("no_worker_takes_this")
try:
    queue.wait(job_id, timeout=0.2)
except TimeoutError:
    print("still", queue.get_job(job_id).status.value)  # still pending
queue.cancel(job_id)
print(queue.wait(job_id).status.value)  # cancelled


# In an async web handler: await the result without blocking the event loop.
async def thumbnail_endpoint(image: str) -> dict:
    job_id = queue.enqueue("resize", {"image": image, "size": [800, 600]})
    try:
        job = await queue.wait_async(job_id, timeout=5)
    except TimeoutError:
        return {"status": 202, "job": job_id}  # still running: the client asks again later
    if job.status is not JobStatus.COMPLETED:
        return {"status": 500, "error": job.last_error}
    return {"status": 200, **job.result}


async def main() -> None:
    # Two requests at once: both wait on the same loop, neither blocks the other.
    dog, owl = await asyncio.gather(thumbnail_endpoint("dog"), thumbnail_endpoint("owl"))
    print(dog)  # {'status': 200, 'thumbnail': 'dog-200x150.jpg'}
    print(owl)  # {'status': 200, 'thumbnail': 'owl-200x150.jpg'}


asyncio.run(main())
worker.stop()
queue.close()
