"""Enqueue in your own transaction: no job for a signup that was rolled back."""

from pathlib import Path

import sqlalchemy as sa

from dbjobq import JobQueue

for old in Path().glob("transactional.db*"):  # start from an empty file, for the output below
    old.unlink()
engine = sa.create_engine("sqlite:///transactional.db")
users = sa.Table("users", sa.MetaData(), sa.Column("name", sa.String, primary_key=True))
users.create(engine)

queue = JobQueue(engine)  # the job tables live next to your own
queue.initialize()  # create them at start-up, outside any transaction


def sign_up(name: str, fail: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(users.insert().values(name=name))
        queue.enqueue("send_welcome", {"name": name}, connection=conn)
        if fail:
            raise RuntimeError("something later in the request failed")


sign_up("ada")
try:
    sign_up("bob", fail=True)
except RuntimeError:
    pass

print([job.payload["name"] for job in queue.list_jobs()])  # ['ada']
assert [job.payload["name"] for job in queue.list_jobs()] == ["ada"]
