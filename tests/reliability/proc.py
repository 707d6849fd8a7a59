"""A worker process of the reliability harness: `python -m tests.reliability.proc ...`.

It runs `--threads` workers on the "work" handler until SIGTERM, then stops them with
`Worker.stop_all` and writes a JSON summary. The handler appends to a ledger file of
this process's own, one line per event, flushed before the handler goes on:

    start <job id> <attempt> <pid> <time>
    end <job id> <attempt> <pid> <time>

A payload `{"ms": n}` makes the handler take n milliseconds; `{"mode": ...}` makes it
misbehave (see `misbehave`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dbjobq import JobContext, JobQueue, RetryPolicy, Worker, _clock, _faults
from dbjobq.storage import SQLAlchemyStorage

WORKER_MAX_RETRIES = 20  # for jobs without max_retries of their own (the harness checks it)


class LogCounter(logging.Handler):
    """Counts warning and error records (and, at any level, lock errors)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()
        self.lock_errors = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "locked" in message:
            self.lock_errors += 1
        if record.levelno < logging.WARNING:
            return
        self.counts[record.levelname] += 1
        if len(self.first) < 20:
            self.first.append(f"{record.levelname} {message[:300]}")


def break_the_fence() -> None:
    """Negative control: finishing a job no longer needs the current lease token."""
    from dbjobq.storage import sqlalchemy_storage as module

    def held(self: SQLAlchemyStorage, job_id: str, token: str) -> object:
        return self._jobs.c.id == job_id

    module.SQLAlchemyStorage._held = held  # type: ignore[method-assign,assignment]


def misbehave(mode: str) -> Any:
    """Handlers that do what handlers should not."""
    if mode == "system_exit":
        raise SystemExit(3)
    if mode == "keyboard_interrupt":
        raise KeyboardInterrupt
    if mode == "generator_exit":
        raise GeneratorExit
    if mode == "not_json":
        return {"when": object()}
    if mode == "hang":
        time.sleep(3)  # past its timeout, deaf to ctx.cancelled
        return "too late"
    raise ValueError(f"unknown mode {mode}")


class Stop(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--max-poll", type=float, default=0.25)
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--fault", help="point:action, armed for its first hit")
    parser.add_argument("--skew", type=float, default=0.0, help="seconds added to the clock")
    parser.add_argument("--unfenced", action="store_true", help="negative control")
    parser.add_argument("--busy-timeout", type=float, default=30.0, help="SQLite only")
    args = parser.parse_args()
    if args.unfenced:
        break_the_fence()

    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    counter = LogCounter()
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger().addHandler(counter)
    logging.getLogger("dbjobq.storage").setLevel(logging.DEBUG)  # transient errors too
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # but print warnings only
    _clock.skew = args.skew
    storage = SQLAlchemyStorage(
        args.url, table_prefix=args.prefix, schema=args.schema, busy_timeout=args.busy_timeout
    )
    queue = JobQueue(
        storage, retry_policy=RetryPolicy(base_delay=0.0), max_retries=WORKER_MAX_RETRIES
    )
    ledger = open(args.ledger, "a", buffering=1)  # noqa: SIM115 - lives with the process
    pid = os.getpid()
    ledger_lock = threading.Lock()

    def note(event: str, ctx: JobContext) -> None:
        with ledger_lock:
            ledger.write(f"{event} {ctx.job.id} {ctx.attempt} {pid} {time.time():.6f}\n")

    @queue.handler("work", timeout=10)
    def work(ctx: JobContext) -> Any:
        note("start", ctx)
        mode = ctx.payload.get("mode")
        if mode:
            return misbehave(mode)
        time.sleep(ctx.payload.get("ms", 0) / 1000)
        note("end", ctx)
        return {"pid": pid, "attempt": ctx.attempt}

    workers = [
        Worker(
            queue,
            poll_interval=args.poll,
            max_poll_interval=args.max_poll,
            lease_seconds=args.lease,
        )
        for _ in range(args.threads)
    ]
    # The library must not have touched the process's signal handlers.
    handlers_after = {s: signal.getsignal(s) for s in handlers_before}

    def on_signal(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends us at once
        raise Stop

    signal.signal(signal.SIGTERM, on_signal)
    if args.fault:
        point, action = args.fault.split(":")
        _faults.arm(point, action)
    alive = True
    try:
        for worker in workers:
            worker.start()
        # Inside the try: the harness may signal as soon as it reads the line, while
        # print() is still flushing it.
        print("ready", flush=True)
        while True:
            time.sleep(0.2)
            alive = alive and all(w.is_alive for w in workers)
    except Stop:
        pass
    alive_at_stop = all(w.is_alive for w in workers)
    began = time.monotonic()
    stopped = Worker.stop_all(workers, timeout=args.stop_timeout)
    summary = {
        "pid": pid,
        "threads_alive_throughout": alive and alive_at_stop,
        "stopped": stopped,
        "stop_seconds": time.monotonic() - began,
        "signal_handlers_untouched": handlers_before == handlers_after,
        "log_counts": dict(counter.counts),
        "lock_errors": counter.lock_errors,
        "first_logs": counter.first,
        "jobs_processed": sum(w.jobs_processed for w in workers),
    }
    ledger.close()
    args.summary.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
