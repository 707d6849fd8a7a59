"""Events (hooks) and structured logging."""

import io
import json
import logging

from dbjobq import Event, JobContext, JobQueue, RetryPolicy, Worker
from dbjobq.jsonlog import JSONFormatter

stream = io.StringIO()
handler = logging.StreamHandler(stream)
handler.setFormatter(JSONFormatter())  # one JSON object per line
logging.basicConfig(level=logging.INFO, handlers=[handler])

queue = JobQueue("sqlite:///events_and_logging.db", retry_policy=RetryPolicy(base_delay=0))
failures: list[str] = []


@queue.handler("import_file", max_retries=1)
def import_file(ctx: JobContext) -> int:
    ctx.logger.info("importing %s", ctx.payload["path"])
    if ctx.payload["path"].endswith(".bad"):
        raise ValueError("unreadable file")
    return 42


@queue.on("job:failed")
def alert(event: Event) -> None:
    if not event.will_retry:  # failed for good: tell someone
        assert event.job is not None
        failures.append(f"{event.job.type} {event.job.id}: {event.error}")


queue.enqueue("import_file", {"path": "ok.csv"})
queue.enqueue("import_file", {"path": "broken.bad"})
Worker(queue).run_until_empty()

print(failures)  # ['import_file <id>: ValueError: unreadable file']
assert len(failures) == 1 and failures[0].endswith("ValueError: unreadable file")

record = json.loads(stream.getvalue().splitlines()[0])
print(sorted(record))  # ['job_id', 'job_type', 'level', 'logger', 'message', 'time']
assert record["message"].startswith("[import_file ") and record["job_type"] == "import_file"
