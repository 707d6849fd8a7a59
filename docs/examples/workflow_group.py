"""A group: fetch pages side by side, then merge them once the last one is in."""

from pathlib import Path

from dbjobq import JobContext, JobQueue, JobSpec, Worker

for old in Path().glob("workflow_group.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///workflow_group.db")


@queue.handler("fetch")
def fetch(ctx: JobContext) -> int:
    return len(ctx.payload["url"])  # stands for the page's size


@queue.handler("merge")
def merge(ctx: JobContext) -> int:
    return sum(ctx.parent_results.values())  # every member's result, by job id


urls = [f"https://example.com/page/{n}" for n in range(100)]
group = queue.group(
    [JobSpec(type="fetch", payload={"url": url}) for url in urls],
    then=JobSpec(type="merge"),
)
print(len(group.job_ids), queue.get_group(group.id).counts)
# 100 {<JobStatus.PENDING: 'pending'>: 100}
workers = [Worker(queue, poll_interval=0.05) for _ in range(4)]
for worker in workers:
    worker.start()
assert group.callback_id is not None
merged = queue.wait(group.callback_id, timeout=60)
for worker in workers:
    worker.stop()
print(merged.status, merged.result)  # completed 2690
status = queue.get_group(group.id)
print(status.completed, status.finished)  # 100 True
