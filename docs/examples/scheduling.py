"""Delays and run_at: a job is not claimed before it is due (on the database's clock)."""

from datetime import datetime, timedelta, timezone

from dbjobq import JobQueue, Worker

queue = JobQueue("sqlite:///scheduling.db")
queue.register("remind", lambda ctx: "reminded")

later = queue.enqueue("remind", delay=timedelta(hours=1))
tomorrow = queue.enqueue("remind", run_at=datetime.now(timezone.utc) + timedelta(days=1))
now = queue.enqueue("remind")

assert Worker(queue).run_until_empty() == 1  # only the job that is due ran
print([queue.get_job(i).status.value for i in (later, tomorrow, now)])
# ['pending', 'pending', 'completed']
job = queue.get_job(later)
print(job.run_at - job.created_at)  # about 1:00:00
assert timedelta(minutes=59) < job.run_at - job.created_at < timedelta(minutes=61)
