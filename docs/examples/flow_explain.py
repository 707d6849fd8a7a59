"""What `explain` says about jobs that limits hold back."""

from pathlib import Path

from dbjobq import Concurrency, JobContext, JobQueue, RateLimit, Worker

for old in Path().glob("flow_explain.db*"):  # start from an empty file
    old.unlink()
queue = JobQueue("sqlite:///flow_explain.db")


@queue.handler("sync_account", concurrency=Concurrency(1, key=lambda p: p["account"]))
def sync_account(ctx: JobContext) -> None:
    if ctx.payload.get("look"):  # while this one runs, it holds the key of account 42
        print(queue.explain(waiting).text)  # about three lines:
        # job <id> (sync_account, queue default) is pending:
        #   - every live worker that takes it (1) is running a job: it starts when ...
        #   - held by concurrency key sync_account:42 (limit 1; running: job <id> since ...)
        print(queue.explain(waiting).reasons[-1].code)  # concurrency_full


@queue.handler("call_partner", rate_limit=RateLimit(2, per=3600))
def call_partner(ctx: JobContext) -> None: ...


queue.enqueue("sync_account", {"account": 42, "look": True})
waiting = queue.enqueue("sync_account", {"account": 42})
for _ in range(3):
    last = queue.enqueue("call_partner")
worker = Worker(queue, types=["sync_account"])
worker.run_until_empty()

Worker(queue, types=["call_partner"]).run_until_empty()  # two start, the third waits
print(queue.explain(last).codes)  # ('rate_limited',)
print(queue.explain(last).reasons[0].text)
# rate limit call_partner (2 per 3600s) is full until ... (in 60m)
