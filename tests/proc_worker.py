"""A worker process for the multi-process tests: `python -m tests.proc_worker MODE ...`.

Modes:
  drain  N workers run "count" jobs, each appending "<job id> <pid>" to a ledger file,
         until SIGTERM; exit 3 if anything was logged at ERROR level (such as
         "database is locked"), else 0.
  hang   one worker runs "slow" jobs: it writes "start <job id> <pid>" to the ledger
         and then blocks, waiting to be killed.
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

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.storage import SQLAlchemyStorage


class ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["drain", "hang"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lease", type=float, default=30.0)
    args = parser.parse_args()

    errors = ErrorCollector()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().addHandler(errors)
    storage = SQLAlchemyStorage(args.url, table_prefix=args.prefix, schema=args.schema)
    queue = JobQueue(storage)
    ledger = open(args.ledger, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    pid = os.getpid()

    @queue.handler("count")
    def count(ctx: JobContext) -> int:
        ledger.write(f"{ctx.job.id} {pid}\n")
        time.sleep(0.001)
        return pid

    @queue.handler("slow")
    def slow(ctx: JobContext) -> None:
        ledger.write(f"start {ctx.job.id} {pid}\n")
        time.sleep(3600)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    workers = [
        Worker(queue, poll_interval=0.01, max_poll_interval=0.05, lease_seconds=args.lease)
        for _ in range(args.workers if args.mode == "drain" else 1)
    ]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    stop.wait()
    for worker in workers:
        worker.stop(timeout=30)
    queue.close()
    if errors.messages:
        print("\n".join(errors.messages), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
