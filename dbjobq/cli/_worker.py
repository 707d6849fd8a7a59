"""`dbjobq worker`: run workers in this process until SIGTERM, Ctrl-C or `--max-jobs`.

The options are checked before anything starts; the process then serves until asked
to stop, waits up to `--stop-timeout` for running jobs, and exits with status 1 if a
job was left running (its lease expires and another worker rescues it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import dataclass

from dbjobq.cli._app import open_queue
from dbjobq.cli._options import EXIT_FAILURE, UsageError, env, number, option
from dbjobq.errors import DBJobQError
from dbjobq.events import Event
from dbjobq.job import JobStatus
from dbjobq.jsonlog import JSONFormatter
from dbjobq.queue import JobQueue
from dbjobq.worker import Worker

# The name operators filter on in their logs; it stays that of the command.
log = logging.getLogger("dbjobq.cli")

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class _Settings:
    """The worker command's options, checked."""

    level: str
    log_format: str
    concurrency: int
    poll: float
    max_poll: float
    lease: float
    stop_timeout: float
    max_jobs: int | None
    queues: list[str] | None
    types: list[str] | None
    lifo: bool
    worker_id: str | None


def _settings(args: argparse.Namespace) -> _Settings:
    if args.app and args.app_option and args.app != args.app_option:
        raise UsageError(f"two apps given: {args.app!r} and --app {args.app_option!r}")
    args.app = args.app or args.app_option or env("app")
    if args.app is None:
        raise UsageError("give the app as module:queue, --app module:queue or DBJOBQ_APP")
    level, level_source = option(args, "log-level")
    level = (level or "INFO").upper()
    if level not in _LEVELS:
        raise UsageError(f"{level_source} must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    log_format, format_source = option(args, "log-format")
    log_format = (log_format or "text").lower()
    if log_format not in ("text", "json"):
        raise UsageError(f"{format_source} must be text or json, got {log_format!r}")
    concurrency = number(args, "concurrency", 1, kind=int, low=1, high=1000, strictly_above=False)
    poll = number(args, "poll-interval", 1.0, high=86400)
    max_poll = number(args, "max-poll-interval", max(10.0, poll), high=86400)
    if max_poll < poll:
        raise UsageError("--max-poll-interval must not be less than --poll-interval")
    lease = number(args, "lease-seconds", 30.0, high=86400)
    stop_timeout = number(args, "stop-timeout", 30.0, high=86400, strictly_above=False)
    max_jobs = number(args, "max-jobs", None, kind=int, low=1, strictly_above=False)
    queues_raw, _ = option(args, "queues")
    types_raw, _ = option(args, "types")
    lifo_raw, lifo_source = option(args, "lifo")
    lifo = (lifo_raw or "false").lower()
    if lifo not in ("1", "true", "yes", "0", "false", "no"):
        raise UsageError(f"{lifo_source} must be true or false, got {lifo_raw!r}")
    worker_id, _ = option(args, "worker-id")
    return _Settings(
        level=level,
        log_format=log_format,
        concurrency=concurrency,
        poll=poll,
        max_poll=max_poll,
        lease=lease,
        stop_timeout=stop_timeout,
        max_jobs=max_jobs,
        queues=_names(queues_raw),
        types=_names(types_raw),
        lifo=lifo in ("1", "true", "yes"),
        worker_id=worker_id,
    )


def _names(raw: str | None) -> list[str] | None:
    """A comma-separated list, blanks dropped; None when not given."""
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None


def configure_logging(level: str, fmt: str) -> None:
    """Send every log record to stderr, as text lines or (`fmt="json"`) JSON lines."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_worker(args: argparse.Namespace) -> int:
    """`dbjobq worker APP`: run `--concurrency` workers until asked to stop."""
    settings = _settings(args)
    configure_logging(settings.level, settings.log_format)
    queue = open_queue(args, existing=False)  # workers create the tables
    try:
        workers = [
            Worker(
                queue,
                queues=settings.queues,
                types=settings.types,
                lifo=settings.lifo,
                poll_interval=settings.poll,
                max_poll_interval=settings.max_poll,
                lease_seconds=settings.lease,
                worker_id=_worker_id(settings, n),
            )
            for n in range(settings.concurrency)
        ]
    except DBJobQError as error:
        raise UsageError(str(error)) from error
    return serve(queue, workers, settings.stop_timeout, settings.max_jobs)


def _worker_id(settings: _Settings, n: int) -> str | None:
    """The id of the n-th worker: the one given, numbered when there are several."""
    if settings.worker_id is None or settings.concurrency == 1:
        return settings.worker_id
    return f"{settings.worker_id}-{n + 1}"


class _Stopper:
    """Sets `stop` on SIGTERM/SIGINT or after `max_jobs` outcomes; a second signal exits."""

    def __init__(self, max_jobs: int | None) -> None:
        self.stop = threading.Event()
        self.max_jobs = max_jobs
        self.signals = 0
        self.jobs = 0
        self._lock = threading.Lock()

    def on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            # A second signal: leave now. Running jobs keep their leases, which expire,
            # and other workers rescue them; nothing is lost.
            os.write(2, b"dbjobq: second signal, exiting at once\n")
            os._exit(EXIT_FAILURE)
        self.stop.set()

    def count(self, event: Event) -> None:
        with self._lock:
            self.jobs += 1
            if self.max_jobs is not None and self.jobs >= self.max_jobs:
                self.stop.set()


def serve(queue: JobQueue, workers: list[Worker], stop_timeout: float, max_jobs: int | None) -> int:
    """Start the workers, wait for a stop, stop them; the command's exit status."""
    stopper = _Stopper(max_jobs)
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, stopper.on_signal) for s in signals}
    if max_jobs is not None:
        queue.on("job:completed", stopper.count)
        queue.on("job:failed", stopper.count)
    try:
        for worker in workers:
            worker.start()
        log.info(
            "%d worker(s) on %s, queues %s; stop with SIGTERM or Ctrl-C",
            len(workers),
            queue.storage,
            ", ".join(workers[0].queues),
        )
        while not stopper.stop.wait(0.5):
            if not any(w.is_alive for w in workers):
                break
        log.info("stopping (waiting up to %gs for running jobs)", stop_timeout)
        stopped = _stop_all(workers, stop_timeout)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not stopped or _left_behind(queue, workers):
        log.error("some jobs did not finish in time; they will be rescued when their leases expire")
        return EXIT_FAILURE
    log.info("stopped after %d job(s)", sum(w.jobs_processed for w in workers))
    return 0


