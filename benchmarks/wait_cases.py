"""How fast `JobQueue.wait` hears of a job finished by another process.

A waiter in this process, a finisher process that claims each job first and
completes it on cue, once the waiter is waiting. The waiter's polls are set 30 s
apart, so every figure is the wake-up's (SQLite `data_version`, PostgreSQL NOTIFY),
never a poll's: from the moment the other process starts the completing write to
the return of `wait()`.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from dbjobq import JobQueue

from .cases import ROOT, Figure, Store

_NO_POLL = 30.0


def wake_latency(store: Store, samples: int) -> list[Figure]:
    """p50 and p99 of the time from completion elsewhere to the return of `wait()`."""
    queue = JobQueue(store.storage())
    queue.initialize()
    finisher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.finisher_proc",
            *(store.url, store.prefix, store.schema or ""),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert finisher.stdin is not None
    assert finisher.stdout is not None
    latencies: list[float] = []
    try:
        for _ in range(samples):
            job_id = queue.enqueue("elsewhere")
            finisher.stdin.write(f"{job_id}\n")
            finisher.stdin.flush()
            finisher.stdout.readline()  # "claimed"
            returned: list[float] = []

            def wait(job_id: str = job_id, returned: list[float] = returned) -> None:
                queue.wait(job_id, timeout=_NO_POLL, poll_interval=_NO_POLL)
                returned.append(time.time())

            waiter = threading.Thread(target=wait)
            waiter.start()
            while not queue.waits:
                time.sleep(0.001)
            time.sleep(0.02)  # settled in its wait, as a waiter mostly is
            finisher.stdin.write("go\n")
            finisher.stdin.flush()
            began = float(finisher.stdout.readline())
            waiter.join()
            latencies.append(returned[0] - began)
    finally:
        finisher.stdin.close()
        finisher.wait(60)
        finisher.stdout.close()
        queue.close()

    def pct(q: float) -> float:
        return sorted(latencies)[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return [
        Figure(store.backend, "wait() wake-up, other process, p50", pct(0.5), "ms"),
        Figure(store.backend, "wait() wake-up, other process, p99", pct(0.99), "ms"),
    ]
