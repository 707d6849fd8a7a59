"""Flow control through the public API: limits on handlers, snoozing, keys at enqueue.

Each test runs on every bundled backend (the `queue` fixture), with real worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from dbjobq import (
    Concurrency,
    ConfigurationError,
    Event,
    InvalidJobError,
    JobContext,
    JobQueue,
    JobSpec,
    JobStatus,
    RateLimit,
    Snooze,
    Worker,
)
from dbjobq.storage.base import Storage
from dbjobq.storage.memory import MemoryStorage

from .conftest import StorageConfig
from .test_cli import ON_TWO_BACKENDS, Cli, cli

__all__ = ["cli"]  # the command-line fixture, shared with test_cli


def drain(queue: JobQueue, workers: list[Worker], total: int, timeout: float = 60.0) -> None:
    """Run the workers until `total` jobs are finished (or fail the test at `timeout`)."""
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = sum(
                n
                for per_status in queue.counts().values()
                for status, n in per_status.items()
                if status in ("completed", "failed", "cancelled")
            )
            if done >= total:
                return
            time.sleep(0.02)
        pytest.fail(f"only part of {total} jobs finished in {timeout}s: {queue.counts()}")
    finally:
        assert Worker.stop_all(workers, timeout=30)


class Ledger:
    """What handlers record: runs that overlap, per key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()

    def run(self, key: str, seconds: float) -> None:
        with self.lock:
            self.running[key] += 1
            self.runs[key] += 1
            self.peak[key] = max(self.peak[key], self.running[key])
        time.sleep(seconds)  # the work itself: overlapping runs must show up here
        with self.lock:
            self.running[key] -= 1


def test_a_concurrency_limit_holds_across_worker_threads(queue: JobQueue) -> None:
    ledger = Ledger()

    @queue.handler("sync", concurrency=Concurrency(2, key=lambda p: p["account"]))
    def sync(ctx: JobContext) -> None:
        ledger.run(str(ctx.payload["account"]), 0.01)

    ids = queue.enqueue_many(JobSpec(type="sync", payload={"account": n % 2}) for n in range(60))
    assert queue.get_job(ids[0]).concurrency_key == "sync:0"  # worked out at enqueue
    # Eight workers (each runs one sync job at a time) for two keys.
    workers = [Worker(queue, poll_interval=0.01) for _ in range(8)]
    drain(queue, workers, 60)
    assert ledger.runs == {"0": 30, "1": 30}
    assert max(ledger.peak.values()) <= 2
    assert {queue.get_job(i).status for i in ids} == {JobStatus.COMPLETED}
    assert {queue.get_job(i).attempts for i in ids} == {1}


def test_one_at_a_time_in_order_per_key(queue: JobQueue) -> None:
    seen: list[tuple[int, int]] = []

    @queue.handler("step", concurrency=Concurrency(1, key=lambda p: p["k"], ordered=True))
    def step(ctx: JobContext) -> None:
        seen.append((ctx.payload["k"], ctx.payload["n"]))

    # Later jobs get higher priorities: order within a key is still enqueue order.
    for n in range(10):
        for k in range(3):
            queue.enqueue("step", {"k": k, "n": n}, priority=n)
    drain(queue, [Worker(queue, poll_interval=0.01, concurrency=4) for _ in range(2)], 30)
    for k in range(3):
        assert [n for key, n in seen if key == k] == list(range(10))


def test_a_snoozed_job_does_not_use_an_attempt(queue: JobQueue) -> None:
    calls: list[int] = []
    events: list[Event] = []
    queue.on("job:snoozed", events.append)

    @queue.handler("poll_partner", max_retries=0)
    def poll_partner(ctx: JobContext) -> str:
        calls.append(ctx.job.attempts)
        if len(calls) == 1:
            raise Snooze(0.05)
        return "ready"

    job_id = queue.enqueue("poll_partner")
    drain(queue, [Worker(queue, poll_interval=0.01)], 1)
    job = queue.get_job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.attempts == 1
    assert job.result == "ready"
    assert job.last_error is None
    assert calls == [1, 1]
    assert [(e.job.id if e.job else None, e.retry_in) for e in events] == [(job_id, 0.05)]


