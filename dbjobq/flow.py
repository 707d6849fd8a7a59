"""Flow control: concurrency limits, rate limits and snoozing.

```python
from dbjobq import Concurrency, RateLimit, Snooze

@queue.handler("sync_account", concurrency=Concurrency(1, key=lambda p: p["account"]))
def sync_account(ctx: JobContext) -> None: ...

@queue.handler("call_partner", rate_limit=RateLimit(10, per=1.0))
def call_partner(ctx: JobContext) -> None:
    if partner_is_busy():
        raise Snooze(30)  # back to pending, due in 30 s; the attempt does not count
```

Limits are the handler's: the worker that claims a job applies its own handler's
`Concurrency` and `RateLimit`, and the storage enforces them in the claim itself,
so they hold across every thread, process and host on the database. A job held
back stays `pending` and uses no attempt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from dbjobq._checks import KEY_MAX, check_int, check_name, check_seconds
from dbjobq.errors import ConfigurationError, InvalidJobError

__all__ = ["Concurrency", "KeyFunction", "Limits", "RateLimit", "Snooze"]

logger = logging.getLogger("dbjobq.flow")

KeyFunction = Callable[[dict[str, Any]], "str | int"]
"""A function of a job's payload that returns its key (a `str` or an `int`)."""


def _check_key_function(key: object, what: str) -> None:
    if key is not None and not callable(key):
        raise ConfigurationError(f"{what} key must be a function of the payload or None")


def _keyed(job_type: str, key: KeyFunction | None, payload: dict[str, Any], what: str) -> str:
    """`job_type`, or `job_type:<key(payload)>`; `InvalidJobError` if the key is bad."""
    if key is None:
        return job_type
    try:
        value = key(payload)
    except Exception as error:
        raise InvalidJobError(
            f"the {what} key function of {job_type!r} raised {type(error).__name__}: {error}"
        ) from error
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidJobError(
            f"the {what} key function of {job_type!r} must return a str or an int, "
            f"got {type(value).__name__}"
        )
    return check_name(f"{job_type}:{value}", f"{what} key", KEY_MAX)


@dataclasses.dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `limit` jobs with the same concurrency key run at any instant.

    Counted over every worker, process and host on the database. A job's key is
    the `concurrency_key` it was enqueued with; else `"<type>:<key(payload)>"`
    with a `key` function; else its type: the limit then holds for the type as a
    whole. Two types share a limit only through an explicit `concurrency_key`.

    A slot is held by the running job's lease: completing, failing, releasing,
    snoozing and a rescued (expired) lease free it.

    Args:
        limit: How many jobs of one key may run at once (1 to 10,000).
        key: A function of the payload giving the key (`str` or `int`), or `None`.
        ordered: Strict order within a key: a job starts only once every job of
            its key enqueued before it has finished. Needs `limit=1`.

    Raises:
        ConfigurationError: If an argument is invalid.
    """

    limit: int
    key: KeyFunction | None = None
    ordered: bool = False

    def __post_init__(self) -> None:
        try:
            check_int(self.limit, "Concurrency limit", 1, 10_000)
        except InvalidJobError as error:
            raise ConfigurationError(str(error)) from None
        _check_key_function(self.key, "Concurrency")
        if not isinstance(self.ordered, bool):
            raise ConfigurationError("Concurrency ordered must be True or False")
        if self.ordered and self.limit != 1:
            raise ConfigurationError(
                "Concurrency(ordered=True) needs limit=1: a later job of a key starts "
                "only once the earlier ones have finished"
            )

    def key_of(self, job_type: str, payload: dict[str, Any]) -> str:
        """The key of a job of `job_type` with `payload` that was enqueued without one.

        Raises:
            InvalidJobError: If the key function raises or returns a bad key.
        """
        return _keyed(job_type, self.key, payload, "concurrency")


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` jobs of a type (per key, with `key`) start in any `per` seconds.

    Counted over every worker, process and host on the database, as a sliding
    window: a start is remembered for `per` seconds. A job's rate key is its type,
    or `"<type>:<key(payload)>"` with a `key` function. A claim counts as a start.

    Args:
        count: Starts allowed per window (1 to 100,000).
        per: The window, in seconds (more than zero, at most a day).
        key: A function of the payload giving the key (`str` or `int`), or `None`.

    Raises:
        ConfigurationError: If an argument is invalid.
    """

    count: int
    per: float = 1.0
    key: KeyFunction | None = None

    def __post_init__(self) -> None:
        try:
            check_int(self.count, "RateLimit count", 1, 100_000)
            per = check_seconds(self.per, "RateLimit per", allow_zero=False)
        except InvalidJobError as error:
            raise ConfigurationError(str(error)) from None
        if per > 86400:
            raise ConfigurationError("RateLimit per must be at most a day (86400 seconds)")
        object.__setattr__(self, "per", per)
        _check_key_function(self.key, "RateLimit")

    def key_of(self, job_type: str, payload: dict[str, Any]) -> str:
        """The rate key of a job of `job_type` with `payload`.

        Raises:
            InvalidJobError: If the key function raises or returns a bad key.
        """
        return _keyed(job_type, self.key, payload, "rate limit")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The limits that the jobs of one type start under (what `Storage.claim` gets)."""

    concurrency: Concurrency | None = None
    """The concurrency limit, or `None`."""
    rate_limit: RateLimit | None = None
    """The rate limit, or `None`."""

    def concurrency_key(self, job_type: str, stored: str | None, payload: dict[str, Any]) -> str:
        """The concurrency key a claim counts a job under.

        Its stored key, else the one `Concurrency.key_of` gives. A key function that
        fails at claim time (the job was enqueued where the handler was unknown)
        falls back to the type's key, the strictest: the job is held back, never
        run beyond the limit.
        """
        if stored is not None:
            return stored
        assert self.concurrency is not None
        try:
            return self.concurrency.key_of(job_type, payload)
        except InvalidJobError as error:
            logger.warning("%s; counting the job under the key %r", error, job_type)
            return job_type

    def rate_key(self, job_type: str, payload: dict[str, Any]) -> str:
        """The rate key a claim counts a job under (the type's, if the function fails)."""
        assert self.rate_limit is not None
        try:
            return self.rate_limit.key_of(job_type, payload)
        except InvalidJobError as error:
            logger.warning("%s; counting the job under the key %r", error, job_type)
            return job_type


LimitMap = Mapping[str, Limits]
"""Limits by job type."""


class Snooze(Exception):
    """Raise from a handler to put its job back to `pending`, due in `seconds`.

    Not a failure: the attempt does not count, the job's concurrency slot is freed,
    `last_error` is left as it was, and the worker emits `job:snoozed`. On a
    backend without `Capabilities.snooze` the snooze is recorded as a retry in
    `seconds` that counts the attempt (and a warning says so).

    Args:
        seconds: How long until the job is due again (0 to 100 years; a
            `timedelta` works too).

    Raises:
        InvalidJobError: If `seconds` is not a valid number of seconds.
    """

    def __init__(self, seconds: float | timedelta = 0.0) -> None:
        self.seconds = check_seconds(seconds, "Snooze seconds")
        super().__init__(f"snoozed for {self.seconds:g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.seconds,))


def window_full_until(starts: list[float], count: int, per: float) -> float | None:
    """When (in the same clock as `starts`) a full window has room again; `None` if not full.

    `starts` are the start times in the window, in any order.
    """
    if len(starts) < count:
        return None
    ordered = sorted(starts)
    # The window holds `count` starts until the oldest of the last `count` leaves it.
    return ordered[len(ordered) - count] + per if math.isfinite(per) else None
