"""Finishes jobs from another process: `python -m tests.proc_finish URL PREFIX [SCHEMA]`.

For each job id read from stdin: claims it, prints "claimed", waits for a line
"go", completes it with the result `"from <pid>"`, prints "done". Ends at EOF.
"""

from __future__ import annotations

import os
import sys

from dbjobq.storage import SQLAlchemyStorage


def main() -> int:
    url, prefix = sys.argv[1], sys.argv[2]
    schema = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    storage = SQLAlchemyStorage(url, table_prefix=prefix, schema=schema)
    storage.initialize()
    for line in sys.stdin:
        job_id = line.strip()
        (job,) = storage.claim(queues=["default"], worker_id="finisher", lease_seconds=60)
        assert job.id == job_id, (job.id, job_id)
        print("claimed", flush=True)
        assert sys.stdin.readline().strip() == "go"
        assert storage.complete(job.id, job.lease_token or "", result=f"from {os.getpid()}")
        print("done", flush=True)
    storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
