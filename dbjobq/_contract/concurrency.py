"""Concurrent callers: claims never shared, one job per unique key or tick."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

from dbjobq._contract.helpers import make_job
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["ConcurrencyContract", "run_together"]


def run_together(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(n)` for n in range(count), each in a thread; all start at once.

    Returns what the threads raised (nothing, when all went well).
    """
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            work(n)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


class ConcurrencyContract:
    """Concurrent callers: tests that take the `storage` fixture."""

    concurrency_threads: int = 8
    """Threads used by the concurrency tests; lower it for slow backends."""

    def test_concurrent_claims_never_share_a_job(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """Threads start together and claim until empty: each job is claimed once.

        Half of the threads go through `other_storage`.
        """
        total = 200
        storage.enqueue([make_job() for _ in range(total)])
        claimed: list[str] = []

        def work(n: int) -> None:
            mine = storage if n % 2 else other_storage
            while jobs := mine.claim(
                queues=["default"], worker_id=f"w{n}", lease_seconds=60, limit=3
            ):
                for job in jobs:
                    claimed.append(job.id)
                    assert mine.complete(job.id, job.lease_token or "", result=n)

        assert run_together(self.concurrency_threads, work) == []
        assert len(claimed) == total
        assert max(Counter(claimed).values()) == 1
        assert storage.count_jobs() == {("default", JobStatus.COMPLETED): total}

    def test_concurrent_enqueues_of_one_unique_key_make_one_job(self, storage: Storage) -> None:
        ids: list[str] = []

        def produce(n: int) -> None:
            ids.extend(storage.enqueue([make_job(unique_key="only-one")]))

        assert run_together(self.concurrency_threads, produce) == []
        assert len(set(ids)) == 1
        assert [j.id for j in storage.list_jobs()] == [ids[0]]

    def test_concurrent_callers_enqueue_one_job_per_tick(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
        won: list[bool] = []

        def race(n: int) -> None:
            mine = storage if n % 2 else other_storage
            won.append(mine.enqueue_tick("race", tick, make_job("t")))

        assert run_together(self.concurrency_threads, race) == []
        assert sorted(won) == [False] * (self.concurrency_threads - 1) + [True]
        assert len(storage.list_jobs()) == 1
