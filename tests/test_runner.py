"""Per-job building blocks made cheap: the runner's latch, the storage's job builder."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timezone

import pytest

from dbjobq._work.runner import Latch
from dbjobq.job import Job, JobStatus
from dbjobq.storage._sql.rows import job_builder


def test_a_latch_opens_once_for_every_waiter() -> None:
    latch = Latch()
    assert not latch.is_set()
    assert not latch.wait(0.01)
    seen: list[bool] = []
    waiters = [threading.Thread(target=lambda: seen.append(latch.wait(10))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    latch.set()
    for waiter in waiters:
        waiter.join()
    assert seen == [True, True, True]
    assert latch.is_set() and latch.wait() and latch.wait(0)


def test_the_storage_job_builder_makes_the_same_frozen_job() -> None:
    now = datetime.now(timezone.utc)
    job = Job(
        id="j",
        type="t",
        payload={"a": 1},
        queue="q",
        priority=2,
        status=JobStatus.RUNNING,
        attempts=1,
        max_retries=3,
        run_at=now,
        created_at=now,
        updated_at=now,
        meta={"m": 1},
        lease_token="tok",
    )
    names = [field.name for field in dataclasses.fields(Job)][::-1]  # any order
    built = job_builder(names)([getattr(job, name) for name in names])
    assert built == job and built.retries_left == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.status = JobStatus.PENDING  # type: ignore[misc]
    with pytest.raises(ValueError, match="exactly the fields"):
        job_builder(names[1:])
