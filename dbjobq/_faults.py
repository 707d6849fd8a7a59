"""Named fault points, for tests that must hit a crash window on purpose.

Library code calls `reach("name")` at a few places where a crash or an error is
interesting; nothing happens unless a test armed that point in this process:

```python
from dbjobq import _faults
_faults.arm("after_outcome", "kill")   # SIGKILL this process right after a commit
```

Points: `after_claim` (a job is claimed, its handler not started), `heartbeat` (just
before a lease renewal), `before_outcome` and `after_outcome` (around the write that
records a job's outcome).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from dbjobq.errors import StorageError

POINTS = ("after_claim", "heartbeat", "before_outcome", "after_outcome")

_lock = threading.Lock()
_armed: dict[str, tuple[int, Callable[[], None]]] = {}
_hits: dict[str, int] = {}


def _kill() -> None:
    # The process dies here, before any coverage data could be written: a test runs it
    # in a subprocess and checks the signal it died of.
    os.kill(os.getpid(), signal.SIGKILL)  # pragma: no cover


def _fail() -> None:
    raise StorageError("injected fault")


def arm(point: str, action: str | Callable[[], None], *, on_hit: int = 1) -> None:
    """Make `point` run `action` the `on_hit`-th time it is reached from now on.

    Args:
        point: One of `POINTS`.
        action: `"kill"` (SIGKILL this process), `"fail"` (raise `StorageError`), or
            any callable.
        on_hit: Which hit fires the action, counting from 1.
    """
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
    run = {"kill": _kill, "fail": _fail}.get(action) if isinstance(action, str) else action
    if run is None:
        raise ValueError(f"unknown fault action {action!r}")
    with _lock:
        _hits[point] = 0
        _armed[point] = (on_hit, run)


def disarm() -> None:
    """Disarm every point."""
    with _lock:
        _armed.clear()
        _hits.clear()


def reach(point: str) -> None:
    """Called by library code at `point`; fires the armed action on its hit."""
    if not _armed:  # the common case: one dict truth test
        return
    with _lock:
        if point not in _armed:
            return
        _hits[point] += 1
        on_hit, run = _armed[point]
        if _hits[point] != on_hit:
            return
        del _armed[point]
    run()
