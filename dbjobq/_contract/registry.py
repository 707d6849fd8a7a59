"""The worker registry, and the storage clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dbjobq._contract.helpers import worker_info
from dbjobq.storage.base import Storage

__all__ = ["RegistryContract"]


class RegistryContract:
    """The worker registry, and the storage clock: tests that take the `storage` fixture."""

    # -- the worker registry ----------------------------------------------------------------

    def test_workers_register_update_and_leave(self, storage: Storage) -> None:
        storage.save_worker(worker_info("w2"))
        storage.save_worker(worker_info("w1"))
        storage.save_worker(worker_info("w1", current_job="job-9", jobs_processed=7))
        found = storage.list_workers(seen_within=3600)
        assert [w.id for w in found] == ["w1", "w2"]
        w1 = found[0]
        assert (w1.hostname, w1.pid, w1.queues, w1.types) == (
            "host-1",
            42,
            ("default", "mail"),
            ("a", "b"),
        )
        assert (w1.current_job, w1.jobs_processed) == ("job-9", 7)
        assert w1.started_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
        assert w1.last_seen is not None and w1.last_seen.utcoffset() == timedelta(0)
        storage.remove_worker("w2")
        storage.remove_worker("never-there")
        assert [w.id for w in storage.list_workers(seen_within=3600)] == ["w1"]

    def test_workers_not_seen_recently_are_left_out_and_pruned(self, storage: Storage) -> None:
        storage.save_worker(worker_info("w1"))
        assert storage.list_workers(seen_within=-1) == []
        assert storage.prune_workers(older_than=3600) == 0
        assert storage.prune_workers(older_than=-1) == 1
        assert storage.list_workers(seen_within=3600) == []

    def test_now_is_aware_utc_and_close_to_real_time(self, storage: Storage) -> None:
        now = storage.now()
        assert now.utcoffset() == timedelta(0)
        assert abs(now - datetime.now(timezone.utc)) < timedelta(minutes=5)
