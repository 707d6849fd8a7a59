"""A worker process for the benchmark: no-op handlers, N threads, until SIGTERM."""

from __future__ import annotations

import json
import resource
import signal
import sys
import threading

from dbjobq import JobQueue, Worker
from dbjobq.storage import SQLAlchemyStorage


def main() -> None:
    """Run worker threads on the given tables until SIGTERM."""
    url, prefix, schema, threads = sys.argv[1:5]
    report_rss = "--report-rss" in sys.argv
    queue = JobQueue(SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None))
    queue.register("noop", lambda ctx: None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    workers = [
        Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(int(threads))
    ]
    for w in workers:
        w.start()
    stop.wait()
    Worker.stop_all(workers)
    if report_rss:
        print(json.dumps({"max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main()
