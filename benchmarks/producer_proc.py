"""Enqueues jobs one at a time from another process; prints when each was sent."""

from __future__ import annotations

import json
import sys
import time

from dbjobq import JobQueue
from dbjobq.storage import SQLAlchemyStorage


def main() -> None:
    """Enqueue one job every 50 ms and print when each was sent."""
    url, prefix, schema, samples = sys.argv[1:5]
    queue = JobQueue(SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None))
    queue.initialize()
    sent = {}
    for n in range(int(samples)):
        time.sleep(0.05)
        sent[n] = time.time()
        queue.enqueue("ping", {"n": n})
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
