"""Unique keys: tell a new job from a duplicate, replace, raise, and a window."""

from pathlib import Path

from dbjobq import DuplicateJobError, JobContext, JobQueue, JobSpec, Worker

for old in Path().glob("workflow_unique.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///workflow_unique.db")


@queue.handler("send_digest")
def send_digest(ctx: JobContext) -> str:
    return f"{ctx.payload['items']} items for user {ctx.payload['user']}"


# insert() says whether this call stored the job or met the one holding the key.
first = queue.insert("send_digest", {"user": 7, "items": 1}, unique_key="digest:7", delay=60)
again = queue.insert("send_digest", {"user": 7, "items": 2}, unique_key="digest:7", delay=60)
print(first.inserted, again.inserted, again.id == first.id)  # True False True

# "replace": the pending digest takes the newer payload, and run_at (no delay: due now).
queue.enqueue("send_digest", {"user": 7, "items": 3}, unique_key="digest:7", on_conflict="replace")
print(queue.get_job(first.id).payload)  # {'user': 7, 'items': 3}

# "raise": DuplicateJobError names the holder; a batch is stored whole or not at all.
batch = [
    JobSpec(type="send_digest", payload={"user": 8, "items": 1}, unique_key="digest:8"),
    JobSpec(
        type="send_digest",
        payload={"user": 7, "items": 4},
        unique_key="digest:7",
        on_conflict="raise",
    ),
]
try:
    queue.enqueue_many(batch)
except DuplicateJobError as error:
    print(error.unique_key, error.job_id == first.id)  # digest:7 True
print(len(queue.list_jobs()))  # 1: the digest of user 8 was not stored either

Worker(queue).run_until_empty()
print(
    queue.get_job(first.id).status, queue.get_job(first.id).result
)  # completed 3 items for user 7

# unique_for: the key still holds for an hour after its job finished.
late = queue.insert("send_digest", {"user": 7, "items": 5}, unique_key="digest:7", unique_for=3600)
print(late.inserted, late.id == first.id)  # False True: sent less than an hour ago
fresh = queue.insert("send_digest", {"user": 7, "items": 5}, unique_key="digest:7")
print(fresh.inserted)  # True: without unique_for, a finished job holds no key
