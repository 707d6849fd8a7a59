"""Periodic schedules: one job per tick."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dbjobq._contract.helpers import make_job
from dbjobq.storage.base import Storage

__all__ = ["PeriodicContract"]


class PeriodicContract:
    """Periodic schedules: tests that take the `storage` fixture."""

    # -- periodic ticks -----------------------------------------------------------------------

    def test_a_tick_is_enqueued_once(self, storage: Storage) -> None:
        tick = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
        assert storage.last_tick("nightly") is None
        assert storage.enqueue_tick("nightly", tick, make_job("report"))
        assert not storage.enqueue_tick("nightly", tick, make_job("report"))
        assert not storage.enqueue_tick("nightly", tick - timedelta(days=1), make_job("report"))
        assert storage.last_tick("nightly") == tick
        assert storage.enqueue_tick("nightly", tick + timedelta(days=1), make_job("report"))
        assert storage.enqueue_tick("hourly", tick, make_job("report"))  # schedules are apart
        assert len(storage.list_jobs()) == 3
