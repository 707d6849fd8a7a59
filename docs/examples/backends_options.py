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

for queue in (default, billing, mail, shared, scratch):
    queue.enqueue("ping")
print(sorted(sa.inspect(engine).get_table_names()))
# ['billing_jobs', 'billing_schema', 'mail_jobs', 'mail_schema', 'shared_jobs', 'shared_schema']
assert len(billing.list_jobs()) == len(mail.list_jobs()) == 1
