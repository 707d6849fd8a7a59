"""A job that leaves `max_retries`/`timeout` to its handler gets them when it runs,
whichever queue object enqueued it; and a job without a handler never spins."""

from __future__ import annotations

import sys
import threading
from collections.abc import Collection, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, RetryPolicy, Worker
from dbjobq.cli import main
from dbjobq.job import Job
from dbjobq.storage import MemoryStorage, Storage

from .conftest import FAST_RETRIES

AT_ONCE = RetryPolicy(base_delay=0, max_delay=0)  # so that run_until_empty runs retries too

APP = """
import os

from dbjobq import JobContext, JobQueue

queue = JobQueue(os.environ["HANDLER_DEFAULTS_URL"])


@queue.handler("export", max_retries=5, timeout=60)
def export(ctx: JobContext) -> None:
    return None
"""


def _app_queue(storage: Storage, runs: list[int], gate: threading.Event | None = None) -> JobQueue:
    """The queue of the process that runs `flaky` jobs: 1 retry, 0.2 s timeout."""
    queue = JobQueue(storage, retry_policy=AT_ONCE, max_retries=7)

    @queue.handler("flaky", max_retries=1, timeout=0.2)
    def flaky(ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        if gate is not None:
            gate.wait(30)  # outlives the handler's timeout
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    return queue


@pytest.mark.parametrize("enqueued_by", ["a queue without handlers", "the handler's queue"])
def test_the_handler_max_retries_applies_wherever_the_job_was_enqueued(
    storage: Storage, enqueued_by: str
) -> None:
    runs: list[int] = []
    app = _app_queue(storage, runs)
    # Like `dbjobq enqueue --url`: a bare queue whose own default (3) must not stick.
    enqueuer = JobQueue(storage) if enqueued_by.startswith("a queue") else app
    job_id = enqueuer.enqueue("flaky")
    assert enqueuer.get_job(job_id).max_retries is None
    Worker(app).run_until_empty()
    job = app.get_job(job_id)
    assert (job.status, job.attempts, runs) == ("failed", 2, [1, 2])


def test_a_job_of_its_own_max_retries_keeps_them(storage: Storage) -> None:
    runs: list[int] = []
    app = _app_queue(storage, runs)
    job_id = JobQueue(storage).enqueue("flaky", max_retries=0)
    Worker(app).run_until_empty()
    assert (app.get_job(job_id).attempts, runs) == (1, [1])


@pytest.mark.parametrize("enqueued_by", ["a queue without handlers", "the handler's queue"])
def test_the_handler_timeout_applies_wherever_the_job_was_enqueued(
    storage: Storage, enqueued_by: str
) -> None:
    runs: list[int] = []
    gate = threading.Event()
    app = _app_queue(storage, runs, gate)
    enqueuer = JobQueue(storage) if enqueued_by.startswith("a queue") else app
    job_id = enqueuer.enqueue("flaky", max_retries=0)
    try:
        Worker(app).run_until_empty()
    finally:
        gate.set()
    job = app.get_job(job_id)
    assert job.status == "failed" and job.last_error is not None
    assert job.last_error.startswith("JobTimeoutError: job exceeded its timeout of 0.2s")


def test_a_rescued_job_past_its_handler_retries_fails_without_running(storage: Storage) -> None:
    runs: list[int] = []
    app = _app_queue(storage, runs)
    job_id = JobQueue(storage).enqueue("flaky")
    for _ in range(2):  # two workers die holding it: their attempts count
        (_claimed,) = storage.claim(
            queues=["default"], worker_id="dead", lease_seconds=0, types=["flaky"]
        )
        assert storage.rescue_expired() == 1
    assert (app.get_job(job_id).status, app.get_job(job_id).attempts) == ("pending", 2)
    assert Worker(app).run_until_empty() == 1
    job = app.get_job(job_id)
    assert runs == []  # a third attempt is one more than max_retries=1 allows
    assert (job.status, job.attempts) == ("failed", 3)
    assert job.last_error is not None and "lease expired: worker dead" in job.last_error


def test_a_rescued_job_with_retries_left_runs_again(storage: Storage) -> None:
    runs: list[int] = []
    app = _app_queue(storage, runs)
    app.register("fine", lambda ctx: ctx.attempt)
    job_id = JobQueue(storage).enqueue("fine")
    storage.claim(queues=["default"], worker_id="dead", lease_seconds=0, types=["fine"])
    assert storage.rescue_expired() == 1
    Worker(app).run_until_empty()
    assert app.get_job(job_id).result == 2


class _LooseStorage(MemoryStorage):
    """Claims other types than asked for, as a database comparing names loosely would."""

    def claim(
        self,
        *,
        queues: Sequence[str],
        worker_id: str,
        lease_seconds: float,
        types: Collection[str] | None = None,
        limit: int = 1,
        newest_first: bool = False,
    ) -> list[Job]:
        return super().claim(
            queues=queues,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            limit=limit,
            newest_first=newest_first,
        )


def test_a_job_without_a_handler_is_retried_with_back_off_never_at_once() -> None:
    queue = JobQueue(_LooseStorage())
    queue.register("mail", lambda ctx: "sent")
    job_id = queue.enqueue("MAIL")
    assert Worker(queue).run_until_empty() == 1  # one attempt, then it is not due
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("pending", 1)
    assert job.last_error is not None and "no handler for job type 'MAIL'" in job.last_error
    # The retry policy's first delay: about 1 s (jitter takes off up to a quarter).
    assert job.run_at - job.updated_at >= timedelta(seconds=0.74)


def test_a_job_without_a_handler_fails_once_its_retries_are_spent() -> None:
    queue = JobQueue(_LooseStorage(), retry_policy=FAST_RETRIES, max_retries=2)
    queue.register("mail", lambda ctx: "sent")
    job_id = queue.enqueue("MAIL")
    worker = Worker(queue)
    while not queue.get_job(job_id).status.is_finished:
        worker.run_until_empty()
    job = queue.get_job(job_id)
    assert (job.status, job.attempts) == ("failed", 3)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "handler_defaults_app.py").write_text(APP)
    monkeypatch.setenv("HANDLER_DEFAULTS_URL", url)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield url
    sys.modules.pop("handler_defaults_app", None)


