# mypy: disallow-untyped-calls=False
# (the snippets are untyped, as users paste them)
"""dbjobq 0.1's Worker documentation, its snippets run as users paste them.

Each test holds one snippet of that page. They are changed only in what
docs/coming-from-0.1.md lists: `while True` loops run a bounded number of rounds and
without their pauses, a snippet that waits for a signal forever runs in a child
process that the test signals, names the snippet leaves undefined (`queue`, a
handler, `alert`) are defined first, and the documented differences are shown both
ways (as written, then with the page's one-line fix).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, JobSpec, Worker
from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Snippets open `sqlite:///jobs.db`: give them a folder of their own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sqlite_queue(in_tmp: Path) -> Iterator[JobQueue]:
    # The set-up the page starts from, as written.
    storage = SQLAlchemyStorage("sqlite:///jobs.db")
    queue = JobQueue(storage)
    yield queue
    queue.close()


def _gate(queue: JobQueue) -> tuple[threading.Event, threading.Event]:
    """A handler `hold` that signals when it starts and returns when released."""
    started, release = threading.Event(), threading.Event()

    @queue.handler("hold")
    def hold(ctx: JobContext) -> str:
        started.set()
        release.wait(30)
        return "done"

    return started, release


# -- Constructor --------------------------------------------------------------------------


def test_constructor_example(sqlite_queue: JobQueue) -> None:
    queue = sqlite_queue
    # Fast polling for high-throughput
    worker = Worker(queue, poll_interval=0.5, max_poll_interval=5.0)
    assert (worker.poll_interval, worker.max_poll_interval) == (0.5, 5.0)

    # Slower polling for low-traffic queues
    worker = Worker(queue, poll_interval=2.0, max_poll_interval=60.0)
    assert (worker.poll_interval, worker.max_poll_interval) == (2.0, 60.0)


def test_constructor_signature_positional_and_by_the_old_name(sqlite_queue: JobQueue) -> None:
    """`__init__(self, job_queue, poll_interval=1.0, max_poll_interval=10.0)`."""
    q = sqlite_queue
    by_name = Worker(job_queue=q)
    assert by_name.queue is q
    assert (by_name.poll_interval, by_name.max_poll_interval) == (1.0, 10.0)
    positional = Worker(q, 0.5, 5.0)
    assert (positional.poll_interval, positional.max_poll_interval) == (0.5, 5.0)
    everything = Worker(job_queue=q, poll_interval=0.5, max_poll_interval=5.0)
    assert (everything.queue, everything.poll_interval) == (q, 0.5)


# -- start / stop / run ---------------------------------------------------------------


def test_start_example(sqlite_queue: JobQueue, capsys: pytest.CaptureFixture[str]) -> None:
    queue = sqlite_queue
    queue.register("ping", lambda ctx: "pong")
    job_id = queue.enqueue("ping")

    worker = Worker(queue)
    worker.start()
    print("Worker is now processing jobs in the background")

    assert capsys.readouterr().out == "Worker is now processing jobs in the background\n"
    wait_until(lambda: queue.get_job(job_id).status == "completed", what="the job")
    assert worker._worker_thread.daemon  # "Starts a new daemon thread"
    with pytest.raises(RuntimeError):  # "Can be called only once per worker instance"
        worker.start()
    worker.stop()


def test_stop_example_blocks_until_the_current_job_completes(
    sqlite_queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = sqlite_queue
    started, release = _gate(queue)
    job_id = queue.enqueue("hold")
    worker = Worker(queue)

    worker.start()
    # ... application runs ...
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    worker.stop()  # Blocks until current job completes
    print("Worker stopped")

    assert queue.get_job(job_id).status == "completed"
    assert not worker._worker_thread.is_alive()
    assert capsys.readouterr().out == "Worker stopped\n"
    worker.stop()  # "Safe to call multiple times"


def test_run_is_the_loop_start_runs_here_in_the_calling_thread(sqlite_queue: JobQueue) -> None:
    queue = sqlite_queue
    ran_in: list[threading.Thread] = []
    queue.register("where", lambda ctx: ran_in.append(threading.current_thread()))
    ids = [queue.enqueue("where") for _ in range(3)]
    worker = Worker(queue, poll_interval=0.01)

    def stop_when_done() -> None:
        wait_until(lambda: all(queue.get_job(i).status == "completed" for i in ids))
        worker.stop()

    stopper = threading.Thread(target=stop_when_done)
    stopper.start()
    worker.run()  # returns once stopped from the other thread
    stopper.join()
    assert worker._worker_thread is threading.current_thread()
    assert not worker.is_alive
    assert len(ran_in) == 3
    with pytest.raises(RuntimeError):
        worker.start()


# -- current_job ---------------------------------------------------------------------


def _monitor_round(worker: Worker) -> None:
    """The body of the page's `current_job` loop, as written."""
    job = worker.current_job
    if job:
        print(f"Processing: {job.type} (attempt {job.attempts + 1})")
    else:
        print("Worker is idle")


