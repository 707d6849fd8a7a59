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
        print(json.dumps({"max_rss_kb": peak_rss_kb()}))


def peak_rss_kb() -> int:
    """This process's peak resident memory, in KiB.

    Linux's `VmHWM` counts this program only. `ru_maxrss` is the fallback elsewhere:
    on Linux it starts from the parent's peak (the spawning process's memory is
    counted up to the exec), which would charge the benchmark's own enqueueing of
    a million jobs to the worker.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
