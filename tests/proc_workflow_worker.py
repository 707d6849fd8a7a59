"""A worker process for the workflow process tests: `python -m tests.proc_workflow_worker`.

It runs `--workers` worker threads until SIGTERM and exits 3 if anything was logged at
ERROR level, else 0. Handlers:

  member    sleeps `--sleep` seconds, returns its payload's `n`.
  callback  returns the sum of its parents' results.
  last      returns its payload's `n`; with `--kill-after-outcome`, the process is
            SIGKILLed right after the first outcome it records is committed.

Each run appends a line `<type> <job id> <pid>` to the `--ledger` file with one
`os.write` of an `O_APPEND` descriptor, so a line is whole even if the process is killed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from dbjobq import JobContext, JobQueue, Worker, _faults
from dbjobq.storage import SQLAlchemyStorage

from .proc_worker import ErrorCollector


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--kill-after-outcome", type=int, default=0, help="1: SIGKILL, see above")
    args = parser.parse_args()

    errors = ErrorCollector()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().addHandler(errors)
    storage = SQLAlchemyStorage(args.url, table_prefix=args.prefix, schema=args.schema)
    queue = JobQueue(storage)
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def record(ctx: JobContext) -> None:
        os.write(ledger, f"{ctx.job.type} {ctx.job.id} {pid}\n".encode())

    @queue.handler("member")
    def member(ctx: JobContext) -> int:
        record(ctx)
        time.sleep(args.sleep)
        return int(ctx.payload["n"])

    @queue.handler("callback")
    def callback(ctx: JobContext) -> int:
        record(ctx)
        return sum(int(r) for r in ctx.parent_results.values())

    @queue.handler("last")
    def last(ctx: JobContext) -> int:
        record(ctx)
        return int(ctx.payload["n"])

    if args.kill_after_outcome:
        _faults.arm("after_outcome", "kill")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    workers = [
        Worker(queue, poll_interval=0.01, max_poll_interval=0.05, lease_seconds=args.lease)
        for _ in range(args.workers)
    ]
    print("ready", flush=True)  # before the first job: a killed process has said it already
    for worker in workers:
        worker.start()
    stop.wait()
    Worker.stop_all(workers, timeout=30)
    queue.close()
    if errors.messages:
        print("\n".join(errors.messages), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
