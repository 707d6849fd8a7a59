"""Health checks: what each worker of this process is doing, and the queue's counts."""

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///workers_health.db")
release = threading.Event()  # lets the demo decide when the export job ends


@queue.handler("export")
def export(ctx: JobContext) -> None:
    release.wait(10)


def health(queue: JobQueue, workers: list[Worker], stuck_after: float = 600.0) -> dict[str, Any]:
    """Healthy when every worker runs and none has been on one job for `stuck_after` s."""
    now = datetime.now(timezone.utc)
    healthy = True
    report = []
    for worker in workers:
        job = worker.current_job  # read once: it changes under your feet
        current = None
        if job is not None and job.started_at is not None:
            running_for = (now - job.started_at).total_seconds()
            current = {"id": job.id, "type": job.type, "running_for": round(running_for, 1)}
            healthy = healthy and running_for < stuck_after
        healthy = healthy and worker.is_alive
        report.append(
            {
                "id": worker.id,
                "alive": worker.is_alive,
                "jobs_processed": worker.jobs_processed,
                "current_job": current,
            }
        )
    return {"healthy": healthy, "workers": report, "queues": queue.counts()}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


workers = [Worker(queue) for _ in range(2)]
for worker in workers:
    worker.start()
job_id = queue.enqueue("export")
wait_for(lambda: any(worker.current_job for worker in workers))

busy = health(queue, workers)
print(json.dumps(busy, indent=2))
assert busy["healthy"]
assert [w["current_job"]["id"] for w in busy["workers"] if w["current_job"]] == [job_id]
assert busy["queues"]["default"]["running"] == 1

release.set()
wait_for(lambda: queue.get_job(job_id).status == "completed")
wait_for(lambda: sum(worker.jobs_processed for worker in workers) == 1)
idle = health(queue, workers)
assert idle["healthy"] and all(w["current_job"] is None for w in idle["workers"])

for worker in workers:
    worker.stop()
assert not health(queue, workers)["healthy"]  # stopped workers are not alive
