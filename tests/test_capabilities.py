"""Capabilities: declared, derived for backends that predate them, and inherited.

Also what a backend of the old, larger contract gets: it keeps working, and the
conformance suite passes on it; and what a wrong declaration gets: an error at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import pytest

from dbjobq import JobQueue, JobSpec, Worker
from dbjobq.job import Job, JobStatus, NewJob, PendingGroup
from dbjobq.registry import WorkerInfo
from dbjobq.storage import Capabilities, MemoryStorage, Storage
from dbjobq.testing import StorageContract


class OldStyleStorage(Storage):
    """A backend of the twenty-method contract: no `capabilities`, `release` overridden.

    It keeps its work in a `MemoryStorage` and says nothing about what it offers.
    """

    claims_ahead = False

    def __init__(self) -> None:
        self.inner = MemoryStorage()

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        return self.inner.enqueue(jobs)

    def claim(self, **kwargs: Any) -> list[Job]:
        return self.inner.claim(**kwargs)

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float) -> bool:
        return self.inner.heartbeat(job_id, token, lease_seconds=lease_seconds)

    def set_progress(
        self, job_id: str, token: str, *, progress: float, message: str | None
    ) -> bool:
        return self.inner.set_progress(job_id, token, progress=progress, message=message)

    def complete(self, job_id: str, token: str, *, result: Any) -> bool:
        return self.inner.complete(job_id, token, result=result)

    def release(self, job_id: str, token: str) -> bool:
        return self.inner.release(job_id, token)

    def fail(self, job_id: str, token: str, *, error: str, retry_in: float | None) -> bool:
        return self.inner.fail(job_id, token, error=error, retry_in=retry_in)

    def rescue_expired(self, *, retry_in: float = 0.0) -> int:
        return self.inner.rescue_expired(retry_in=retry_in)

    def get(self, job_id: str) -> Job:
        return self.inner.get(job_id)

    def list_jobs(self, **kwargs: Any) -> list[Job]:
        return self.inner.list_jobs(**kwargs)

    def count_jobs(
        self, *, finished_within: float | None = None
    ) -> dict[tuple[str, JobStatus], int]:
        return self.inner.count_jobs(finished_within=finished_within)

    def pending_summary(self) -> list[PendingGroup]:
        return self.inner.pending_summary()

    def cancel(self, job_id: str) -> bool:
        return self.inner.cancel(job_id)

    def retry(self, job_id: str) -> bool:
        return self.inner.retry(job_id)

    def purge(
        self, *, statuses: Collection[JobStatus], older_than: float, limit: int | None = None
    ) -> int:
        return self.inner.purge(statuses=statuses, older_than=older_than, limit=limit)

    def enqueue_tick(self, schedule: str, tick: datetime, job: NewJob) -> bool:
        return self.inner.enqueue_tick(schedule, tick, job)

    def last_tick(self, schedule: str) -> datetime | None:
        return self.inner.last_tick(schedule)

    def save_worker(self, info: WorkerInfo) -> None:
        self.inner.save_worker(info)

    def remove_worker(self, worker_id: str) -> None:
        self.inner.remove_worker(worker_id)

    def list_workers(self, *, seen_within: float) -> list[WorkerInfo]:
        return self.inner.list_workers(seen_within=seen_within)

    def prune_workers(self, *, older_than: float) -> int:
        return self.inner.prune_workers(older_than=older_than)


class TestOldStyleStorage(StorageContract):
    """A backend written before the contract shrank passes the suite unchanged."""

    @pytest.fixture
    def storage(self) -> Storage:
        return OldStyleStorage()


class DefaultsOnly(MemoryStorage):
    """MemoryStorage with every defaulted method left to `Storage`'s default."""

    capabilities = Capabilities(release=True, rescue_workers=True, newest_first=True)
    rescue_expired = Storage.rescue_expired
    rescue_workers = Storage.rescue_workers
    prune_workers = Storage.prune_workers
    count_jobs = Storage.count_jobs
    pending_summary = Storage.pending_summary
    complete_many = Storage.complete_many
    release_many = Storage.release_many


class TestDefaultsOnly(StorageContract):
    """The defaults, built on the required methods, keep the whole contract."""

    @pytest.fixture
    def storage(self) -> Storage:
        return DefaultsOnly()


def test_an_old_backend_gets_its_capabilities_worked_out() -> None:
    assert OldStyleStorage().capabilities == Capabilities(release=True, newest_first=True)
    queue = JobQueue(OldStyleStorage())
    queue.register("quick", lambda ctx: None)
    queue.enqueue_many([JobSpec(type="quick") for _ in range(5)])
    worker = Worker(queue, prefetch=4)
    assert worker.prefetch == 4  # it can give jobs back: batches are allowed
    assert worker.run_until_empty() == 5


def test_memory_storage_declares_what_it_offers() -> None:
    assert "capabilities" in vars(MemoryStorage)
    assert MemoryStorage().capabilities == Capabilities(
        release=True,
        rescue_workers=True,
        newest_first=True,
        pauses=True,
        limits=True,
        snooze=True,
        workflows=True,
        unique_rules=True,
    )