def _stop_all(workers: list[Worker], timeout: float) -> bool:
    """`Worker.stop_all`, waited for in short slices so that signals are handled meanwhile.

    Python runs signal handlers in the main thread, but the system may deliver a
    signal to any thread; one that lands on a worker's thread does not interrupt a
    long wait of the main thread, and a second Ctrl-C would wait for the stop
    timeout. Waking every 0.1 s lets it act at once, as promised.
    """
    result: list[bool] = []
    stopping = threading.Thread(
        target=lambda: result.append(Worker.stop_all(workers, timeout=timeout)),
        name="dbjobq-stop",
        daemon=True,
    )
    stopping.start()
    while stopping.is_alive():
        stopping.join(0.1)
    return bool(result and result[0])


def _left_behind(queue: JobQueue, workers: list[Worker]) -> bool:
    """Whether a job is still `running` under these (now stopped) workers.

    A worker gives up on a handler that outlives the stop timeout: its thread ends,
    but the job stays `running` under its lease, to be rescued once that expires.
    """
    ids = {w.id for w in workers}
    try:
        running = queue.list_jobs(JobStatus.RUNNING, limit=None)
    except DBJobQError as error:
        log.error("could not look for jobs left behind: %s", error)
        return True
    return any(job.worker_id in ids for job in running)
