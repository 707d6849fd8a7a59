"""Why isn't my job running? `queue.explain(id)` gives the reasons; `diagnose` checks it all."""

from pathlib import Path

from dbjobq import Concurrency, JobContext, JobQueue, Worker
from dbjobq.doctor import diagnose

for old in Path().glob("explaining.db*"):  # start from an empty file, for the output below
    old.unlink()
queue = JobQueue("sqlite:///explaining.db")


@queue.handler("sync_account", concurrency=Concurrency(1, key=lambda p: p["account"]))
def sync_account(ctx: JobContext) -> None:
    if ctx.job.id == first:  # while it runs, it holds the key of account 42
        held = queue.explain(second)
        print("concurrency_full" in held.codes)  # True
        print(held.reasons[-1].detail["key"])  # sync_account:42


first = queue.enqueue("sync_account", {"account": 42})
second = queue.enqueue("sync_account", {"account": 42})
later = queue.enqueue("sync_account", {"account": 7}, delay=300)

print(queue.explain(first).codes)  # ('no_worker',): no worker runs yet
print(queue.explain(later).codes)  # ('scheduled', 'no_worker')
queue.pause("default")
print(queue.explain(second).codes)  # ('queue_paused', 'no_worker', 'behind')
print(queue.explain(second).text)  # about four lines:
# job <id> (sync_account, queue default) is pending:
#   - its queue default is paused (resume it: dbjobq resume default)
#   - no live worker takes jobs from queue default
#   - waiting behind 1 due job(s) of queue default in claim order
print([finding.code for finding in diagnose(queue.storage, queue.registry)])
# ['no_worker', 'paused_backlog']
queue.resume("default")

print(Worker(queue).run_until_empty())  # 2
print(
    queue.explain(second).reasons[0].text
)  # e.g. completed at 2026-12-01 16:30:00 after 1 attempt
print(queue.explain(second).to_dict()["reasons"][0]["code"])  # finished