def test_a_subclass_that_takes_a_method_away_loses_its_flag() -> None:
    class NoRelease(MemoryStorage):
        release = Storage.release
        claims_ahead = True  # asks for it, but cannot give batches back

    class NoRescue(MemoryStorage):
        rescue_workers = Storage.rescue_workers

    class OldClaim(MemoryStorage):
        def claim(self, **kwargs: Any) -> list[Job]:
            return super().claim(**kwargs)

    class Ahead(MemoryStorage):
        claims_ahead = True

    rest = {"pauses": True, "limits": True, "snooze": True, "workflows": True}
    rest.update(unique_rules=True)
    assert NoRelease().capabilities == Capabilities(rescue_workers=True, newest_first=True, **rest)
    assert NoRescue().capabilities == Capabilities(release=True, newest_first=True, **rest)
    assert OldClaim().capabilities.newest_first  # **kwargs may take it
    assert Ahead().capabilities.claims_ahead
    queue = JobQueue(NoRelease())
    assert Worker(queue, prefetch=8).prefetch == 1  # without release: one job at a time


def test_a_subclass_that_adds_an_optional_method_gains_its_flag() -> None:
    """A backend built on MemoryStorage, written before Capabilities, keeps its extras."""
    woken: list[str] = []

    class Notifying(MemoryStorage):
        def subscribe(self, callback: Callable[[], None]) -> Callable[[], None] | None:
            woken.append("subscribed")
            return lambda: woken.append("ended")

    class Joining(MemoryStorage):
        def enqueue_in_transaction(
            self,
            connection: Any,
            jobs: Sequence[NewJob],
            *,
            on_commit: Callable[[], None] | None = None,
        ) -> list[str]:
            connection.append([job.id for job in jobs])
            return self.enqueue(jobs)

    assert Notifying().capabilities == Capabilities(
        release=True,
        rescue_workers=True,
        newest_first=True,
        notify=True,
        pauses=True,
        limits=True,
        snooze=True,
        workflows=True,
        unique_rules=True,
    )
    assert Joining().capabilities.transactions
    assert not Joining().capabilities.notify

    queue = JobQueue(Notifying())
    queue.register("noop", lambda ctx: None)
    worker = Worker(queue, poll_interval=0.01)
    worker.start()
    assert worker.stop(timeout=5)
    assert woken == ["subscribed", "ended"]  # the worker listened through subscribe()

    joined: list[list[str]] = []
    job_id = JobQueue(Joining()).enqueue("noop", connection=joined)
    assert joined == [[job_id]]


def test_a_subclass_without_newest_first_loses_that_flag() -> None:
    class OldClaim(MemoryStorage):
        def claim(  # type: ignore[override]
            self, *, queues: Sequence[str], worker_id: str, lease_seconds: float, limit: int = 1
        ) -> list[Job]:
            return super().claim(
                queues=queues, worker_id=worker_id, lease_seconds=lease_seconds, limit=limit
            )

    assert not OldClaim().capabilities.newest_first
    assert OldClaim().capabilities.release


def test_a_missing_required_method_is_named_at_construction() -> None:
    class Partial(Storage):
        def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
            return []

    with pytest.raises(TypeError, match="claim") as info:
        Partial()  # type: ignore[abstract]
    assert "list_workers" in str(info.value)
    assert "count_jobs" not in str(info.value)  # defaulted, not required


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"release": True}, "release()"),
        ({"notify": True}, "subscribe()"),
        ({"transactions": True}, "enqueue_in_transaction()"),
        ({"claims_ahead": True}, "release=True"),
    ],
)
def test_a_declared_flag_without_its_method_is_refused(flags: dict[str, bool], named: str) -> None:
    with pytest.raises(TypeError, match=r"declares Capabilities\(") as info:

        class Claims(OldStyleStorage):
            capabilities = Capabilities(**flags)
            release = Storage.release

    assert named in str(info.value)


def test_newest_first_needs_the_parameter() -> None:
    with pytest.raises(TypeError, match="newest_first: bool = False"):

        class Lifo(OldStyleStorage):
            capabilities = Capabilities(newest_first=True)

            def claim(  # type: ignore[override]
                self, *, queues: Sequence[str], worker_id: str, lease_seconds: float
            ) -> list[Job]:
                return []


def test_rescue_workers_may_be_declared_on_the_default() -> None:
    class Rescuing(OldStyleStorage):
        capabilities = Capabilities(release=True, rescue_workers=True)

    assert Rescuing().capabilities.rescue_workers


@pytest.mark.parametrize(
    "statement",
    ["import dbjobq.testing", "from dbjobq.storage import Storage", "import dbjobq"],
)
def test_importing_leaves_sqlalchemy_unloaded(statement: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        {statement}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")
        assert not loaded, loaded
        assert "dbjobq.storage.sqlalchemy_storage" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sqlalchemy_storage_is_still_exported_from_dbjobq_storage() -> None:
    import dbjobq.storage as package
    from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

    assert package.SQLAlchemyStorage is SQLAlchemyStorage
    assert "SQLAlchemyStorage" in package.__all__
    assert "SQLAlchemyStorage" in dir(package)
    with pytest.raises(AttributeError, match="NoSuchStorage"):
        package.NoSuchStorage  # noqa: B018
