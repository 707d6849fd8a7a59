"""Completes jobs from another process, on cue; prints when each completion began.

`python -m benchmarks.finisher_proc URL PREFIX SCHEMA`: for each job id read from
stdin, claims it and prints "claimed"; at the next line ("go") it notes the time,
completes the job and prints that time.
"""

from __future__ import annotations

import sys
import time

from dbjobq.storage import SQLAlchemyStorage


def main() -> None:
    """Claim, then complete on cue, one job per line of stdin."""
    url, prefix, schema = sys.argv[1:4]
    storage = SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None)
    storage.initialize()
    for line in sys.stdin:
        (job,) = storage.claim(queues=["default"], worker_id="finisher", lease_seconds=60)
        assert job.id == line.strip()
        print("claimed", flush=True)
        sys.stdin.readline()
        began = time.time()
        storage.complete(job.id, job.lease_token or "", result=None)
        print(began, flush=True)
    storage.close()


if __name__ == "__main__":
    main()
