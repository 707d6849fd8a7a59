# docs-test: custom
"""A worker process for systemd: runs jobs until SIGTERM or SIGINT, then stops gracefully."""

import logging
import signal
import sys
from types import FrameType

from dbjobq import JobContext, JobQueue, Worker

WORKERS = 4
STOP_TIMEOUT = 25.0  # keep it below systemd's TimeoutStopSec

queue = JobQueue("sqlite:///jobs.db")  # in production, e.g. os.environ["DATABASE_URL"]


@queue.handler("send_email")
def send_email(ctx: JobContext) -> dict[str, str]:
    return {"sent_to": ctx.payload["to"]}


class Shutdown(Exception):
    """Raised in the main thread when a stop signal arrives."""


def request_shutdown(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    workers = [Worker(queue) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    try:
        print(f"ready: {len(workers)} workers", flush=True)
        while True:
            signal.pause()  # sleep until a signal arrives
    except Shutdown as stop:
        print(f"{stop}: stopping", flush=True)
    # A second signal now ends the process at once instead of waiting.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not Worker.stop_all(workers, timeout=STOP_TIMEOUT):
        print("a worker did not stop in time", file=sys.stderr, flush=True)
        return 1
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
