"""Argument checks shared by the queue and the worker; each raises `InvalidJobError`."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from dbjobq.errors import InvalidJobError

NAME_MAX = 200
"""Longest job type, queue name or worker id."""
KEY_MAX = 255
"""Longest unique key."""
MAX_DELAY = 100 * 365.25 * 86400
"""Longest accepted delay (100 years), so every backend can store the due time."""


def check_name(value: Any, what: str, limit: int = NAME_MAX) -> str:
    if not isinstance(value, str):
        raise InvalidJobError(f"{what} must be a str, got {type(value).__name__}")
    if not value or not value.strip():
        raise InvalidJobError(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidJobError(f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidJobError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJobError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def check_str(value: Any, what: str) -> str:
    # Only the type: a str that no job can have is simply not found (JobNotFound).
    if not isinstance(value, str):
        raise InvalidJobError(f"{what} must be a str, got {type(value).__name__}")
    return value


def check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidJobError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_seconds(value: Any, what: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidJobError(f"{what} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise InvalidJobError(f"{what} must be a finite number {bound}, got {value!r}")
    if value > MAX_DELAY:
        raise InvalidJobError(f"{what} must be at most 100 years, got {value!r} seconds")
    return float(value)
