"""The `dbjobq` command: run workers, enqueue, inspect and manage jobs.

Every option can also come from an environment variable, `DBJOBQ_` and the option's
name in capitals (`--url` from `DBJOBQ_URL`, `--max-poll-interval` from
`DBJOBQ_MAX_POLL_INTERVAL`, `--json` from `DBJOBQ_JSON=1`); an option on the command
line wins. `demo` is the exception: it never reads `DBJOBQ_URL`, so that it cannot
write into the real database. Bad values are refused at start with one line naming
the option, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from dbjobq import __version__
from dbjobq._urls import mask_url
from dbjobq.errors import ConfigurationError, DBJobQError, InvalidJobError, JobNotFound
from dbjobq.events import Event
from dbjobq.job import Job, JobStatus
from dbjobq.jsonlog import JSONFormatter
from dbjobq.queue import JobQueue
from dbjobq.storage import SQLAlchemyStorage, Storage
from dbjobq.worker import Worker

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A bad option: printed as one line, exit status 2."""


class NoTables(Exception):
    """A command that only reads found no dbjobq tables: exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: easy to read in a service's log.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str) -> str | None:
    return os.environ.get(f"DBJOBQ_{name.upper().replace('-', '_')}")


def _option(args: argparse.Namespace, name: str) -> tuple[str | None, str]:
    """The raw value of an option and where it came from, for error messages."""
    value = getattr(args, name.replace("-", "_"), None)
    if value is not None:
        return str(value), f"--{name}"
    env = _env(name)
    return env, f"DBJOBQ_{name.upper().replace('-', '_')}"


def _number(
    args: argparse.Namespace,
    name: str,
    default: float | None,
    *,
    kind: type = float,
    low: float = 0.0,
    high: float = math.inf,
    strictly_above: bool = True,
) -> Any:
    raw, source = _option(args, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
        ok = math.isfinite(value) and (value > low if strictly_above else value >= low)
        ok = ok and value <= high
    except ValueError:
        ok = False
    if not ok:
        what = "a whole number" if kind is int else "a number"
        bound = f"above {_plain(low)}" if strictly_above else f"at least {_plain(low)}"
        if high != math.inf:
            bound += f" and at most {_plain(high)}"
        raise UsageError(f"{source} must be {what} {bound}, got {raw!r}")
    return value


def _plain(number: float) -> str:
    """A bound as people write it: 2147483647, not 2.14748e+09."""
    return str(int(number)) if number == int(number) else f"{number:g}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _flag(args: argparse.Namespace, name: str) -> bool:
    """A switch given on the command line, or as DBJOBQ_<NAME>=1 (or 0)."""
    if getattr(args, name.replace("-", "_"), False):
        return True
    raw = _env(name)
    if raw is None or raw.strip().lower() in _FALSE:
        return False
    if raw.strip().lower() in _TRUE:
        return True
    variable = f"DBJOBQ_{name.upper().replace('-', '_')}"
    raise UsageError(f"{variable} must be 1 or 0 (true or false), got {raw!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(raw: str, source: str) -> float:
    match = _DURATION.fullmatch(raw.strip().lower())
    if not match:
        raise UsageError(f"{source} must be a duration such as 90s, 15m, 12h or 7d, got {raw!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


# -- getting at the queue ---------------------------------------------------------------------


def _load_app(spec: str, source: str) -> JobQueue:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{source} must look like module:queue, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like python -m: the app is usually here
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"{source}: cannot import {module_name!r}: {error}") from error
    queue = getattr(module, attribute, None)
    if not isinstance(queue, JobQueue):
        found = "nothing" if queue is None else type(queue).__name__
        raise UsageError(f"{source}: {spec!r} is {found}, not a dbjobq.JobQueue")
    return queue


def _queue(args: argparse.Namespace, *, existing: bool = True) -> JobQueue:
    """The queue from --app (with its handlers) or --url (or both: handlers, other URL).

    With `existing` (commands that work on jobs already there), a database without
    the tables raises `NoTables` instead of having them created: a mistyped URL
    must not quietly become a new, empty queue.
    """
    app, app_source = _option(args, "app")
    url, _ = _option(args, "url")
    if app:
        queue = _load_app(app, app_source)
        queue = queue._with_storage(url) if url else queue
    elif url:
        queue = JobQueue(url)
    else:
        raise UsageError("give the database with --url (or DBJOBQ_URL), or an app with --app")
    _opened.append(queue)
    if existing and not queue.storage.schema_exists():
        raise NoTables(
            f"no dbjobq tables at {_where(queue.storage)}; check the URL, or create "
            "them with dbjobq init"
        )
    return queue


_opened: list[JobQueue] = []  # closed when the command ends


def _where(storage: Storage) -> str:
    """The database of a storage, for messages, with any password masked."""
    if not isinstance(storage, SQLAlchemyStorage):
        return repr(storage)
    where = f"{mask_url(storage.engine.url)} (table prefix {storage.table_prefix!r}"
    return where + (f", schema {storage.schema!r})" if storage.schema else ")")


# -- output -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, JobStatus):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# Characters that a terminal acts on instead of showing: C0 and C1 controls (ESC starts
# colour, cursor and title sequences, CSI is one byte in C1), line and paragraph
# separators, and the bidirectional overrides that reorder what is shown.
_OTHERS = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHERS}]")
_UNSAFE_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")  # keeps \t and \n


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _safe(value: object, *, lines: bool = False) -> str:
    r"""Text from job data, with what a terminal would act on escaped (ESC as `\u001b`).

    Job types, queues, errors and payloads come from whoever enqueued or ran the
    job; printed raw, an escape sequence in them could rewrite the screen or hide
    text. `lines=True` keeps newlines (for tracebacks).
    """
    text = str(value)
    return (_UNSAFE_BUT_LINES if lines else _UNSAFE).sub(_escape, text)


def _print_json(value: Any) -> None:
    # json.dumps escapes C0 controls itself; the rest become \uXXXX escapes, which
    # decode to the very same strings: the output stays exact JSON.
    print(_safe(json.dumps(_jsonable(value), indent=2, ensure_ascii=False), lines=True))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else _safe(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _short(text: str | None, width: int = 60) -> str:
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


# -- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    queue = _queue(args, existing=False)
    queue.initialize()
    if args.json:
        _print_json({"initialized": True})
    else:
        print(f"dbjobq tables ready at {_where(queue.storage)}")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    queue = _queue(args, existing=False)  # the first job creates the tables
    try:
        payload = json.loads(args.payload) if args.payload else None
    except ValueError as error:
        raise UsageError(f"--payload is not JSON: {error}") from error
    delay = None if args.delay is None else _duration(args.delay, "--delay")
    priority = (
        0
        if args.priority is None
        else _number(
            args, "priority", 0, kind=int, low=-(2**31), high=2**31 - 1, strictly_above=False
        )
    )
    job_id = queue.enqueue(
        args.type,
        payload,
        queue=args.queue,
        priority=priority,
        delay=delay,
        unique_key=args.unique_key,
        max_retries=None if args.max_retries is None else int(args.max_retries),
    )
    if args.json:
        _print_json({"id": job_id})
    else:
        print(job_id)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    limit = _number(args, "limit", 20, kind=int, low=1, high=2**31 - 1, strictly_above=False)
    newest_first = args.newest_first
    if newest_first is None:  # finished jobs: the latest are the interesting ones
        newest_first = args.status in ("completed", "failed", "cancelled")
    queue = _queue(args)
    jobs = queue.list_jobs(
        args.status, queue=args.queue, type=args.type, limit=limit, newest_first=newest_first
    )
    if args.json:
        _print_json(jobs)
        return 0
    _table(
        ["ID", "TYPE", "QUEUE", "STATUS", "TRIES", "PRIO", "CREATED", "LAST ERROR"],
        [
            (
                j.id,
                j.type,
                j.queue,
                j.status.value,
                f"{j.attempts}/{_tries(queue, j)}",
                j.priority,
                _when(j.created_at),
                _short(j.last_error, 50),
            )
            for j in jobs
        ],
    )
    return 0


def _tries(queue: JobQueue, job: Job) -> str:
    """Attempts allowed, as the handler of `queue` would run the job; "?" if unknown."""
    if job.max_retries is None and job.type not in queue.handlers:
        return "?"
    return str(queue._max_retries(job) + 1)


def cmd_job(args: argparse.Namespace) -> int:
    queue = _queue(args)
    job = queue.get_job(args.id)
    if args.json:
        _print_json(job)
        return 0
    _print_job(job, queue)
    return 0


def _print_job(job: Job, queue: JobQueue) -> None:
    # The values the job runs with: its own, else its handler's, known with --app.
    known = job.type in queue.handlers
    if job.max_retries is not None or known:
        attempts = f"{job.attempts} of {queue._max_retries(job) + 1}"
    else:
        attempts = f"{job.attempts} of (handler default)"
    timeout = queue._timeout(job)
    shown_timeout = "-" if known else "handler default"
    if timeout is not None:
        shown_timeout = f"{timeout:g}s"
    fields = [
        ("id", job.id),
        ("type", job.type),
        ("queue", job.queue),
        ("status", job.status.value),
        ("priority", job.priority),
        ("attempts", attempts),
        ("run at", _when(job.run_at)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("worker", job.worker_id or "-"),
        ("unique key", job.unique_key or "-"),
        ("timeout", shown_timeout),
    ]
    if job.progress is not None:
        fields.append(("progress", f"{job.progress:g} {job.progress_message or ''}".rstrip()))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {_safe(value)}")
    print(f"{'payload'.ljust(width)}  {_safe(json.dumps(job.payload, ensure_ascii=False))}")
    if job.meta:
        print(f"{'meta'.ljust(width)}  {_safe(json.dumps(job.meta, ensure_ascii=False))}")
    if job.result is not None:
        print(f"{'result'.ljust(width)}  {_safe(json.dumps(job.result, ensure_ascii=False))}")
    if job.last_error:
        print(f"\nlast error:\n{_safe(job.last_error, lines=True)}")


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _queue(args).stats()
    if args.json:
        _print_json(stats)
        return 0
    rows = []
    for q in stats.queues:
        c = q.counts
        rows.append(
            (
                q.queue,
                c["pending"],
                c["running"],
                c["completed"],
                c["failed"],
                c["cancelled"],
                _age(q.oldest_pending_age),
                "/".join(str(q.finished[w]) for w in sorted(q.finished)),
            )
        )
    _table(
        [
            "QUEUE",
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "OLDEST DUE",
            "DONE 1m/5m/15m",
        ],
        rows,
    )
    print(f"\n{len(stats.workers)} live worker(s)")
    for q in stats.queues:
        for job_type in q.unhandled_types:
            print(f"warning: no live worker handles {job_type!r} jobs in queue {q.queue!r}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    queue = _queue(args)
    workers = queue.list_workers()
    if args.json:
        _print_json(workers)
        return 0
    now = queue.storage.now()
    _table(
        ["ID", "HOST", "PID", "QUEUES", "CURRENT JOB", "JOBS", "LAST SEEN"],
        [
            (
                w.id,
                w.hostname,
                w.pid,
                ",".join(w.queues),
                w.current_job or "-",
                w.jobs_processed,
                "-" if w.last_seen is None else _age((now - w.last_seen).total_seconds()) + " ago",
            )
            for w in workers
        ],
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if args.all_failed and args.id:
        raise UsageError("give a job ID or --all-failed, not both")
    if not args.all_failed and not args.id:
        raise UsageError("give the ID of the job to retry, or --all-failed for every failed job")
    queue = _queue(args)
    ids = (
        [args.id]
        if args.id
        else [j.id for j in queue.list_jobs("failed", queue=args.queue, limit=None)]
    )
    retried = [job_id for job_id in ids if queue.retry(job_id)]
    if args.json:
        _print_json({"retried": retried})
    elif args.id and not retried:
        print(
            f"job {args.id} was not retried: it is not failed or cancelled, "
            "or another unfinished job holds its unique key"
        )
        return EXIT_FAILURE
    else:
        print(f"retried {len(retried)} job(s)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    done = _queue(args).cancel(args.id)
    if args.json:
        _print_json({"cancelled": done})
    elif done:
        print(f"cancelled {args.id}")
    else:
        print(f"job {args.id} had already finished")
    return 0 if done else EXIT_FAILURE


def cmd_purge(args: argparse.Namespace) -> int:
    age = _duration(args.older_than, "--older-than")
    statuses = args.status or ["completed", "cancelled"]
    deleted = _queue(args).purge(age, statuses=statuses)
    if args.json:
        _print_json({"deleted": deleted})
    else:
        print(f"deleted {deleted} job(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dbjobq.demo import run_demo

    if args.jobs < 1 or args.workers < 1:
        raise UsageError("--jobs and --workers must be at least 1")
    # Not DBJOBQ_URL: that names the real database, which a demo must not write into.
    return run_demo(args.url, jobs=args.jobs, workers=args.workers)


# -- the worker command -------------------------------------------------------------------------


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_worker(args: argparse.Namespace) -> int:
    if args.app and args.app_option and args.app != args.app_option:
        raise UsageError(f"two apps given: {args.app!r} and --app {args.app_option!r}")
    args.app = args.app or args.app_option or _env("app")
    if args.app is None:
        raise UsageError("give the app as module:queue, --app module:queue or DBJOBQ_APP")
    level, level_source = _option(args, "log-level")
    level = (level or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UsageError(f"{level_source} must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    log_format, format_source = _option(args, "log-format")
    log_format = (log_format or "text").lower()
    if log_format not in ("text", "json"):
        raise UsageError(f"{format_source} must be text or json, got {log_format!r}")
    concurrency = _number(args, "concurrency", 1, kind=int, low=1, high=1000, strictly_above=False)
    poll = _number(args, "poll-interval", 1.0, high=86400)
    max_poll = _number(args, "max-poll-interval", max(10.0, poll), high=86400)
    if max_poll < poll:
        raise UsageError("--max-poll-interval must not be less than --poll-interval")
    lease = _number(args, "lease-seconds", 30.0, high=86400)
    stop_timeout = _number(args, "stop-timeout", 30.0, high=86400, strictly_above=False)
    max_jobs = _number(args, "max-jobs", None, kind=int, low=1, strictly_above=False)
    queues_raw, _ = _option(args, "queues")
    types_raw, _ = _option(args, "types")
    lifo_raw, lifo_source = _option(args, "lifo")
    lifo = (lifo_raw or "false").lower()
    if lifo not in ("1", "true", "yes", "0", "false", "no"):
        raise UsageError(f"{lifo_source} must be true or false, got {lifo_raw!r}")
    worker_id, _ = _option(args, "worker-id")
    _configure_logging(level, log_format)
    queue = _queue(args, existing=False)  # workers create the tables
    names = [q.strip() for q in queues_raw.split(",") if q.strip()] if queues_raw else None
    types = [t.strip() for t in types_raw.split(",") if t.strip()] if types_raw else None
    try:
        workers = [
            Worker(
                queue,
                queues=names,
                types=types,
                lifo=lifo in ("1", "true", "yes"),
                poll_interval=poll,
                max_poll_interval=max_poll,
                lease_seconds=lease,
                worker_id=None
                if worker_id is None
                else (worker_id if concurrency == 1 else f"{worker_id}-{n + 1}"),
            )
            for n in range(concurrency)
        ]
    except DBJobQError as error:
        raise UsageError(str(error)) from error
    return _serve(queue, workers, stop_timeout, max_jobs)


def _serve(
    queue: JobQueue, workers: list[Worker], stop_timeout: float, max_jobs: int | None
) -> int:
    log = logging.getLogger("dbjobq.cli")
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            # A second signal: leave now. Running jobs keep their leases, which expire,
            # and other workers rescue them; nothing is lost.
            os.write(2, b"dbjobq: second signal, exiting at once\n")
            os._exit(EXIT_FAILURE)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    done = {"jobs": 0}
    lock = threading.Lock()

    def count(event: Event) -> None:
        with lock:
            done["jobs"] += 1
            if max_jobs is not None and done["jobs"] >= max_jobs:
                stop.set()

    if max_jobs is not None:
        queue.on("job:completed", count)
        queue.on("job:failed", count)
    try:
        for worker in workers:
            worker.start()
        log.info(
            "%d worker(s) on %s, queues %s; stop with SIGTERM or Ctrl-C",
            len(workers),
            queue.storage,
            ", ".join(workers[0].queues),
        )
        while not stop.wait(0.5):
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
        logging.getLogger("dbjobq.cli").error("could not look for jobs left behind: %s", error)
        return True
    return any(job.worker_id in ids for job in running)


# -- the parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dbjobq", description="Background jobs in your database.")
    parser.add_argument("--version", action="version", version=f"dbjobq {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(
        name: str, summary: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(run=run)
        if name not in ("demo", "worker"):
            sub.add_argument("--url", help="database URL (DBJOBQ_URL)")
            sub.add_argument(
                "--app", help="module:queue, for its storage and handlers (DBJOBQ_APP)"
            )
            sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
        return sub

    init = command("init", "create the tables (workers and the first enqueue also do)", cmd_init)
    init.description = (
        "Create the tables and indexes if missing; idempotent. The other commands that "
        "read or change jobs never create them: they report a database without them."
    )

    worker = command("worker", "run workers until SIGTERM or Ctrl-C", cmd_worker)
    worker.add_argument("app", nargs="?", help="module:queue whose handlers to run (DBJOBQ_APP)")
    worker.add_argument("--app", dest="app_option", metavar="APP", help="the same as APP")
    worker.add_argument("--url", help="database URL, instead of the queue's own (DBJOBQ_URL)")
    worker.add_argument(
        "--queues", help="comma-separated queue names (default: the queue's default)"
    )
    worker.add_argument("--types", help="comma-separated job types to take (default: all handled)")
    worker.add_argument(
        "--lifo", action="store_true", default=None, help="newest due job first, within a priority"
    )
    worker.add_argument("--concurrency", help="worker threads in this process (default 1)")
    worker.add_argument("--worker-id", help="worker id; -1, -2, ... are added for several")
    worker.add_argument("--poll-interval", help="seconds to wait after an empty poll (default 1)")
    worker.add_argument("--max-poll-interval", help="longest wait between polls (default 10)")
    worker.add_argument("--lease-seconds", help="lease length in seconds (default 30)")
    worker.add_argument("--max-jobs", help="exit after about this many jobs")
    worker.add_argument(
        "--stop-timeout", help="seconds to wait for running jobs on stop (default 30)"
    )
    worker.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")
    worker.add_argument("--log-format", help="text (default) or json")

    enqueue = command("enqueue", "add a job", cmd_enqueue)
    enqueue.add_argument("type", help="job type")
    enqueue.add_argument("--payload", help="payload as a JSON object")
    enqueue.add_argument("--queue", help="queue name")
    enqueue.add_argument("--priority", help="higher runs first")
    enqueue.add_argument("--delay", help="wait before running, such as 30s or 2h")
    enqueue.add_argument("--unique-key", help="return the unfinished job holding this key instead")
    enqueue.add_argument("--max-retries", type=int, help="retries after a failed first attempt")

    jobs = command("jobs", "list jobs (finished ones newest first, others oldest first)", cmd_jobs)
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--queue")
    jobs.add_argument("--type")
    jobs.add_argument("--limit", help="at most this many (default 20)")
    order = jobs.add_mutually_exclusive_group()
    order.add_argument(
        "--newest-first",
        dest="newest_first",
        action="store_const",
        const=True,
        help="latest first (the default with --status completed, failed or cancelled)",
    )
    order.add_argument(
        "--oldest-first",
        dest="newest_first",
        action="store_const",
        const=False,
        help="earliest first (the default otherwise)",
    )

    job = command("job", "show one job in full: payload, result, progress, error", cmd_job)
    job.add_argument("id")

    command("stats", "counts per queue and status, backlog age, throughput", cmd_stats)
    command("workers", "live workers and what they are doing", cmd_workers)

    retry = command("retry", "run failed (or cancelled) jobs again", cmd_retry)
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.add_argument("--queue", help="with --all-failed: only this queue")

    cancel = command("cancel", "cancel a pending or running job", cmd_cancel)
    cancel.add_argument("id")

    purge = command("purge", "delete old finished jobs", cmd_purge)
    purge.add_argument("--older-than", required=True, help="age such as 7d or 12h")
    purge.add_argument(
        "--status",
        action="append",
        choices=["completed", "failed", "cancelled"],
        help="which finished jobs (default: completed and cancelled); repeatable",
    )

    demo = command("demo", "enqueue and process demo jobs on a local SQLite file", cmd_demo)
    demo.add_argument("--url", help="database URL (default: a fresh ./dbjobq-demo.db)")
    demo.add_argument("--jobs", type=int, default=300, help="how many jobs (default 300)")
    demo.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `dbjobq` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    name = args.command
    try:
        if hasattr(args, "json"):
            args.json = _flag(args, "json")
        status = run(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen below
    except BrokenPipeError:
        # The reader went away (`dbjobq jobs | head`): stop quietly, as Python's
        # documentation recommends, and keep the exit-time flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except UsageError as error:
        print(f"dbjobq {name}: error: {_safe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except NoTables as error:
        print(f"dbjobq {name}: {_safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except JobNotFound as error:
        print(f"dbjobq {name}: {_safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except (ConfigurationError, InvalidJobError) as error:
        print(f"dbjobq {name}: error: {_safe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except DBJobQError as error:
        print(f"dbjobq {name}: {type(error).__name__}: {_safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        while _opened:
            _opened.pop().close()
    return status


if __name__ == "__main__":
    sys.exit(main())
