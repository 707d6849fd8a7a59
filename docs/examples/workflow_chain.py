"""A chain: resize, then upload, then notify; each step reads the one before."""

from pathlib import Path

from dbjobq import JobContext, JobQueue, JobSpec, Worker

for old in Path().glob("workflow_chain.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///workflow_chain.db")


@queue.handler("resize")
def resize(ctx: JobContext) -> dict[str, str]:
    return {"file": ctx.payload["file"].replace(".png", "-small.png")}


@queue.handler("upload")
def upload(ctx: JobContext) -> dict[str, str]:
    [resized] = ctx.parent_results.values()  # the result of the step before
    return {"url": f"https://cdn.example.com/{resized['file']}"}


@queue.handler("notify")
def notify(ctx: JobContext) -> str:
    [uploaded] = ctx.parent_results.values()
    return f"told {ctx.payload['user']} about {uploaded['url']}"


resize_id, upload_id, notify_id = queue.chain(
    [
        JobSpec(type="resize", payload={"file": "cat.png"}),
        JobSpec(type="upload"),
        JobSpec(type="notify", payload={"user": "ada"}),
    ]
)
print(queue.get_job(upload_id).status)  # waiting
Worker(queue).run_until_empty()
print(queue.get_job(notify_id).result)  # told ada about https://cdn.example.com/cat-small.png
