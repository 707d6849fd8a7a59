"""Periodic jobs: schedules, and the part of a worker that enqueues their ticks.

A schedule has ticks: the times a cron expression matches (in a time zone), or the
multiples of a fixed interval counted from 1970-01-01 UTC (so `every=3600` fires on
the hour). Each tick enqueues one job, however many workers and processes run: every
worker that handles the schedule's job type and queue offers each due tick to
`Storage.enqueue_tick`, a compare-and-set that lets exactly one of them through.

**Catch-up.** Ticks are judged on the storage's clock. A worker enqueues the most
recent tick that is due, if it is later than the last one recorded. After downtime,
the ticks that were missed are not replayed one by one: only the most recent runs,
once. A schedule seen for the first time only fires for a tick less than a minute
old, so deploying a daily schedule in the afternoon does not run the morning's tick.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dbjobq._ids import new_job_id
from dbjobq.errors import ConfigurationError, StorageError
from dbjobq.job import NewJob

if TYPE_CHECKING:
    from dbjobq.storage.base import Storage

__all__ = ["Schedule"]

logger = logging.getLogger(__name__)

FRESH = 60.0
"""Seconds: the first tick a schedule ever fires is at most this old."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _cron(expr: str, start: datetime, *, reverse: bool) -> datetime:
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ConfigurationError(
            'cron schedules need the "cronsim" package, from the "cron" extra: '
            'pip install -e ".[cron]" in a dbjobq checkout, or pip install cronsim'
        ) from None
    try:
        return next(CronSim(expr, start, reverse=reverse))
    except CronSimError as error:
        raise ConfigurationError(f"bad cron expression {expr!r}: {error}") from None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A periodic job: which job to enqueue, and when (see `JobQueue.periodic`)."""

    name: str
    """Identifies the schedule; its last tick is stored under this name."""
    type: str
    """Job type enqueued at each tick."""
    cron: str | None = None
    """A five-field cron expression, evaluated in `tz`; or `None` with `every`."""
    every: float | None = None
    """A fixed interval in seconds; or `None` with `cron`."""
    tz: str = "UTC"
    """IANA time zone for `cron` (for example `Europe/Berlin`): DST is handled."""
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Payload of every job it enqueues."""
    queue: str = "default"
    """Queue of the jobs."""
    priority: int = 0
    """Priority of the jobs."""
    max_retries: int | None = None
    """Retries of each job; `None`: the handler's when the job runs."""
    timeout: float | None = None
    """Timeout of each attempt; `None`: the handler's when the job runs."""
    unique_key: str | None = None
    """If set, a tick whose previous job is still unfinished adds no second job."""

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"schedule {self.name!r}: give either cron or every")
        if self.every is not None and not (math.isfinite(self.every) and self.every >= 1):
            raise ConfigurationError(f"schedule {self.name!r}: every must be at least 1 second")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"schedule {self.name!r}: unknown time zone {self.tz!r}"
            ) from None
        if self.cron is not None:
            _cron(self.cron, _EPOCH, reverse=False)  # fails now rather than in a worker

    def latest_tick(self, now: datetime) -> datetime:
        """The most recent tick at or before `now`."""
        if self.every is not None:
            elapsed = (now - _EPOCH).total_seconds()
            return _EPOCH + timedelta(seconds=math.floor(elapsed / self.every) * self.every)
        assert self.cron is not None
        local = now.astimezone(ZoneInfo(self.tz)) + timedelta(microseconds=1)
        return _cron(self.cron, local, reverse=True).astimezone(timezone.utc)

    def next_tick(self, now: datetime) -> datetime:
        """The first tick after `now`."""
        if self.every is not None:
            return self.latest_tick(now) + timedelta(seconds=self.every)
        assert self.cron is not None
        local = now.astimezone(ZoneInfo(self.tz))
        return _cron(self.cron, local, reverse=False).astimezone(timezone.utc)

    def job(self, tick: datetime) -> NewJob:
        """The job that `tick` enqueues."""
        return NewJob(
            id=new_job_id(),
            type=self.type,
            queue=self.queue,
            payload=dict(self.payload),
            priority=self.priority,
            max_retries=self.max_retries,
            run_at=None,
            delay=0.0,
            unique_key=self.unique_key,
            meta={"schedule": self.name, "tick": tick.isoformat()},
            timeout=self.timeout,
        )


class Ticker:
    """Offers due ticks of some schedules to the storage; one per worker."""

    def __init__(self, storage: Storage, schedules: Iterable[Schedule]) -> None:
        self.storage = storage
        self.schedules = list(schedules)
        self._offered: dict[str, datetime | None] = {}  # per schedule: last tick handled

    def run(self) -> float:
        """Enqueue what is due; return seconds until the next tick (60 at most).

        Raises:
            StorageError: If the storage cannot be reached.
        """
        if not self.schedules:
            return math.inf
        now = self.storage.now()
        wait = 60.0
        for schedule in self.schedules:
            tick = schedule.latest_tick(now)
            if schedule.name not in self._offered:
                self._offered[schedule.name] = self.storage.last_tick(schedule.name)
            last = self._offered[schedule.name]
            wait = min(wait, (schedule.next_tick(now) - now).total_seconds())
            if last is not None and tick <= last:
                continue
            self._offered[schedule.name] = tick
            if last is None and (now - tick).total_seconds() > FRESH:
                continue  # first sight of a stale tick: wait for the next one
            try:
                if self.storage.enqueue_tick(schedule.name, tick, schedule.job(tick)):
                    logger.info("schedule %s: enqueued the tick of %s", schedule.name, tick)
            except StorageError:
                self._offered[schedule.name] = last  # try this tick again next time
                raise
        return max(0.0, wait)
