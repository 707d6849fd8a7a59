"""Concurrent callers: claims never shared, one job per unique key or tick."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timezone

from dbjobq._contract.helpers import make_job
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["ConcurrencyContract"]


class ConcurrencyContract:
    """Concurrent callers: tests that take the `storage` fixture."""

    concurrency_threads: int = 8
    """Threads used by the concurrency tests; lower it for slow backends."""

    # -- concurrency ------------------------------------------------------------------------

    def test_concurrent_claims_never_share_a_job(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        """Threads start together and claim until empty: each job is claimed once.

        Half of the threads go through `other_storage`.
        """
        total = 200
        storage.enqueue([make_job() for _ in range(total)])
        barrier = threading.Barrier(self.concurrency_threads)
        claimed: list[str] = []
        errors: list[BaseException] = []

        def work(n: int) -> None:
            mine = storage if n % 2 else other_storage
            try:
                barrier.wait()
                while jobs := mine.claim(
                    queues=["default"], worker_id=f"w{n}", lease_seconds=60, limit=3
                ):
                    for job in jobs:
                        claimed.append(job.id)
                        assert mine.complete(job.id, job.lease_token or "", result=n)
            except BaseException as error:
                errors.append(error)

        threads = [
            threading.Thread(target=work, args=(n,)) for n in range(self.concurrency_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(claimed) == total
        assert max(Counter(claimed).values()) == 1
        assert storage.count_jobs() == {("default", JobStatus.COMPLETED): total}

    def test_concurrent_enqueues_of_one_unique_key_make_one_job(self, storage: Storage) -> None:
        barrier = threading.Barrier(self.concurrency_threads)
        ids: list[str] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                barrier.wait()
                ids.extend(storage.enqueue([make_job(unique_key="only-one")]))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=produce) for _ in range(self.concurrency_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(ids)) == 1
        assert [j.id for j in storage.list_jobs()] == [ids[0]]

    def test_concurrent_callers_enqueue_one_job_per_tick(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
        barrier = threading.Barrier(self.concurrency_threads)
        won: list[bool] = []
        errors: list[BaseException] = []

        def race(n: int) -> None:
            mine = storage if n % 2 else other_storage
            try:
                barrier.wait()
                won.append(mine.enqueue_tick("race", tick, make_job("t")))
            except BaseException as error:
                errors.append(error)

        threads = [
            threading.Thread(target=race, args=(n,)) for n in range(self.concurrency_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(won) == [False] * (self.concurrency_threads - 1) + [True]
        assert len(storage.list_jobs()) == 1
