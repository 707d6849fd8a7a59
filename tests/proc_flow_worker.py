"""A worker process for the flow-control process tests: `python -m tests.proc_flow_worker`.

It runs `--workers` worker threads with two limited handlers until SIGTERM, and exits
3 if anything was logged at ERROR level, else 0:

  sync  `Concurrency(2, key=payload["key"])` (none with `--no-limits`, for comparisons);
        sleeps `--sleep` seconds.
  call  `RateLimit(10, per=1.0)`; sleeps 10 ms.

Each run appends lines to the `--ledger` file, one `os.write` of an `O_APPEND`
descriptor per line, so that a line is whole even if the process is killed:

  start <job id> <key> <pid> <wall time> <job started_at, as the database recorded it>
  end <job id> <wall time>

The `start` line is written first thing in the handler and the `end` line last, so a
run's lines lie within the time its job held a concurrency slot.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dbjobq import Concurrency, Job, JobContext, JobQueue, RateLimit, Worker
from dbjobq.storage import SQLAlchemyStorage

from .proc_worker import ErrorCollector

T = TypeVar("T")

SLOW = 0.5  # a storage call that takes longer is logged (a warning: not a failure)


class TimedStorage(SQLAlchemyStorage):
    """Logs the storage calls of the hot path that take longer than `SLOW` seconds."""

    def _timed(self, name: str, call: Callable[[], T]) -> T:
        began = time.monotonic()
        try:
            return call()
        finally:
            took = time.monotonic() - began
            if took > SLOW:
                logging.getLogger("proc_flow_worker").warning("%s took %.2fs", name, took)

    def claim_limited(self, **kwargs: Any) -> list[Job]:
        return self._timed(
            "claim_limited", lambda: super(TimedStorage, self).claim_limited(**kwargs)
        )

    def complete(self, *args: Any, **kwargs: Any) -> bool:
        return self._timed("complete", lambda: super(TimedStorage, self).complete(*args, **kwargs))

    def complete_many(self, *args: Any, **kwargs: Any) -> list[bool]:
        return self._timed(
            "complete_many", lambda: super(TimedStorage, self).complete_many(*args, **kwargs)
        )

    def heartbeat(self, *args: Any, **kwargs: Any) -> bool:
        return self._timed(
            "heartbeat", lambda: super(TimedStorage, self).heartbeat(*args, **kwargs)
        )


CONCURRENCY = Concurrency(2, key=lambda payload: payload["key"])
RATE_LIMIT = RateLimit(10, per=1.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--no-limits", action="store_true", help="sync without its Concurrency")
    args = parser.parse_args()

    errors = ErrorCollector()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().addHandler(errors)
    storage = TimedStorage(args.url, table_prefix=args.prefix, schema=args.schema)
    queue = JobQueue(storage)
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def record(ctx: JobContext, key: object) -> None:
        started = ctx.job.started_at
        assert started is not None
        line = f"start {ctx.job.id} {key} {pid} {time.time():.6f} {started.timestamp():.6f}\n"
        os.write(ledger, line.encode())

    def finish(ctx: JobContext) -> None:
        os.write(ledger, f"end {ctx.job.id} {time.time():.6f}\n".encode())

    @queue.handler("sync", concurrency=None if args.no_limits else CONCURRENCY)
    def sync(ctx: JobContext) -> int:
        record(ctx, ctx.payload["key"])
        time.sleep(args.sleep)  # the work: runs of one key must overlap here if they can
        finish(ctx)
        return pid

    @queue.handler("call", rate_limit=RATE_LIMIT)
    def call(ctx: JobContext) -> int:
        record(ctx, "call")
        time.sleep(0.01)
        finish(ctx)
        return pid

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    workers = [
        Worker(
            queue,
            poll_interval=0.01,
            max_poll_interval=0.05,
            lease_seconds=args.lease,
            heartbeat_interval=args.heartbeat,
        )
        for _ in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    stop.wait()
    Worker.stop_all(workers, timeout=30)
    queue.close()
    if errors.messages:
        print("\n".join(errors.messages), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
