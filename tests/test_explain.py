"""`JobQueue.explain`: each reason, from a situation built for real, on memory and SQLite."""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timedelta, timezone

import pytest

import dbjobq.explain
from dbjobq import (
    InvalidJobError,
    JobContext,
    JobNotFound,
    JobQueue,
    JobStatus,
    Worker,
    WorkerInfo,
)
from dbjobq.flow import Concurrency, RateLimit
from dbjobq.storage import Storage

from .conftest import FAST_RETRIES
from .helpers import wait_until


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest) -> JobQueue:
    storage: Storage = request.getfixturevalue(f"{request.param}_storage")
    return JobQueue(storage, retry_policy=FAST_RETRIES)


def noop(ctx: JobContext) -> None:
    return None


def register_worker(
    queue: JobQueue, worker_id: str = "w1", queues: tuple[str, ...] = ("default",), *types: str
) -> None:
    """A worker's registry record, as a running worker saves it."""
    queue.storage.save_worker(
        WorkerInfo(
            id=worker_id,
            hostname=socket.gethostname(),
            pid=1,
            queues=queues,
            types=types or tuple(queue.handlers),
            started_at=datetime.now(timezone.utc),
        )
    )


def claim(queue: JobQueue, worker_id: str = "w1", *, lease_seconds: float = 30.0) -> list[str]:
    """Claim one job as a worker of the queue's handlers would, limits and all."""
    types = list(queue.handlers)
    limits = queue.registry.limits(types)
    if limits:
        jobs = queue.storage.claim_limited(
            queues=["default"],
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            types=types,
            limits=limits,
        )
    else:
        jobs = queue.storage.claim(
            queues=["default"], worker_id=worker_id, lease_seconds=lease_seconds, types=types
        )
    return [job.id for job in jobs]


# -- pending ------------------------------------------------------------------------------