def test_a_snooze_delays_the_job(queue: JobQueue) -> None:
    @queue.handler("later")
    def later(ctx: JobContext) -> None:
        raise Snooze(timedelta(hours=1))

    job_id = queue.enqueue("later")
    worker = Worker(queue, poll_interval=0.01)
    assert worker.run_until_empty() == 1
    job = queue.get_job(job_id)
    assert job.status is JobStatus.PENDING
    assert job.attempts == 0
    assert job.run_at > queue.storage.now() + timedelta(minutes=50)


def test_a_snooze_frees_the_concurrency_slot(queue: JobQueue) -> None:
    order: list[str] = []

    @queue.handler("t", concurrency=Concurrency(1))
    def t(ctx: JobContext) -> None:
        order.append(ctx.payload["name"])
        if ctx.payload["name"] == "first":
            raise Snooze(3600)

    queue.enqueue("t", {"name": "first"}, priority=1)
    queue.enqueue("t", {"name": "second"})
    Worker(queue, poll_interval=0.01).run_until_empty()
    assert order == ["first", "second"]


def test_a_rate_limit_spaces_starts(queue: JobQueue) -> None:
    starts: list[datetime] = []
    lock = threading.Lock()

    @queue.handler("call", rate_limit=RateLimit(5, per=0.5))
    def call(ctx: JobContext) -> None:
        assert ctx.job.started_at is not None
        with lock:
            starts.append(ctx.job.started_at)  # the start as the database recorded it

    queue.enqueue_many(JobSpec(type="call") for _ in range(15))
    began = time.monotonic()
    drain(queue, [Worker(queue, poll_interval=0.02, concurrency=2) for _ in range(3)], 15)
    took = time.monotonic() - began
    starts.sort()
    assert len(starts) == 15
    for i, at in enumerate(starts):
        in_window = [s for s in starts[i:] if s - at < timedelta(seconds=0.5)]
        assert len(in_window) <= 5, starts
    # Three windows' worth: the first five start at once, the last ten need two more.
    assert took >= 1.0


def test_a_key_function_that_fails_at_enqueue_writes_nothing(queue: JobQueue) -> None:
    @queue.handler("t", concurrency=Concurrency(1, key=lambda p: p["account"]))
    def t(ctx: JobContext) -> None: ...

    with pytest.raises(InvalidJobError, match="concurrency key function of 't' raised KeyError"):
        queue.enqueue("t", {"other": 1})
    with pytest.raises(InvalidJobError, match=r"job 1: .*raised KeyError"):
        queue.enqueue_many([JobSpec(type="t", payload={"account": 1}), JobSpec(type="t")])
    assert queue.list_jobs() == []
    # An explicit key wins over the function (and needs no payload field).
    job_id = queue.enqueue("t", {}, concurrency_key="tenant-7")
    assert queue.get_job(job_id).concurrency_key == "tenant-7"


@pytest.mark.parametrize(
    "bad",
    [lambda p: None, lambda p: 1.5, lambda p: True, lambda p: "x" * 300],
)
def test_a_key_function_must_return_a_short_str_or_int(queue: JobQueue, bad: Any) -> None:
    queue.register("t", lambda ctx: None, concurrency=Concurrency(1, key=bad))
    with pytest.raises(InvalidJobError, match="concurrency"):
        queue.enqueue("t", {})
    assert queue.list_jobs() == []


