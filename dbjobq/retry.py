"""When a failed attempt runs again: exponential back-off with jitter."""

from __future__ import annotations

import dataclasses
import math
import random

from dbjobq.errors import ConfigurationError

__all__ = ["RetryPolicy"]

MAX_RETRY_DELAY = 100 * 365.25 * 86400


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter between the attempts of a failing job.

    The delay before retry number *n* (1 for the first retry) is
    `min(max_delay, base_delay * factor ** (n - 1))`, then multiplied by a random
    factor in `[1 - jitter, 1]` so that jobs that failed together do not all retry
    in the same instant.

    With the defaults, retries come after about 1 s, 2 s, 4 s, 8 s, ... up to 5 minutes.

    Args:
        base_delay: Seconds before the first retry.
        factor: Growth of the delay from one retry to the next.
        max_delay: Upper bound on any delay, in seconds.
        jitter: Fraction of the delay that is randomised, between 0 and 1.

    Raises:
        ConfigurationError: If a value is negative, `factor` is below 1 or `jitter`
            is above 1.
    """

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in ("base_delay", "factor", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"RetryPolicy.{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigurationError(f"RetryPolicy.{name} must be finite, got {value!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must not be negative")
        if self.max_delay > MAX_RETRY_DELAY:
            raise ConfigurationError("RetryPolicy.max_delay must be at most 100 years")
        if self.factor < 1:
            raise ConfigurationError("RetryPolicy.factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter must be between 0 and 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based).

        Args:
            retry: Which retry this is: 1 after the first failed attempt.

        Returns:
            The delay in seconds, jitter applied.
        """
        try:
            raw = self.base_delay * self.factor ** max(0, retry - 1)
        except OverflowError:
            raw = math.inf
        capped = min(self.max_delay, raw)
        return capped * (1.0 - self.jitter * random.random())