def test_a_due_job_with_a_live_worker_is_ready(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work")
    explanation = queue.explain(job_id)
    assert (explanation.job_id, explanation.status, explanation.codes) == (
        job_id,
        JobStatus.PENDING,
        ("ready",),
    )
    assert explanation.text.startswith(f"job {job_id} (work, queue default) is pending:\n  - due")


def test_a_job_not_due_yet_says_when_it_is(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work", delay=240)
    (reason,) = queue.explain(job_id).reasons
    assert reason.code == "scheduled"
    assert 200 < reason.detail["due_in"] <= 240
    assert reason.detail["run_at"] == queue.get_job(job_id).run_at.isoformat()
    assert reason.text.startswith("due in 4m (run_at ")


def test_a_retry_that_is_not_due_says_what_failed(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work")
    (claimed,) = queue.storage.claim(queues=["default"], worker_id="w1", lease_seconds=30)
    token = claimed.lease_token
    assert token is not None
    assert queue.storage.fail(job_id, token, error="ValueError: bad\n\nTraceback", retry_in=600)
    (reason,) = queue.explain(job_id).reasons
    assert reason.code == "scheduled"
    assert (reason.detail["attempts"], reason.detail["error"]) == (1, "ValueError: bad")
    assert "a retry after 1 attempt: ValueError: bad" in reason.text


def test_a_job_in_a_paused_queue(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work")
    queue.pause("default")
    assert queue.explain(job_id).codes == ("queue_paused",)
    queue.resume("default")
    assert queue.explain(job_id).codes == ("ready",)


def test_no_live_worker_for_the_queue_or_for_the_type(queue: JobQueue) -> None:
    queue.register("work", noop)
    job_id = queue.enqueue("work")
    (reason,) = queue.explain(job_id).reasons
    assert (reason.code, reason.detail["workers_on_queue"]) == ("no_worker", [])
    assert reason.text == "no live worker takes jobs from queue default"
    register_worker(queue, "w1", ("default",), "other")  # the queue, but not the type
    (reason,) = queue.explain(job_id).reasons
    assert (reason.code, reason.detail["workers_on_queue"]) == ("no_worker", ["w1"])
    assert "no live worker handles type work in queue default" in reason.text
    register_worker(queue, "w2", ("default", "mail"), "work")
    assert queue.explain(job_id).codes == ("ready",)


def test_a_real_worker_counts_as_live(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.handler("block")
    def block(ctx: JobContext) -> None:
        started.set()
        release.wait(30)

    queue.register("work", noop)
    blocker = queue.enqueue("block", priority=1)
    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.05)
    worker.start()
    try:
        assert started.wait(10)
        waiting = queue.enqueue("work")  # behind nothing, but the one worker is busy

        def busy() -> bool:
            return queue.explain(waiting).codes == ("workers_busy",)

        wait_until(busy, what="the worker's record to name its current job")
        (reason,) = queue.explain(waiting).reasons
        assert reason.detail == {"workers": [worker.id]}
        assert reason.text.startswith("every live worker that takes it (1) is running a job")
        running = queue.explain(blocker)
        assert running.codes == ("running",)
        (reason,) = running.reasons
        assert reason.detail["worker_id"] == worker.id
        assert 0 <= reason.detail["worker_seen_ago"] < dbjobq.explain.STALE_AFTER
        assert 0 < reason.detail["lease_left"] <= 30
        assert f"running on worker {worker.id} since " in reason.text
    finally:
        release.set()
        assert worker.stop(timeout=10)


def test_a_concurrency_key_held_by_a_running_job(queue: JobQueue) -> None:
    queue.register("sync", noop, concurrency=Concurrency(1, key=lambda p: p["account"]))
    register_worker(queue)
    first = queue.enqueue("sync", {"account": 42})
    second = queue.enqueue("sync", {"account": 42})
    other = queue.enqueue("sync", {"account": 7})
    assert claim(queue) == [first]
    reason = queue.explain(second).reasons[0]
    assert reason.code == "concurrency_full"
    assert (reason.detail["key"], reason.detail["limit"]) == ("sync:42", 1)
    assert [r["id"] for r in reason.detail["running"]] == [first]
    assert reason.detail["running"][0]["worker_id"] == "w1"
    assert reason.text.startswith(f"held by concurrency key sync:42 (limit 1; running: job {first}")
    # A job of another key is not held back by it (only behind the job before it).
    assert "concurrency_full" not in queue.explain(other).codes
    assert claim(queue) == [other]  # and the claim agrees: the second one is held
    assert queue.explain(second).codes == ("concurrency_full",)


def test_an_explicit_concurrency_key_shared_by_two_types(queue: JobQueue) -> None:
    queue.register("export", noop, concurrency=Concurrency(1))
    queue.register("import", noop, concurrency=Concurrency(1))
    register_worker(queue)
    running = queue.enqueue("export", concurrency_key="tenant-9")
    waiting = queue.enqueue("import", concurrency_key="tenant-9")
    assert claim(queue) == [running]
    (reason,) = queue.explain(waiting).reasons
    assert (reason.code, reason.detail["key"]) == ("concurrency_full", "tenant-9")
    assert reason.detail["running"][0]["type"] == "export"


def test_an_expired_lease_frees_the_concurrency_slot(queue: JobQueue) -> None:
    queue.register("sync", noop, concurrency=Concurrency(1))
    register_worker(queue)
    first = queue.enqueue("sync")
    second = queue.enqueue("sync")
    assert claim(queue, lease_seconds=0.05) == [first]
    wait_until(lambda: queue.explain(second).codes == ("ready",), what="the lease to expire")
    assert queue.explain(first).codes == ("running", "heartbeat_stale")


def test_an_ordered_key_waits_for_the_earlier_jobs(queue: JobQueue) -> None:
    ordered = Concurrency(1, key=lambda p: p["account"], ordered=True)
    queue.register("sync", noop, concurrency=ordered)
    register_worker(queue)
    first = queue.enqueue("sync", {"account": 1}, run_at=queue.storage.now() + timedelta(hours=1))
    second = queue.enqueue("sync", {"account": 1})
    other = queue.enqueue("sync", {"account": 2})
    (reason,) = queue.explain(second).reasons
    assert reason.code == "concurrency_ordered"
    assert dict(reason.detail) == {"key": "sync:1", "earlier": [first], "count": 1}
    assert reason.text.endswith(f"after the 1 earlier pending job(s) of the key, first {first}")
    assert queue.explain(other).codes == ("behind", "ready")  # the second is ahead, but held
    assert claim(queue) == [other]  # the claim agrees: the second waits for the first


def test_a_full_rate_limit_says_until_when(queue: JobQueue) -> None:
    queue.register("call", noop, rate_limit=RateLimit(2, per=3600))
    register_worker(queue)
    ids = [queue.enqueue("call") for _ in range(3)]
    before = queue.storage.now()
    assert claim(queue) == ids[:1] and claim(queue) == ids[1:2]
    (reason,) = queue.explain(ids[2]).reasons
    assert reason.code == "rate_limited"
    assert (reason.detail["key"], reason.detail["count"], reason.detail["per"]) == ("call", 2, 3600)
    until = datetime.fromisoformat(reason.detail["until"])
    assert before + timedelta(seconds=3600) <= until <= queue.storage.now() + timedelta(hours=1)
    assert reason.text.startswith("rate limit call (2 per 3600s) is full until ")
    assert claim(queue) == []  # the claim agrees


def test_a_rate_limit_with_room_holds_nothing(queue: JobQueue) -> None:
    queue.register("call", noop, rate_limit=RateLimit(5, per=3600, key=lambda p: p["partner"]))
    register_worker(queue)
    first = queue.enqueue("call", {"partner": "a"})
    second = queue.enqueue("call", {"partner": "a"})
    assert claim(queue) == [first]
    assert queue.explain(second).codes == ("ready",)


def test_jobs_ahead_in_claim_order(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    urgent = queue.enqueue("work", priority=10)
    older = queue.enqueue("work")
    mine = queue.enqueue("work")
    queue.enqueue("work")  # later: behind it
    queue.enqueue("work", queue="other", priority=99)  # another queue
    queue.enqueue("work", priority=50, delay=3600)  # not due
    assert queue.explain(urgent).codes == ("ready",)
    reasons = queue.explain(mine).reasons
    assert [r.code for r in reasons] == ["behind", "ready"]
    assert dict(reasons[0].detail) == {"ahead": 2, "higher_priority": 1, "at_least": False}
    assert reasons[0].text == (
        "waiting behind 2 due job(s) of queue default in claim order (1 of a higher priority)"
    )
    assert queue.explain(older).reasons[0].detail["ahead"] == 1


def test_past_the_scan_the_count_is_a_lower_bound(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbjobq.explain, "BEHIND_SCAN", 3)
    queue.register("work", noop)
    register_worker(queue)
    ids = [queue.enqueue("work") for _ in range(4)]
    queue.enqueue("work", priority=1)  # ahead of all, but past the scan
    (behind, _) = queue.explain(ids[2]).reasons
    assert dict(behind.detail) == {"ahead": 2, "higher_priority": 0, "at_least": True}
    assert "waiting behind at least 2 due job(s)" in behind.text


def test_without_the_handler_limits_are_not_checked(queue: JobQueue) -> None:
    queue.register("sync", noop, concurrency=Concurrency(1))
    register_worker(queue)
    first = queue.enqueue("sync")
    second = queue.enqueue("sync")
    assert claim(queue) == [first]
    bare = JobQueue(queue.storage)  # no handlers: the command line without --app
    reasons = bare.explain(second).reasons
    assert [r.code for r in reasons] == ["limits_unknown", "ready"]
    assert reasons[0].detail == {"type": "sync", "concurrency_key": "sync"}


def test_several_reasons_at_once(queue: JobQueue) -> None:
    queue.register("work", noop)
    job_id = queue.enqueue("work", delay=60)
    queue.pause("default")
    assert queue.explain(job_id).codes == ("scheduled", "queue_paused", "no_worker")


# -- running ------------------------------------------------------------------------------


def test_a_running_job_whose_worker_has_no_record(queue: JobQueue) -> None:
    queue.register("work", noop)
    job_id = queue.enqueue("work")
    assert claim(queue, "ghost") == [job_id]
    running, stale = queue.explain(job_id).reasons
    assert (running.code, running.detail["worker_seen_ago"]) == ("running", None)
    assert stale.code == "heartbeat_stale"
    assert "worker ghost has no registry record" in stale.text


def test_a_running_job_whose_lease_expired(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work")
    assert claim(queue, lease_seconds=0.05) == [job_id]

    def stale() -> bool:
        return queue.explain(job_id).codes == ("running", "heartbeat_stale")

    wait_until(stale, what="the lease to expire")
    reason = queue.explain(job_id).reasons[1]
    assert reason.detail["lease_left"] <= 0 and reason.detail["worker_id"] == "w1"
    assert reason.text.startswith("its lease expired ")


def test_a_worker_silent_for_long_is_stale() -> None:
    from dbjobq.storage import MemoryStorage

    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    queue = JobQueue(MemoryStorage(clock=lambda: now[0]))
    queue.register("work", noop)
    register_worker(queue)
    job_id = queue.enqueue("work")
    assert claim(queue, lease_seconds=300) == [job_id]
    assert queue.explain(job_id).codes == ("running",)
    now[0] += timedelta(seconds=dbjobq.explain.STALE_AFTER + 5)
    running, stale = queue.explain(job_id).reasons
    assert running.detail["worker_seen_ago"] == dbjobq.explain.STALE_AFTER + 5
    assert "its last heartbeat was 20s ago" in running.text
    assert stale.text.startswith("worker w1 was last seen 20s ago")


# -- finished -----------------------------------------------------------------------------


def test_finished_jobs_say_how_and_when(queue: JobQueue) -> None:
    queue.register("work", noop)

    @queue.handler("broken", max_retries=0)
    def broken(ctx: JobContext) -> None:
        raise ValueError("not an address")

    done = queue.enqueue("work")
    failed = queue.enqueue("broken")
    cancelled = queue.enqueue("work", delay=60)
    assert queue.cancel(cancelled)
    Worker(queue).run_until_empty()
    (reason,) = queue.explain(done).reasons
    assert (reason.code, reason.detail["attempts"], reason.detail["error"]) == ("finished", 1, None)
    assert reason.detail["finished_at"] == queue.get_job(done).finished_at.isoformat()  # type: ignore[union-attr]
    assert reason.text.startswith("completed at ") and reason.text.endswith("after 1 attempt")
    explanation = queue.explain(failed)
    assert explanation.status is JobStatus.FAILED
    assert explanation.reasons[0].detail["error"] == "ValueError: not an address"
    assert explanation.reasons[0].text.endswith("after 1 attempt: ValueError: not an address")
    assert queue.explain(cancelled).reasons[0].text.startswith("cancelled at ")


def test_to_dict_is_json(queue: JobQueue) -> None:
    queue.register("work", noop)
    job_id = queue.enqueue("work", delay=60)
    data = json.loads(json.dumps(queue.explain(job_id).to_dict()))
    assert data["job_id"] == job_id and data["status"] == "pending"
    assert [r["code"] for r in data["reasons"]] == ["scheduled", "no_worker"]
    assert data["text"].startswith(f"job {job_id} (work, queue default) is pending:\n  - due in")


def test_an_unknown_or_bad_id(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound):
        queue.explain("no-such-job")
    with pytest.raises(InvalidJobError):
        queue.explain(42)  # type: ignore[arg-type]
