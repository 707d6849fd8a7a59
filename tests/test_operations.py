"""Operating dbjobq: the worker registry, events, periodic jobs, stats and retention."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dbjobq import (
    ConfigurationError,
    Event,
    JobContext,
    JobQueue,
    JobSpec,
    RetryPolicy,
    Worker,
)
from dbjobq.periodic import Schedule, Ticker
from dbjobq.storage import MemoryStorage

from .helpers import wait_until

# -- the worker registry ----------------------------------------------------------------


def test_running_workers_are_listed_with_their_current_job(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.handler("slow")
    def slow(ctx: JobContext) -> None:
        started.set()
        release.wait(10)

    queue.register("other", lambda ctx: None)
    job_id = queue.enqueue("slow")
    # A short lease: the busy worker renews it, and its record, every 0.2 s.
    busy = Worker(
        queue, poll_interval=0.01, worker_id="busy-1", queues=["default"], lease_seconds=0.6
    )
    idle = Worker(queue, poll_interval=0.01, worker_id="idle-1", queues=["mail"])
    busy.start()
    idle.start()
    try:
        assert started.wait(10)
        busy._upkeep.last_saved = float("-inf")  # save now rather than in up to 5 s
        wait_until(lambda: any(w.current_job == job_id for w in queue.list_workers()))
        found = {w.id: w for w in queue.list_workers()}
        assert set(found) == {"busy-1", "idle-1"}
        assert found["busy-1"].queues == ("default",)
        assert found["busy-1"].types == ("other", "slow")
        assert found["idle-1"].current_job is None
        assert found["busy-1"].pid > 0 and found["busy-1"].hostname
    finally:
        release.set()
        Worker.stop_all([busy, idle])
    assert queue.list_workers() == []  # a stopped worker removes its record


# -- events ---------------------------------------------------------------------------------


def test_events_follow_a_job_through_retries(storage: Any) -> None:
    queue = JobQueue(storage, retry_policy=RetryPolicy(base_delay=0))
    seen: list[tuple[str, Any]] = []

    @queue.handler("flaky", max_retries=1)
    def flaky(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise ValueError("first try")
        return "ok"

    for name in ("job:claimed", "job:started", "job:completed", "job:failed", "job:retried"):
        queue.on(name, lambda e: seen.append((e.name, e.will_retry)))
    queue.enqueue("flaky")
    Worker(queue).run_until_empty()
    assert seen == [
        ("job:claimed", None),
        ("job:started", None),
        ("job:failed", True),
        ("job:retried", True),
        ("job:claimed", None),
        ("job:started", None),
        ("job:completed", None),
    ]


def test_event_details_and_worker_hooks() -> None:
    queue = JobQueue(MemoryStorage())
    events: list[Event] = []
    queue.register("boom", lambda ctx: 1 / 0, max_retries=0)
    queue.register("fine", lambda ctx: {"n": 1})
    worker = Worker(queue)

    @worker.on("job:failed")
    def failed(event: Event) -> None:
        events.append(event)

    worker.on("job:completed", events.append)
    queue.enqueue("boom")
    queue.enqueue("fine")
    worker.run_until_empty()
    failure, success = events
    assert failure.name == "job:failed" and failure.worker_id == worker.id
    assert failure.will_retry is False and failure.retry_in is None
    assert failure.error == "ZeroDivisionError: division by zero"
    assert failure.job is not None and failure.job.type == "boom"
    assert success.result == {"n": 1}
    assert success.duration is not None and success.duration >= 0


def test_worker_start_and_stop_events(queue: JobQueue) -> None:
    names: list[str] = []
    queue.on("worker:started", lambda e: names.append(e.name))
    queue.on("worker:stopped", lambda e: names.append(e.name))
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    worker.stop()
    assert names == ["worker:started", "worker:stopped"]


def test_a_hook_that_raises_is_logged_and_changes_nothing(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    queue.register("t", lambda ctx: "done")

    @queue.on("job:completed")
    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    job_id = queue.enqueue("t")
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(job_id).result == "done"
    assert "hook bug" in caplog.text


def test_unknown_events_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown event 'job:done'"):
        JobQueue(MemoryStorage()).on("job:done", print)


# -- periodic jobs -------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


START = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_each_tick_enqueues_one_job_whatever_the_number_of_workers() -> None:
    clock = Clock(START + timedelta(seconds=0.5))
    storage = MemoryStorage(clock=clock)
    every = Schedule(name="beat", type="beat", every=10)
    tickers = [Ticker(storage, [every]) for _ in range(4)]
    for second in range(0, 35):
        clock.now = START + timedelta(seconds=second + 0.5)
        for ticker in tickers:
            ticker.run()
    ticks = sorted(job.meta["tick"] for job in storage.list_jobs())
    assert ticks == [(START + timedelta(seconds=s)).isoformat() for s in (0, 10, 20, 30)]


def test_missed_ticks_run_once_not_in_a_burst() -> None:
    clock = Clock(START + timedelta(seconds=1))
    storage = MemoryStorage(clock=clock)
    schedule = Schedule(name="beat", type="beat", every=60)
    Ticker(storage, [schedule]).run()
    clock.now = START + timedelta(hours=5, seconds=1)  # down for five hours
    Ticker(storage, [schedule]).run()  # a fresh worker after the restart
    assert [job.meta["tick"] for job in storage.list_jobs()] == [
        START.isoformat(),
        (START + timedelta(hours=5)).isoformat(),
    ]


def test_a_new_schedule_does_not_fire_a_stale_tick() -> None:
    clock = Clock(START + timedelta(hours=10))
    storage = MemoryStorage(clock=clock)
    ticker = Ticker(storage, [Schedule(name="nightly", type="report", cron="0 3 * * *")])
    wait = ticker.run()
    assert storage.list_jobs() == []  # 03:00 was seven hours ago
    assert wait == 60.0  # nothing due within the next minute: check again then
    clock.now = START + timedelta(hours=15, seconds=5)  # 03:00 the next day, +5 s
    ticker.run()
    assert [job.meta["tick"] for job in storage.list_jobs()] == ["2030-01-02T03:00:00+00:00"]


def test_cron_ticks_follow_the_time_zone_across_dst() -> None:
    daily = Schedule(name="d", type="d", cron="30 2 * * *", tz="Europe/Berlin")
    # 2030-03-31 is the spring-forward day in Berlin: 02:30 does not exist.
    before = daily.latest_tick(datetime(2030, 3, 30, 12, 0, tzinfo=timezone.utc))
    assert before == datetime(2030, 3, 30, 1, 30, tzinfo=timezone.utc)  # 02:30 CET
    summer = daily.latest_tick(datetime(2030, 4, 2, 12, 0, tzinfo=timezone.utc))
    assert summer == datetime(2030, 4, 2, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST


def test_periodic_decorator_registers_the_handler_and_the_schedule() -> None:
    queue = JobQueue(MemoryStorage())

    @queue.periodic(every=timedelta(minutes=5), payload={"full": True})
    def refresh_cache(ctx: JobContext) -> None:
        return None

    @queue.periodic("0 3 * * *", name="nightly", tz="Europe/Berlin", queue="reports")
    def report(ctx: JobContext) -> None:
        return None

    assert set(queue.handlers) == {"refresh_cache", "nightly"}
    assert queue.schedules["refresh_cache"].every == 300
    assert queue.schedules["refresh_cache"].payload == {"full": True}
    assert queue.schedules["nightly"].queue == "reports"
    with pytest.raises(ConfigurationError, match="exists already"):
        queue.schedule("refresh_cache", every=60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "not cron"}, "bad cron expression"),
        ({}, "either cron or every"),
        ({"cron": "* * * * *", "every": 60}, "either cron or every"),
        ({"every": 0.5}, "at least 1 second"),
        ({"every": 60, "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 60, "payload": {"x": float("nan")}}, "not strict JSON"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JobQueue(MemoryStorage()).schedule("t", **kwargs)


def test_workers_enqueue_and_run_periodic_jobs(queue: JobQueue) -> None:
    runs: list[str] = []

    @queue.periodic(every=1)
    def heartbeat(ctx: JobContext) -> None:
        runs.append(ctx.meta["tick"])

    workers = [Worker(queue, poll_interval=0.5, max_poll_interval=5) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(runs) >= 3, timeout=15, what="three ticks to run")
    finally:
        Worker.stop_all(workers)
    assert len(runs) == len(set(runs))  # one job per tick, though three workers saw each


# -- stats and retention ----------------------------------------------------------------------


def test_stats_show_counts_backlog_throughput_and_unhandled_types(queue: JobQueue) -> None:
    queue.register("known", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="known") for _ in range(3)])
    queue.enqueue("unknown", run_at=datetime.now(timezone.utc) - timedelta(minutes=10))
    queue.enqueue("known", delay=3600)
    worker = Worker(queue, max_jobs=3)
    worker.run_until_empty()
    worker._upkeep.save_if_due()  # a live worker handling "known" only
    stats = queue.stats()
    (default,) = stats.queues
    assert default.counts["completed"] == 3
    assert default.counts["pending"] == 2
    assert default.finished[60] == 3
    assert default.oldest_pending_age is not None and 590 <= default.oldest_pending_age <= 700
    assert default.unhandled_types == ("unknown",)
    assert [w.id for w in stats.workers] == [worker.id]


def test_purge_deletes_in_batches() -> None:
    clock = Clock(START)
    storage = MemoryStorage(clock=clock)
    queue = JobQueue(storage)
    queue.register("t", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="t") for _ in range(5)])
    Worker(queue).run_until_empty()
    clock.now = START + timedelta(hours=1)
    batches: list[int] = []
    real = storage.purge

    def counting(**kwargs: Any) -> int:
        deleted = real(**kwargs)
        batches.append(deleted)
        return deleted

    storage.purge = counting  # type: ignore[method-assign]
    assert queue.purge(timedelta(minutes=30), batch_size=2) == 5
    assert batches == [2, 2, 1]
    assert queue.list_jobs() == []
