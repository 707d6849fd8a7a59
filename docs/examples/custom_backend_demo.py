"""Run jobs on JsonFileStorage (custom_backend.py) with a real JobQueue and Worker."""

from pathlib import Path

from custom_backend import JsonFileStorage

from dbjobq import JobContext, JobQueue, Worker

Path("jobs.json").unlink(missing_ok=True)  # start from an empty file, for the output below
queue = JobQueue(JsonFileStorage("jobs.json"))  # in the current directory


@queue.handler("add")
def add(ctx: JobContext) -> int:
    """Add the payload's two numbers."""
    return int(ctx.payload["a"]) + int(ctx.payload["b"])


ids = [queue.enqueue("add", {"a": n, "b": 10}) for n in range(3)]
print("processed", Worker(queue).run_until_empty(), "jobs")
for job_id in ids:
    job = queue.get_job(job_id)
    print(job.id, job.status, job.result)  # <id> completed 10 (then 11, then 12)
    assert job.status == "completed"

# The jobs are in the file: a new storage object on the same path reads them.
reopened = JsonFileStorage("jobs.json")
assert [reopened.get(job_id).result for job_id in ids] == [10, 11, 12]
print(reopened.count_jobs())  # {('default', <JobStatus.COMPLETED: 'completed'>): 3}
