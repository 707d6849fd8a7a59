"""Choosing and configuring a backend."""

import sqlalchemy as sa

from dbjobq import JobQueue
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage

# The default: a SQLite file in the working directory.
default = JobQueue()  # same as JobQueue("sqlite:///jobs.db")

# Table names are configurable, so several queues can share one database.
billing = JobQueue(SQLAlchemyStorage("sqlite:///app.db", table_prefix="billing_"))
mail = JobQueue(SQLAlchemyStorage("sqlite:///app.db", table_prefix="mail_"))

# An engine of your own works too (pool settings, echo, ...).
engine = sa.create_engine("sqlite:///app.db")
shared = JobQueue(SQLAlchemyStorage(engine, table_prefix="shared_"))

# In memory, for tests and scripts.
scratch = JobQueue(MemoryStorage())

billing_job, mail_job = billing.enqueue("ping"), mail.enqueue("ping")
for queue in (default, shared, scratch):
    queue.enqueue("ping")
print(sorted(sa.inspect(engine).get_table_names()))
# ['billing_dependencies', 'billing_groups', 'billing_jobs', 'billing_paused_queues',
#  'billing_periodic', 'billing_rate_starts', 'billing_schema', 'billing_workers',
#  'mail_dependencies', 'mail_groups', 'mail_jobs', 'mail_paused_queues', 'mail_periodic',
#  'mail_rate_starts', 'mail_schema', 'mail_workers', 'shared_dependencies',
#  'shared_groups', 'shared_jobs', 'shared_paused_queues', 'shared_periodic',
#  'shared_rate_starts', 'shared_schema', 'shared_workers']: eight tables per prefix
billing_ids = {job.id for job in billing.list_jobs(limit=None)}
assert billing_job in billing_ids and mail_job not in billing_ids  # each sees its own jobs
