"""Testing your handlers: MemoryStorage and run_until_empty, no threads, no sleeps."""

from datetime import datetime, timedelta, timezone

import pytest

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.storage import MemoryStorage


def register(queue: JobQueue) -> None:
    @queue.handler("resize")
    def resize(ctx: JobContext) -> dict[str, int]:
        return {"width": ctx.payload["width"] // 2}


@pytest.fixture
def queue() -> JobQueue:
    q = JobQueue(MemoryStorage())
    register(q)
    return q


def test_resize_halves_the_width(queue: JobQueue) -> None:
    job_id = queue.enqueue("resize", {"width": 800})
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(job_id).result == {"width": 400}


def test_delayed_jobs_wait_for_their_time() -> None:
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    clock = [now]
    queue = JobQueue(MemoryStorage(clock=lambda: clock[0]))  # a clock you move by hand
    register(queue)
    job_id = queue.enqueue("resize", {"width": 10}, delay=60)
    assert Worker(queue).run_until_empty() == 0
    clock[0] = now + timedelta(seconds=61)
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(job_id).status == "completed"
