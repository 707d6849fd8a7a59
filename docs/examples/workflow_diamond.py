"""A diamond: A feeds B and C, and D joins them; a failure cancels what depends on it."""

from pathlib import Path

from dbjobq import JobContext, JobQueue, JobValidationError, Worker

for old in Path().glob("workflow_diamond.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///workflow_diamond.db")


@queue.handler("number")
def number(ctx: JobContext) -> int:
    parents = [r for r in ctx.parent_results.values() if r is not None]
    return int(ctx.payload["n"]) + sum(parents)


@queue.handler("broken", max_retries=0)
def broken(ctx: JobContext) -> None:
    raise JobValidationError("the input is wrong")


a = queue.enqueue("number", {"n": 1})
b = queue.enqueue("number", {"n": 10}, depends_on=[a])
c = queue.enqueue("number", {"n": 100}, depends_on=[a])
d = queue.enqueue("number", {"n": 1000}, depends_on=[b, c])
print(queue.explain(d).reasons[0].text)
# waiting for 2 of 2 parent(s) to finish: <id> (waiting), <id> (waiting)
Worker(queue).run_until_empty()
print(queue.get_job(d).result)  # 1112: 1000 + (10 + 1) + (100 + 1)

bad = queue.enqueue("broken")
after = queue.enqueue("number", {"n": 1}, depends_on=[bad])
anyway = queue.enqueue("number", {"n": 2}, depends_on=[bad], on_parent_failure="run")
Worker(queue).run_until_empty()
print(queue.get_job(after).status, queue.get_job(after).last_error)
# cancelled parent <id> failed
print(queue.get_job(anyway).result)  # 2: a failed parent's result is None