def test_cli_job_shows_the_values_the_job_runs_with(
    app_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = app_module
    bare = JobQueue(url)
    job_id = bare.enqueue("export")
    own = bare.enqueue("export", max_retries=1, timeout=5)
    bare.close()

    def shown(*args: str) -> dict[str, str]:
        assert main(["job", *args]) == 0
        lines = capsys.readouterr().out.splitlines()
        return {k: v.strip() for k, _, v in (line.partition("  ") for line in lines) if v}

    with_app = shown(job_id, "--app", "handler_defaults_app:queue")
    assert (with_app["attempts"], with_app["timeout"]) == ("0 of 6", "60s")
    without = shown(job_id, "--url", url)
    assert (without["attempts"], without["timeout"]) == (
        "0 of (handler default)",
        "handler default",
    )
    for args in (["--url", url], ["--app", "handler_defaults_app:queue"]):
        fields = shown(own, *args)
        assert (fields["attempts"], fields["timeout"]) == ("0 of 2", "5s")


@pytest.mark.parametrize(
    ("enqueue", "expected"),
    [({}, (2, 60.0, "1/3")), ({"max_retries": 4, "timeout": 5}, (4, 5.0, "1/5"))],
    ids=["left to the handler", "its own"],
)
def test_the_running_job_shows_the_values_it_runs_with(
    storage: Storage, enqueue: dict[str, float], expected: tuple[int, float, str]
) -> None:
    """ctx.job and Worker.current_job carry the values the job runs with, so that
    `job.max_retries + 1` (the Coming-from-0.1 page's fix) works on a job enqueued
    without them; the stored job still leaves them open."""
    queue = JobQueue(storage, max_retries=7)
    seen: list[tuple[int | None, float | None]] = []
    release, running = threading.Event(), threading.Event()

    @queue.handler("export", max_retries=2, timeout=60)
    def export(ctx: JobContext) -> str:
        seen.append((ctx.job.max_retries, ctx.job.timeout))
        running.set()
        release.wait(30)
        assert ctx.job.max_retries is not None  # what the type says Job allows
        return f"{ctx.job.attempts}/{ctx.job.max_retries + 1}"

    job_id = JobQueue(storage).enqueue("export", **enqueue)  # type: ignore[arg-type]
    worker = Worker(queue, poll_interval=0.05)
    worker.start()
    try:
        assert running.wait(30)
        current = worker.current_job
        assert current is not None
        assert (current.max_retries, current.timeout) == expected[:2]
    finally:
        release.set()
        worker.stop()
    assert seen == [expected[:2]]
    job = queue.get_job(job_id)
    assert job.result == expected[2]
    assert job.max_retries == enqueue.get("max_retries")


def test_without_a_handler_value_the_queue_max_retries_applies(storage: Storage) -> None:
    queue = JobQueue(storage, max_retries=7)
    seen: list[tuple[int | None, float | None]] = []
    queue.register("plain", lambda ctx: seen.append((ctx.job.max_retries, ctx.job.timeout)))
    queue.enqueue("plain")
    Worker(queue).run_until_empty()
    assert seen == [(7, None)]


def test_a_context_built_by_hand_shows_the_handlers_defaults() -> None:
    """Users build a JobContext to unit-test a handler; it fills in the handler's values."""
    queue = JobQueue(MemoryStorage())

    @queue.handler("report", max_retries=7, timeout=12.5)
    def report(ctx: JobContext) -> None:
        pass

    job_id = queue.enqueue("report")
    [claimed] = queue.storage.claim(queues=["default"], worker_id="test", lease_seconds=30)
    assert claimed.id == job_id and claimed.max_retries is None and claimed.timeout is None
    ctx = JobContext(claimed, queue, report_progress=lambda value, message: True)
    assert (ctx.job.max_retries, ctx.job.timeout) == (7, 12.5)
