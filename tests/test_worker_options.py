"""Worker options from other job workers: types=, lifo=, and orphans rescued at start."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from dbjobq import ConfigurationError, JobContext, JobQueue, JobSpec, Worker
from dbjobq.job import Job, JobStatus
from dbjobq.registry import WorkerInfo
from dbjobq.storage import MemoryStorage, Storage

from .helpers import wait_until

# -- types= -------------------------------------------------------------------------------


def test_a_worker_with_types_takes_only_those_types(queue: JobQueue) -> None:
    ran: list[str] = []

    @queue.handler("resize_image")
    def resize(ctx: JobContext) -> None:
        ran.append("resize_image")

    @queue.handler("send_email")
    def send(ctx: JobContext) -> None:
        ran.append("send_email")

    email = queue.enqueue("send_email")
    images = [queue.enqueue("resize_image") for _ in range(3)]
    worker = Worker(queue, types=["resize_image"])
    assert worker.types == ("resize_image",)
    assert worker.run_until_empty() == 3
    assert ran == ["resize_image"] * 3
    assert all(queue.get_job(i).status == "completed" for i in images)
    assert queue.get_job(email).status == "pending"  # left, untouched, for another worker
    assert queue.get_job(email).attempts == 0
    assert Worker(queue).run_until_empty() == 1


def test_the_registry_shows_a_workers_types(queue: JobQueue) -> None:
    for name in ("a", "b", "c"):
        queue.register(name, lambda ctx: None)
    with Worker(queue, types=["c", "a"], poll_interval=0.01) as worker:
        assert worker.info().types == ("a", "c")
        found = wait_until(lambda: [w for w in queue.list_workers() if w.id == worker.id])
        assert found[0].types == ("a", "c")


def test_types_wake_only_the_worker_that_takes_them(queue: JobQueue) -> None:
    """An enqueue wakes the idle worker of its type, not a worker of other types."""
    queue.register("a", lambda ctx: "a")
    queue.register("b", lambda ctx: "b")
    with (
        Worker(queue, types=["a"], poll_interval=60, max_poll_interval=60) as for_a,
        Worker(queue, types=["b"], poll_interval=60, max_poll_interval=60) as for_b,
    ):
        wait_until(lambda: for_a._idle and for_b._idle, what="both workers idle")
        job_id = queue.enqueue("b")
        wait_until(lambda: queue.get_job(job_id).status == "completed", what="b done")
        assert queue.get_job(job_id).worker_id is None
        assert (for_a.jobs_processed, for_b.jobs_processed) == (0, 1)


def test_a_concurrent_worker_with_types_takes_only_those_types(queue: JobQueue) -> None:
    """Async and sync types alike: the others stay pending, never claimed."""
    ran: list[str] = []

    async def run_async(ctx: JobContext) -> None:
        ran.append(ctx.job.type)

    def run_sync(ctx: JobContext) -> None:
        ran.append(ctx.job.type)

    for name, handler in (("a", run_async), ("b", run_async), ("c", run_sync), ("d", run_sync)):
        queue.register(name, handler)
    mine = queue.enqueue_many(JobSpec(type=t) for t in ("a", "c", "a", "c", "a"))
    others = queue.enqueue_many(JobSpec(type=t) for t in ("b", "d", "b", "d"))
    assert Worker(queue, types=["a", "c"], concurrency=4).run_until_empty() == 5
    assert sorted(ran) == ["a", "a", "a", "c", "c"]
    assert all(queue.get_job(i).status == "completed" for i in mine)
    for job in (queue.get_job(i) for i in others):  # left, untouched, for another worker
        assert (job.status, job.attempts, job.worker_id) == ("pending", 0, None)


@pytest.mark.parametrize(
    ("types", "message"),
    [
        (["resize_image", "nope"], "['nope'] have no handler"),
        ([], "non-empty list"),
        ("resize_image", "non-empty list"),
        ([1], "non-empty list"),
    ],
)
def test_types_must_be_handled_by_the_queue(types: Any, message: str) -> None:
    queue = JobQueue(MemoryStorage())
    queue.register("resize_image", lambda ctx: None)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Worker(queue, types=types)


# -- lifo= --------------------------------------------------------------------------------


def test_fifo_by_default_and_lifo_when_asked_priority_first(queue: JobQueue) -> None:
    order: list[str] = []
    queue.register("t", lambda ctx: order.append(ctx.payload["name"]))
    for name, priority in (("old", 0), ("urgent-old", 9), ("mid", 0), ("urgent-new", 9)):
        queue.enqueue("t", {"name": name}, priority=priority)
    queue.enqueue_many([JobSpec(type="t", payload={"name": n}) for n in ("new1", "new2")])
    assert Worker(queue, lifo=True).run_until_empty() == 6
    assert order == ["urgent-new", "urgent-old", "new2", "new1", "mid", "old"]
    order.clear()
    for name in ("first", "second", "third"):
        queue.enqueue("t", {"name": name})
    assert Worker(queue).run_until_empty() == 3
    assert order == ["first", "second", "third"]


def test_a_lifo_worker_in_its_thread_takes_the_newest_first(queue: JobQueue) -> None:
    order: list[int] = []
    gate = threading.Event()

    @queue.handler("t")
    def t(ctx: JobContext) -> None:
        gate.wait(10)
        order.append(ctx.payload["n"])

    queue.enqueue("t", {"n": 0})
    with Worker(queue, lifo=True, prefetch=1, poll_interval=0.01) as worker:
        wait_until(lambda: worker.current_job is not None, what="the first job to start")
        for n in range(1, 5):
            queue.enqueue("t", {"n": n})
        gate.set()
        wait_until(lambda: len(order) == 5, what="five jobs")
    assert order == [0, 4, 3, 2, 1]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_concurrent_lifo_worker_starts_the_newest_first(queue: JobQueue, kind: str) -> None:
    """Priority first, then newest first, also when jobs run side by side."""
    if kind == "async":

        async def handler(ctx: JobContext) -> None:
            pass

        queue.register("t", handler)
    else:
        queue.register("t", lambda ctx: None)
    for name, priority in (("old", 0), ("urgent-old", 9), ("mid", 0), ("urgent-new", 9)):
        queue.enqueue("t", {"name": name}, priority=priority)
    queue.enqueue_many([JobSpec(type="t", payload={"name": n}) for n in ("new1", "new2")])
    worker = Worker(queue, lifo=True, concurrency=2)
    started: list[str] = []
    worker.on("job:started", lambda event: started.append(event.job.payload["name"]))
    assert worker.run_until_empty() == 6
    # Started in claim order: each claim takes the newest due jobs of the top priority.
    assert started == ["urgent-new", "urgent-old", "new2", "new1", "mid", "old"]


class _OldClaim(MemoryStorage):
    """A backend written before claim() took newest_first."""

    def claim(  # type: ignore[override]
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None = None,
        limit: int = 1,
    ) -> list[Job]:
        return super().claim(
            queues=queues,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            types=types,
            limit=limit,
        )


def test_lifo_on_a_storage_whose_claim_cannot_is_refused_at_construction() -> None:
    queue = JobQueue(_OldClaim())
    queue.register("t", lambda ctx: "ok")
    with pytest.raises(ConfigurationError, match=r"_OldClaim\.claim does not"):
        Worker(queue, lifo=True)
    queue.enqueue("t")
    assert Worker(queue).run_until_empty() == 1  # FIFO workers never pass it
    with pytest.raises(ConfigurationError, match="lifo must be True or False"):
        Worker(queue, lifo="yes")  # type: ignore[arg-type]


# -- orphans at start ---------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has just ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def _record(worker_id: str, pid: int, host: str | None = None, **fields: Any) -> WorkerInfo:
    values: dict[str, Any] = {
        "id": worker_id,
        "hostname": host or socket.gethostname(),
        "pid": pid,
        "queues": ("default",),
        "types": ("t",),
        "started_at": datetime.now(timezone.utc) - timedelta(minutes=5),
    }
    values.update(fields)
    return WorkerInfo(**values)


def _hold(storage: Storage, worker_id: str, job_id: str) -> Job:
    (job,) = storage.claim(queues=["default"], worker_id=worker_id, lease_seconds=3600)
    assert job.id == job_id
    return job


_SHORT = 0.2  # the orphan threshold these tests use, instead of 15 s


def _stale(monkeypatch: pytest.MonkeyPatch, storage: Storage, *ids: str) -> None:
    """Shorten the orphan threshold and wait until the records of `ids` are that old.

    Measured as the worker does (`list_workers` on the storage's clock): no guess.
    """
    from dbjobq._work import upkeep as upkeep_module

    monkeypatch.setattr(upkeep_module, "ORPHAN_AFTER", _SHORT)
    wait_until(
        lambda: not set(ids) & {w.id for w in storage.list_workers(seen_within=_SHORT)},
        what="the records to get stale",
    )


def test_jobs_of_a_dead_process_on_this_host_are_rescued_at_start(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = queue.storage
    queue.register("t", lambda ctx: f"attempt {ctx.attempt}")
    dead, other_host, alive = "dead:1:x", "elsewhere:2:y", "alive:3:z"
    ids = [queue.enqueue("t", max_retries=3) for _ in range(3)]
    for worker_id, job_id in zip((dead, other_host, alive), ids, strict=True):
        _hold(storage, worker_id, job_id)
    storage.save_worker(_record(dead, _dead_pid()))
    storage.save_worker(_record(other_host, _dead_pid(), host="another-host"))
    storage.save_worker(_record(alive, os.getppid()))  # alive: this test's parent process
    _stale(monkeypatch, storage, dead, other_host, alive)

    with Worker(queue, poll_interval=0.01, lease_seconds=3600) as worker:
        wait_until(lambda: queue.get_job(ids[0]).status == "completed", what="the rescue")
        job = queue.get_job(ids[0])
        assert (job.attempts, job.result) == (2, "attempt 2")
        assert job.last_error is not None and dead in job.last_error
        assert queue.get_job(ids[1]).status == "running"  # another host: cannot tell
        assert queue.get_job(ids[2]).status == "running"  # its process is alive
        registry = {w.id for w in queue.list_workers()}
        assert dead not in registry
        assert {other_host, alive, worker.id} <= registry


def test_no_orphan_rescue_when_turned_off_or_for_this_process(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = queue.storage
    queue.register("t", lambda ctx: "ok")
    a, b = queue.enqueue("t"), queue.enqueue("t")
    _hold(storage, "dead:1:x", a)
    storage.save_worker(_record("dead:1:x", _dead_pid()))
    # Another worker of this very process (it takes nothing: its queue is empty). Its
    # record carries this pid, whatever start time its clock gave it.
    sibling = Worker(queue, queues=["elsewhere"], worker_id="me:2:y", max_poll_interval=60)
    sibling.start()
    try:
        wait_until(lambda: "me:2:y" in {w.id for w in storage.list_workers(seen_within=60)})
        _hold(storage, "me:2:y", b)
        _stale(monkeypatch, storage, "dead:1:x", "me:2:y")
        with Worker(queue, poll_interval=0.01, rescue_orphans=False) as worker:
            wait_until(lambda: worker._idle, what="the worker to poll")
            assert queue.get_job(a).status == "running"
        with Worker(queue, poll_interval=0.01) as worker:
            wait_until(lambda: queue.get_job(a).status == "completed", what="the rescue")
            assert queue.get_job(b).status == "running"
    finally:
        sibling.stop()


def test_a_record_of_an_earlier_process_with_this_pid_is_an_orphan(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted container gets the same pid: a record with this pid whose id no
    worker of this process had is an earlier process's, whatever its start time."""
    queue.register("t", lambda ctx: "ok")
    job_id = queue.enqueue("t")
    _hold(queue.storage, "old:1:x", job_id)
    later = datetime.now(timezone.utc) + timedelta(hours=1)  # a clock that was ahead
    queue.storage.save_worker(_record("old:1:x", os.getpid(), started_at=later))
    _stale(monkeypatch, queue.storage, "old:1:x")
    with Worker(queue, poll_interval=0.01):
        wait_until(lambda: queue.get_job(job_id).status == "completed", what="the rescue")


def test_a_fresh_record_of_a_gone_pid_is_not_an_orphan_until_stale(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same hostname, pid not visible, just saved: maybe a live worker in another pid
    namespace (containers with host networking). Its jobs are left alone until its
    record is older than a live worker ever lets it get."""
    queue.register("t", lambda ctx: f"attempt {ctx.attempt}")
    job_id = queue.enqueue("t", max_retries=3)
    _hold(queue.storage, "neighbour:1:x", job_id)
    queue.storage.save_worker(_record("neighbour:1:x", _dead_pid()))
    with Worker(queue, poll_interval=0.01, lease_seconds=3600) as worker:
        wait_until(lambda: worker._idle, what="the worker to poll")
        assert queue.get_job(job_id).status == "running"
        assert "neighbour:1:x" in {w.id for w in queue.list_workers()}
    _stale(monkeypatch, queue.storage, "neighbour:1:x")
    with Worker(queue, poll_interval=0.01, lease_seconds=3600):
        wait_until(lambda: queue.get_job(job_id).status == "completed", what="the rescue")
        assert queue.get_job(job_id).result == "attempt 2"
        assert "neighbour:1:x" not in {w.id for w in queue.list_workers()}


def test_a_restart_with_the_same_worker_id_rescues_its_predecessor(queue: JobQueue) -> None:
    """`--worker-id web1` restarted: the dead record has our id and is seconds old."""
    queue.register("t", lambda ctx: f"attempt {ctx.attempt}")
    job_id = queue.enqueue("t", max_retries=3)
    _hold(queue.storage, "web1", job_id)
    queue.storage.save_worker(_record("web1", _dead_pid()))  # fresh: saved just now
    with Worker(queue, poll_interval=0.01, lease_seconds=3600, worker_id="web1") as worker:
        wait_until(lambda: worker._idle, what="the worker to poll")
        # Rescued before the first poll, before this worker saved its own record.
        assert queue.get_job(job_id).status != "running"
        wait_until(lambda: queue.get_job(job_id).status == "completed", what="the rescue")
        job = queue.get_job(job_id)
        assert (job.attempts, job.result) == (2, "attempt 2")
        assert job.last_error is not None and "web1" in job.last_error
        wait_until(lambda: queue.list_workers(), what="the worker's record")
        (record,) = queue.list_workers()
        assert (record.id, record.pid) == ("web1", os.getpid())


def test_a_storage_without_rescue_workers_waits_for_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Old(MemoryStorage):
        rescue_workers = Storage.rescue_workers

    queue = JobQueue(Old())
    queue.register("t", lambda ctx: "ok")
    job_id = queue.enqueue("t")
    _hold(queue.storage, "dead:1:x", job_id)
    queue.storage.save_worker(_record("dead:1:x", _dead_pid()))
    _stale(monkeypatch, queue.storage, "dead:1:x")
    with Worker(queue, poll_interval=0.01) as worker:
        wait_until(lambda: worker._idle, what="the worker to poll")
        assert queue.get_job(job_id).status == JobStatus.RUNNING


def test_the_pid_probe_takes_permission_denied_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbjobq._work import upkeep as upkeep_module

    assert upkeep_module.process_gone(_record("dead", _dead_pid()))
    assert not upkeep_module.process_gone(_record("parent", os.getppid()))
    assert not upkeep_module.process_gone(_record("nonsense", 0))

    def denied(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", denied)
    assert not upkeep_module.process_gone(_record("another user's", 4242))
