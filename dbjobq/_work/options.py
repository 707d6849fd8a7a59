"""A worker's options, checked: what `Worker(...)` was given, or why not."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

from dbjobq._checks import check_name
from dbjobq.errors import ConfigurationError, InvalidJobError
from dbjobq.queue import JobQueue

__all__ = ["LONGEST", "Options"]

LONGEST = 86400.0  # upper bound of intervals and leases: catches unit mistakes


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of one worker, as it runs with them (see `Worker`)."""

    queue: JobQueue
    queues: tuple[str, ...]
    types: tuple[str, ...] | None
    lifo: bool
    rescue_orphans: bool
    poll_interval: float
    max_poll_interval: float
    lease_seconds: float
    heartbeat_interval: float
    worker_id: str
    max_jobs: int | None
    prefetch: int
    concurrency: int

    @classmethod
    def checked(
        cls,
        queue: Any,
        *,
        twice: bool,
        poll_interval: float,
        max_poll_interval: float,
        queues: Iterable[str] | None,
        types: Iterable[str] | None,
        lifo: bool,
        rescue_orphans: bool,
        lease_seconds: float,
        heartbeat_interval: float | None,
        worker_id: str | None,
        max_jobs: int | None,
        prefetch: int,
        concurrency: int,
    ) -> Options:
        """The options given to `Worker`, checked and filled in.

        Raises:
            ConfigurationError: If an option is out of range (see `Worker`).
        """
        if twice:
            raise ConfigurationError("give the JobQueue once: as queue or as job_queue")
        if not isinstance(queue, JobQueue):
            raise ConfigurationError(f"Worker needs a JobQueue, got {type(queue).__name__}")
        checked_types = _checked_types(queue, types)
        _check_flags(queue, lifo, rescue_orphans)
        names = [queue.default_queue] if queues is None else list(queues)
        if isinstance(queues, str) or not names:
            raise ConfigurationError(f"queues must be a non-empty list of names, got {queues!r}")
        seconds = {
            "poll_interval": poll_interval,
            "max_poll_interval": max_poll_interval,
            "lease_seconds": lease_seconds,
            "heartbeat_interval": heartbeat_interval,
        }
        _check_options(names, worker_id, seconds, max_jobs, prefetch, concurrency)
        heartbeat_interval = heartbeat_interval or lease_seconds / 3
        return cls(
            queue=queue,
            queues=tuple(dict.fromkeys(names)),
            types=checked_types,
            lifo=lifo,
            rescue_orphans=rescue_orphans,
            poll_interval=float(poll_interval),
            max_poll_interval=float(max_poll_interval),
            lease_seconds=float(lease_seconds),
            heartbeat_interval=float(heartbeat_interval),
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            max_jobs=max_jobs,
            # A storage that cannot give claimed jobs back gets one at a time.
            prefetch=prefetch if queue.storage.capabilities.release else 1,
            concurrency=concurrency,
        )


def _check_flags(queue: JobQueue, lifo: bool, rescue_orphans: bool) -> None:
    for what, flag in (("lifo", lifo), ("rescue_orphans", rescue_orphans)):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{what} must be True or False, got {flag!r}")
    if lifo and not queue.storage.capabilities.newest_first:
        raise ConfigurationError(
            f"lifo=True needs a storage whose claim() takes newest_first; "
            f"{type(queue.storage).__name__}.claim does not"
        )


def _check_options(
    names: list[str],
    worker_id: str | None,
    seconds: dict[str, float | None],
    max_jobs: int | None,
    prefetch: int,
    concurrency: int,
) -> None:
    """Raise `ConfigurationError` for an option out of range."""
    try:
        for name in names:
            check_name(name, "queue name")
        if worker_id is not None:
            check_name(worker_id, "worker_id")
    except InvalidJobError as error:
        raise ConfigurationError(str(error)) from None
    for what, value in seconds.items():
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 < value <= LONGEST
        ):
            raise ConfigurationError(
                f"{what} must be a positive number of seconds (at most a day), got {value!r}"
            )
    # Numbers now (only heartbeat_interval may be None).
    poll, most, lease, beat = (float(value or 0) for value in seconds.values())
    if most < poll:
        raise ConfigurationError("max_poll_interval must not be less than poll_interval")
    if (beat or lease / 3) >= lease:
        raise ConfigurationError("heartbeat_interval must be shorter than lease_seconds")
    if max_jobs is not None and (
        isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1
    ):
        raise ConfigurationError(f"max_jobs must be a positive int, got {max_jobs!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigurationError(f"prefetch must be a positive int, got {prefetch!r}")
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= 1000
    ):
        raise ConfigurationError(f"concurrency must be an int from 1 to 1000, got {concurrency!r}")


def _checked_types(queue: JobQueue, types: Iterable[str] | None) -> tuple[str, ...] | None:
    if types is None:
        return None
    names = [] if isinstance(types, str) else list(types)
    if not names or not all(isinstance(name, str) for name in names):
        raise ConfigurationError(f"types must be a non-empty list of job types, got {types!r}")
    handled = queue.registry.types()
    unknown = sorted(set(names) - set(handled))
    if unknown:
        known = ", ".join(sorted(handled)) or "none"
        raise ConfigurationError(
            f"types {unknown} have no handler on this JobQueue (it has: {known})"
        )
    return tuple(dict.fromkeys(names))
