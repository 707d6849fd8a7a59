"""One worker running six async jobs at once: Worker(queue, concurrency=6)."""

import asyncio
import time

from dbjobq import JobContext, JobQueue, JobSpec, Worker

queue = JobQueue("sqlite:///jobs.db")
in_flight = {"now": 0, "most": 0}


@queue.handler("fetch", timeout=30)
async def fetch(ctx: JobContext) -> int:
    in_flight["now"] += 1
    in_flight["most"] = max(in_flight["most"], in_flight["now"])
    try:
        for _ in range(10):  # stands for awaiting an HTTP call, in steps
            await asyncio.sleep(0.05)
            ctx.raise_if_cancelled()
    finally:
        in_flight["now"] -= 1
    return int(ctx.payload["n"])


ids = queue.enqueue_many([JobSpec(type="fetch", payload={"n": n}) for n in range(6)])
started = time.monotonic()
Worker(queue, concurrency=6).run_until_empty()  # or .start() in an application
print(f"{time.monotonic() - started:.1f}s")  # about 0.5s: side by side (one at a time: 3.0s)
print(in_flight["most"], [queue.get_job(i).result for i in ids])  # 6 [0, 1, 2, 3, 4, 5]
assert in_flight["most"] == 6
assert [queue.get_job(i).status for i in ids] == ["completed"] * 6
