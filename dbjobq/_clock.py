"""The one place where dbjobq reads the host's wall clock.

Leases and schedules never use it: SQL backends take "now" from the database, so hosts
with skewed clocks agree. The host clock only seeds job ids, bounds `run_at` values at
enqueue, decides which enqueued jobs wake idle workers, and is `MemoryStorage`'s
default clock. Tests move it with `skew` to prove that a wrong host clock changes
none of the guarantees (libfaketime cannot be used: it hangs `threading.Event.wait`).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

skew = 0.0
"""Seconds added to every wall-clock reading (tests only)."""


def now() -> datetime:
    """The host's current time, as an aware UTC datetime."""
    return datetime.now(timezone.utc) + timedelta(seconds=skew)


def time_ns() -> int:
    """The host's current time in nanoseconds since the epoch."""
    return time.time_ns() + int(skew * 1e9)
