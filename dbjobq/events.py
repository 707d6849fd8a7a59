"""Events: hooks that run when a worker or a job changes state.

```python
@queue.on("job:failed")
def alert(event: Event) -> None:
    if not event.will_retry:
        page_someone(event.job.id, event.error)
```

Hooks registered with `JobQueue.on` run for every worker of that queue; those
registered with `Worker.on` for one worker. They run synchronously in the worker's
thread, after the change was recorded, so keep them short. A hook that raises is
logged and ignored: it never breaks the worker or changes the job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from dbjobq.errors import ConfigurationError
from dbjobq.job import Job

__all__ = ["EVENTS", "Event", "Hook", "Hooks"]

logger = logging.getLogger(__name__)

EVENTS = (
    "worker:started",
    "worker:stopped",
    "worker:error",
    "job:claimed",
    "job:started",
    "job:completed",
    "job:failed",
    "job:retried",
    "job:snoozed",
)
"""The event names, in the order a job meets them.

* `worker:started`, `worker:stopped`: the worker's thread began and ended.
* `worker:error`: polling or recording an outcome failed (the storage was
  unreachable); `error` says why. The worker carries on.
* `job:claimed`: the worker holds the job; its handler has not started.
* `job:started`: the handler was called.
* `job:completed`: the outcome was recorded; `result` holds the return value.
* `job:failed`: a failed attempt was recorded; `will_retry` tells whether the job
  goes back to pending (then `retry_in` says when) or failed for good.
* `job:retried`: follows `job:failed` when `will_retry` is true.
* `job:snoozed`: the handler raised `Snooze`; the job is pending again, due in
  `retry_in` seconds, its attempt not counted.
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What happened, handed to every hook."""

    name: str
    """One of `EVENTS`."""
    worker_id: str
    """The worker it happened in."""
    job: Job | None = None
    """The job, as claimed (`None` for worker events)."""
    result: Any = None
    """The handler's return value (`job:completed`)."""
    error: str | None = None
    """The error's summary line (`job:failed`, `worker:error`)."""
    will_retry: bool | None = None
    """Whether the job will be retried (`job:failed`, `job:retried`)."""
    retry_in: float | None = None
    """Seconds until the retry (`job:failed`, `job:retried`) or the end of a snooze
    (`job:snoozed`)."""
    duration: float | None = None
    """Seconds the handler ran (`job:completed`, `job:failed`, `job:snoozed`)."""


Hook = Callable[[Event], Any]
H = TypeVar("H", bound=Hook)


class Hooks:
    """Hooks by event name."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {}

    def on(self, name: str, hook: H) -> H:
        """Register `hook` for event `name`; returns it, to work as a decorator."""
        if name not in EVENTS:
            raise ConfigurationError(f"unknown event {name!r}; known: {', '.join(EVENTS)}")
        if not callable(hook):
            raise ConfigurationError(f"hook for {name!r} is not callable")
        self._hooks.setdefault(name, []).append(hook)
        return hook

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def emit(self, event: Event) -> None:
        """Run the hooks for `event`; one that raises is logged and skipped."""
        for hook in self._hooks.get(event.name, ()):
            try:
                hook(event)
            except Exception:
                logger.exception("hook %r for %s raised; ignored", hook, event.name)