def test_current_job_example_and_its_attempt_number(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    """As written it says attempt 2 on the first attempt: a documented difference."""
    started, release = _gate(queue)
    worker = Worker(queue, poll_interval=0.01)
    worker.start()

    _monitor_round(worker)  # `while True:` ... `time.sleep(5)`: one round while idle
    queue.enqueue("hold")
    assert started.wait(10)
    _monitor_round(worker)  # and one while busy
    job = worker.current_job
    assert job is not None
    print(f"Processing: {job.type} (attempt {job.attempts})")  # the page's fix
    release.set()
    worker.stop()
    assert capsys.readouterr().out.splitlines() == [
        "Worker is idle",
        "Processing: hold (attempt 2)",  # as written: attempts already counts this one
        "Processing: hold (attempt 1)",  # with the fix
    ]


# -- Adaptive polling ----------------------------------------------------------------------


def test_adaptive_polling_doubles_up_to_the_cap_and_resets_on_a_job(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """The page's timeline, with intervals a hundred times shorter.

    One documented difference: after a job the next poll comes at once, and the
    first empty poll waits `poll_interval` (not twice it).
    """
    queue.register("t", lambda ctx: None)
    waits: list[float] = []

    worker = Worker(queue, poll_interval=0.01, max_poll_interval=0.6)

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args
            if "next poll in" in record.msg and isinstance(args, tuple) and args[0] == worker.id:
                waits.append(float(args[1]))  # type: ignore[arg-type]

    handler = Waits(logging.DEBUG)
    log = logging.getLogger("dbjobq.worker")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        worker.start()
        wait_until(lambda: len(waits) >= 8, what="eight empty polls")
        queue.enqueue("t")
        count = len(waits)
        wait_until(lambda: len(waits) > count + 1, what="polls after the job")
        worker.stop()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert waits[:8] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.6, 0.6]
    assert 0.01 in waits[8:]  # the job reset it


# -- Usage patterns ----------------------------------------------------------------------


def test_single_worker_example(in_tmp: Path) -> None:
    from dbjobq import JobQueue, Worker
    from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

    storage = SQLAlchemyStorage("sqlite:///jobs.db")
    queue = JobQueue(storage)
    queue.register("greet", lambda ctx: f"hello {ctx.payload['name']}")  # a handler to run
    job_id = queue.enqueue("greet", {"name": "ada"})

    worker = Worker(queue, poll_interval=1.0)
    worker.start()

    # Application continues...
    # Worker processes jobs in background
    wait_until(lambda: queue.get_job(job_id).status == "completed", what="the job")

    # Cleanup on exit
    worker.stop()
    assert queue.get_job(job_id).result == "hello ada"
    assert (in_tmp / "jobs.db").exists()
    queue.close()


def test_multiple_workers_example(queue: JobQueue, capsys: pytest.CaptureFixture[str]) -> None:
    runs: list[str] = []
    queue.register("count", lambda ctx: runs.append(ctx.job.id))
    ids = queue.enqueue_many(JobSpec(type="count") for _ in range(200))

    # Start multiple workers in same process
    workers = []
    for i in range(4):
        worker = Worker(queue, poll_interval=1.0)
        worker.start()
        workers.append(worker)
        print(f"Started worker {i + 1}")

    wait_until(lambda: queue.counts()["default"]["completed"] == 200, what="200 jobs")
    # Cleanup
    for worker in workers:
        worker.stop()

    assert capsys.readouterr().out.split("\n")[:4] == [f"Started worker {i}" for i in (1, 2, 3, 4)]
    assert sorted(runs) == sorted(ids)  # "No job duplication"


def test_context_manager_pattern_example(queue: JobQueue) -> None:
    queue.register("t", lambda ctx: "ok")
    job_id = queue.enqueue("t")

    class WorkerContext:
        def __init__(self, queue, **kwargs):
            self.worker = Worker(queue, **kwargs)

        def __enter__(self):
            self.worker.start()
            return self.worker

        def __exit__(self, exc_type, exc_val, exc_tb):
            self.worker.stop()

    # Usage
    with WorkerContext(queue) as worker:
        # Worker is running
        # Do other work...
        wait_until(lambda: queue.get_job(job_id).status == "completed", what="the job")
        assert worker.is_alive
    # Worker is automatically stopped
    assert not worker.is_alive


# -- Monitoring Worker Status --------------------------------------------------------------


def test_monitoring_example_counts_every_pending_job(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    """`len(queue.get_pending_jobs())` is the whole backlog, not its first 100."""
    queue.enqueue_many(JobSpec(type="nobody_handles_this") for _ in range(150))
    worker = Worker(queue)
    worker.start()

    def monitor_worker(rounds):
        """Monitor worker activity."""
        for _ in range(rounds):  # was: while True
            job = worker.current_job
            if job:
                elapsed = datetime.now(timezone.utc) - job.updated_at  # the page's fix
                print(f"[{datetime.now()}] Processing: {job.type}")
                print(f"  Job ID: {job.id}")
                print(f"  Attempt: {job.attempts}/{job.max_retries}")  # the page's fix
                print(f"  Elapsed: {elapsed.total_seconds():.1f}s")
            else:
                pending = len(queue.get_pending_jobs())
                print(f"[{datetime.now()}] Idle (queue: {pending})")
            # was: time.sleep(5)

    # Run in separate thread
    import threading

    monitor_thread = threading.Thread(target=monitor_worker, args=(1,), daemon=True)
    monitor_thread.start()
    monitor_thread.join(30)
    worker.stop()
    assert capsys.readouterr().out.endswith("] Idle (queue: 150)\n")
    assert len(queue.get_pending_jobs()) == 150
    assert len(queue.list_jobs()) == 100  # the browsing call keeps its limit (documented)
    assert len(queue.list_jobs(limit=None)) == 150


def test_monitoring_example_while_a_job_runs(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    """As written, the elapsed time raises: timestamps are aware (documented)."""
    started, release = _gate(queue)
    queue.enqueue("hold", max_retries=3)
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert started.wait(10)
    job = worker.current_job
    assert job is not None
    with pytest.raises(TypeError, match="offset-naive and offset-aware"):
        elapsed = datetime.now() - job.updated_at  # as written
    elapsed = datetime.now(timezone.utc) - job.updated_at  # the page's fix
    print(f"  Attempt: {job.attempts}/{job.max_retries}")
    print(f"  Elapsed: {elapsed.total_seconds():.1f}s")
    release.set()
    worker.stop()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  Attempt: 1/3"
    assert 0 <= float(out[1].split()[1].rstrip("s")) < 60


# -- Graceful Application Shutdown ----------------------------------------------------------

SHUTDOWN_SNIPPET = """
import signal
import sys

worker = Worker(queue)
worker.start()

def signal_handler(sig, frame):
    \"\"\"Handle shutdown signals.\"\"\"
    print("\\nShutting down gracefully...")
    worker.stop()
    print("Worker stopped")
    sys.exit(0)

# Register signal handlers
signal.signal(signal.SIGINT, signal_handler)   # Ctrl+C
signal.signal(signal.SIGTERM, signal_handler)  # kill

print("Worker running. Press Ctrl+C to stop.")

# Keep main thread alive
signal.pause()
"""

SETUP = """
import signal, sys, threading, time
from dbjobq import JobQueue, Worker
from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

sys.stdout.reconfigure(line_buffering=True)

# Linux hands a process's signal to any thread that does not block it; signal.pause()
# returns only if it is the main thread. Threads start with SIGINT/SIGTERM blocked,
# so the test's signal reaches the main thread (see the Coming-from-0.1 page).
_start = threading.Thread.start
def _start_blocked(self):
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        _start(self)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
threading.Thread.start = _start_blocked
queue = JobQueue(SQLAlchemyStorage("sqlite:///jobs.db"))

@queue.handler("slow")
def slow(ctx):
    time.sleep(0.5)  # still running when the signal comes
    return "finished"

print("job", queue.enqueue("slow"))
"""


def _child(code: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_graceful_shutdown_example(in_tmp: Path, signum: int) -> None:
    proc = _child(SETUP + textwrap.dedent(SHUTDOWN_SNIPPET), in_tmp)
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().split()[1]
        assert proc.stdout.readline() == "Worker running. Press Ctrl+C to stop.\n"
        queue = JobQueue(SQLAlchemyStorage("sqlite:///jobs.db"))
        wait_until(lambda: queue.get_job(job_id).status == "running", what="the job to start")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "\nShutting down gracefully...\nWorker stopped\n"
    assert queue.get_job(job_id).status == "completed"  # it waited for the job
    queue.close()


RUN_SNIPPET = """
worker = Worker(queue)
print("running")
worker.run()
print("run() returned", worker.jobs_processed)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_in_the_main_thread_stops_gracefully_on_a_signal(in_tmp: Path, signum: int) -> None:
    proc = _child(SETUP + RUN_SNIPPET, in_tmp)
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().split()[1]
        assert proc.stdout.readline() == "running\n"
        queue = JobQueue(SQLAlchemyStorage("sqlite:///jobs.db"))
        wait_until(lambda: queue.get_job(job_id).status == "running", what="the job to start")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "run() returned 1\n"
    assert queue.get_job(job_id).status == "completed"
    queue.close()


# -- Worker with Health Checks -------------------------------------------------------------


class HealthMonitor:
    """The page's class, as written."""

    def __init__(self, worker, queue):
        self.worker = worker
        self.queue = queue
        self.last_job_time = datetime.now()

    def check_health(self):
        """Check if worker is healthy."""
        # Check if worker thread is alive
        if not hasattr(self.worker, "_worker_thread"):
            return False, "Worker not started"

        if not self.worker._worker_thread.is_alive():
            return False, "Worker thread died"

        # Check if jobs are being processed
        current_job = self.worker.current_job
        if current_job:
            self.last_job_time = datetime.now()

        # Alert if idle too long with pending jobs
        idle_time = datetime.now() - self.last_job_time
        pending = len(self.queue.get_pending_jobs())

        if pending > 0 and idle_time > timedelta(minutes=5):
            return False, f"Worker idle for {idle_time} with {pending} pending jobs"

        return True, "Healthy"


def test_health_check_example(queue: JobQueue) -> None:
    alerts: list[str] = []
    alert = alerts.append
    worker = Worker(queue)

    def usage() -> tuple[bool, str]:
        # Usage
        monitor = HealthMonitor(worker, queue)
        healthy, status = monitor.check_health()
        if not healthy:
            alert(f"Worker unhealthy: {status}")
        return healthy, status

    assert usage() == (False, "Worker not started")
    worker.start()
    assert usage() == (True, "Healthy")
    queue.enqueue_many(JobSpec(type="no_handler_here") for _ in range(120))
    monitor = HealthMonitor(worker, queue)
    monitor.last_job_time -= timedelta(minutes=6)
    healthy, status = monitor.check_health()
    assert not healthy
    assert status.startswith("Worker idle for 0:06:") and status.endswith("with 120 pending jobs")
    worker.stop()
    assert usage() == (False, "Worker thread died")
    assert alerts == [
        "Worker unhealthy: Worker not started",
        "Worker unhealthy: Worker thread died",
    ]


# -- Worker Count ----------------------------------------------------------------------------


def test_worker_count_example(queue: JobQueue) -> None:
    queue.register("t", lambda ctx: None)
    queue.enqueue_many(JobSpec(type="t") for _ in range(50))

    # CPU-bound jobs
    num_workers = os.cpu_count()

    # I/O-bound jobs
    num_workers = os.cpu_count() * 2  # type: ignore[operator]

    # Start workers
    workers = [Worker(queue) for _ in range(num_workers)]
    for worker in workers:
        worker.start()

    wait_until(lambda: queue.counts()["default"]["completed"] == 50, what="50 jobs")
    assert Worker.stop_all(workers)


# -- Error Handling --------------------------------------------------------------------------


def test_a_failing_job_is_retried_and_the_worker_goes_on(queue: JobQueue) -> None:
    """ "The worker never crashes due to job errors."; max_retries counts retries."""

    @queue.handler("flaky")
    def flaky(ctx: JobContext) -> str:
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt} failed")
        return "third time lucky"

    @queue.handler("broken")
    def broken(ctx: JobContext) -> None:
        raise RuntimeError("always")

    flaky_id = queue.enqueue("flaky", max_retries=3)
    broken_id = queue.enqueue("broken", max_retries=2)
    with Worker(queue, poll_interval=0.01) as worker:
        wait_until(lambda: queue.get_job(flaky_id).status == "completed", what="flaky")
        wait_until(lambda: queue.get_job(broken_id).status == "failed", what="broken")
        assert worker.is_alive
    assert queue.get_job(flaky_id).attempts == 3
    assert queue.get_job(broken_id).attempts == 3  # the first attempt and 2 retries


def test_restart_on_crash_example(queue: JobQueue, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker whose thread ended is restarted, and only then (no "Worker error")."""
    started: list[Worker] = []

    def start_worker_with_restart(rounds):
        """Start worker with automatic restart on crash."""
        for _ in range(rounds):  # was: while True
            try:
                worker = Worker(queue)
                worker.start()
                started.append(worker)

                # Monitor worker thread
                while worker._worker_thread.is_alive():
                    time.sleep(1)

                print("Worker thread died, restarting...")
            except Exception as e:
                print(f"Worker error: {e}, restarting in 5s...")
                time.sleep(5)

    supervisor = threading.Thread(target=start_worker_with_restart, args=(2,), daemon=True)
    supervisor.start()
    wait_until(lambda: started, what="the first worker")
    started[0].stop()  # its thread ends: the supervisor starts another
    wait_until(lambda: len(started) == 2, what="the restart")
    started[1].stop()
    supervisor.join(10)
    assert capsys.readouterr().out == "Worker thread died, restarting...\n" * 2
