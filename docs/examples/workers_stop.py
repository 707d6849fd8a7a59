"""stop(timeout): a job that outlives the timeout and ignores ctx.cancelled is given up,
then rescued."""

import time
from collections.abc import Callable

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///workers_stop.db")


@queue.handler("report")
def report(ctx: JobContext) -> dict[str, int]:
    if ctx.attempt == 1:
        time.sleep(3)  # slow, and deaf to ctx.cancelled: the case stop() cannot help
    return {"attempt": ctx.attempt}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


job_id = queue.enqueue("report")
worker = Worker(queue, lease_seconds=1)  # a short lease for the demo; the default is 30 s
worker.start()
wait_for(lambda: worker.current_job is not None)

started = time.monotonic()
assert worker.stop(timeout=0.5)  # True: the worker thread has ended
print(f"stop() returned after {time.monotonic() - started:.1f}s")  # about 1.5s: timeout + 1 s grace
job = queue.get_job(job_id)
print(job.status, job.worker_id == worker.id)  # running True: left for rescue
assert job.status == "running"

# Once the lease has expired, any polling worker rescues the job; it runs again.
with Worker(queue, poll_interval=0.1, max_poll_interval=0.5):
    wait_for(lambda: queue.get_job(job_id).status == "completed")

job = queue.get_job(job_id)
print(job.status, job.attempts, job.result)  # completed 2 {'attempt': 2}
assert job.attempts == 2 and job.result == {"attempt": 2}
