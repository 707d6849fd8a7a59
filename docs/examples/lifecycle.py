"""A job's life: retries, failure, cancellation, manual retry, unique keys, priorities."""

from dbjobq import JobContext, JobQueue, JobValidationError, RetryPolicy, Worker

queue = JobQueue("sqlite:///lifecycle.db", retry_policy=RetryPolicy(base_delay=0))
attempts_seen: list[int] = []


@queue.handler("charge", max_retries=2)
def charge(ctx: JobContext) -> str:
    attempts_seen.append(ctx.attempt)
    if ctx.payload["card"] == "expired":
        raise JobValidationError("card expired")  # not retryable: fails at once
    if ctx.attempt < 3:
        raise ConnectionError("payment service timed out")  # retried
    return "charged"


flaky = queue.enqueue("charge", {"card": "ok"})
invalid = queue.enqueue("charge", {"card": "expired"})
worker = Worker(queue)
worker.run_until_empty()

job = queue.get_job(flaky)
print(job.status, job.attempts, job.result)  # completed 3 charged
assert (job.status, job.attempts, job.result) == ("completed", 3, "charged")
assert job.last_error is not None and job.last_error.startswith("ConnectionError")

job = queue.get_job(invalid)
print(job.status, job.attempts, job.last_error.splitlines()[0])  # failed 1 JobValidationError: ...
assert (job.status, job.attempts) == ("failed", 1)

# A failed job can be run again by hand; its attempts start over.
assert queue.retry(invalid)
assert queue.get_job(invalid).status == "pending"

# Cancelling a pending job takes it out of the queue for good.
assert queue.cancel(invalid)
assert queue.get_job(invalid).status == "cancelled"

# While a job with a unique key is unfinished, enqueueing the key returns that job.
first = queue.enqueue("charge", {"card": "ok"}, unique_key="charge:order-7")
again = queue.enqueue("charge", {"card": "ok"}, unique_key="charge:order-7")
assert first == again

# Higher priority runs first; FIFO within a priority.
order: list[str] = []
queue.register("note", lambda ctx: order.append(ctx.payload["name"]))
for name, priority in [("low", 0), ("urgent", 10), ("low-2", 0), ("normal", 5)]:
    queue.enqueue("note", {"name": name}, priority=priority)
Worker(queue, queues=["default"]).run_until_empty()
print(order)  # ['urgent', 'normal', 'low', 'low-2']
assert order == ["urgent", "normal", "low", "low-2"]