@pytest.mark.parametrize("key", ["", " ", "x" * 256, 5, "a\x00b"])
def test_a_bad_explicit_key_is_refused(queue: JobQueue, key: Any) -> None:
    with pytest.raises(InvalidJobError, match="concurrency_key"):
        queue.enqueue("t", {}, concurrency_key=key)
    assert queue.list_jobs() == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Concurrency(0), "between 1 and 10000"),
        (lambda: Concurrency(2, ordered=True), "needs limit=1"),
        (lambda: Concurrency(1, key="account"), "function of the payload"),  # type: ignore[arg-type]
        (lambda: Concurrency(True), "must be an int"),
        (lambda: RateLimit(0), "between 1 and 100000"),
        (lambda: RateLimit(1, per=0), "more than zero"),
        (lambda: RateLimit(1, per=90000), "at most a day"),
        (lambda: RateLimit(1, key=3), "function of the payload"),  # type: ignore[arg-type]
    ],
)
def test_bad_limits_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_limits_must_be_limit_objects(queue: JobQueue) -> None:
    with pytest.raises(ConfigurationError, match="concurrency must be a Concurrency"):
        queue.register("t", lambda ctx: None, concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rate_limit must be a RateLimit"):
        queue.register("t", lambda ctx: None, rate_limit=(10, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-1, float("nan"), "soon", None])
def test_a_bad_snooze_is_refused(seconds: Any) -> None:
    with pytest.raises(InvalidJobError, match="Snooze seconds"):
        Snooze(seconds)


class NoLimits(MemoryStorage):
    """A backend that cannot enforce limits or snooze."""

    claim_limited = Storage.claim_limited
    snooze = Storage.snooze


def test_a_backend_without_limits_refuses_a_limited_handler() -> None:
    queue = JobQueue(NoLimits())
    assert not queue.storage.capabilities.limits
    with pytest.raises(ConfigurationError, match=r"cannot enforce .*Capabilities.limits"):
        queue.register("t", lambda ctx: None, concurrency=Concurrency(1))
    with pytest.raises(ConfigurationError, match=r"cannot enforce"):
        queue.register("t", lambda ctx: None, rate_limit=RateLimit(1))
    queue.register("t", lambda ctx: None)  # without limits it is fine


def test_without_snooze_a_snooze_is_a_retry_that_counts(caplog: pytest.LogCaptureFixture) -> None:
    queue = JobQueue(NoLimits())
    assert not queue.storage.capabilities.snooze

    @queue.handler("t", max_retries=3)
    def t(ctx: JobContext) -> None:
        raise Snooze(3600)

    job_id = queue.enqueue("t")
    Worker(queue).run_until_empty()
    job = queue.get_job(job_id)
    assert job.status is JobStatus.PENDING
    assert job.attempts == 1
    assert job.last_error is not None and job.last_error.startswith("Snooze: snoozed for 3600s")
    assert "cannot snooze (Capabilities.snooze)" in caplog.text


def test_limits_are_the_handlers_of_the_worker_that_runs_the_job(queue: JobQueue) -> None:
    """A producer without the handler stores no key; the worker's claim works it out."""
    producer = JobQueue(queue.storage)
    ids = [producer.enqueue("t", {"k": n % 2}) for n in range(6)]
    assert {producer.get_job(i).concurrency_key for i in ids} == {None}
    ledger = Ledger()

    @queue.handler("t", concurrency=Concurrency(1, key=lambda p: p["k"]))
    def t(ctx: JobContext) -> None:
        ledger.run(str(ctx.payload["k"]), 0.01)

    drain(queue, [Worker(queue, poll_interval=0.01, concurrency=4)], 6)
    assert ledger.peak == {"0": 1, "1": 1}
    assert {queue.get_job(i).concurrency_key for i in ids} == {"t:0", "t:1"}


def test_stats_count_running_jobs_per_concurrency_key(queue: JobQueue) -> None:
    queue.enqueue_many(
        [JobSpec(type="t", concurrency_key="acct-1") for _ in range(2)]
        + [JobSpec(type="t", concurrency_key="acct-2"), JobSpec(type="t")]
    )
    (default,) = queue.stats().queues
    assert default.running_keys == {}  # pending jobs hold no slot
    claimed = queue.storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=4)
    assert len(claimed) == 4
    (default,) = queue.stats().queues
    assert default.running_keys == {"acct-1": 2, "acct-2": 1}


@ON_TWO_BACKENDS
def test_the_command_line_shows_keys(cli: Cli, sql_config: StorageConfig) -> None:
    job = cli.json("enqueue", "send_email", "--concurrency-key", "acct-9")
    assert cli.json("job", job["id"])["concurrency_key"] == "acct-9"
    assert "acct-9" in cli.run("job", job["id"]).stdout
    bad = cli.run("enqueue", "send_email", "--concurrency-key", "")
    assert bad.returncode == 2 and "concurrency_key must not be empty" in bad.stderr
    storage = sql_config.open()
    try:
        assert storage.claim(queues=["default"], worker_id="w", lease_seconds=60)
    finally:
        storage.close()
    out = cli.run("stats").stdout
    assert "running per concurrency key in queue default: acct-9 1" in out
    assert cli.json("stats")["queues"][0]["running_keys"] == {"acct-9": 1}
