"""Reading the command's options: from the command line, else from `DBJOBQ_*` variables.

A bad value raises `UsageError` with one line that names the option (or the variable
it came from); `main` prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A bad option: printed as one line, exit status 2."""


def env(name: str) -> str | None:
    """The `DBJOBQ_<NAME>` variable of an option, or None when it is not set."""
    return os.environ.get(f"DBJOBQ_{name.upper().replace('-', '_')}")


def option(args: argparse.Namespace, name: str) -> tuple[str | None, str]:
    """The raw value of an option and where it came from, for error messages."""
    value = getattr(args, name.replace("-", "_"), None)
    if value is not None:
        return str(value), f"--{name}"
    return env(name), f"DBJOBQ_{name.upper().replace('-', '_')}"


def number(
    args: argparse.Namespace,
    name: str,
    default: float | None,
    *,
    kind: type = float,
    low: float = 0.0,
    high: float = math.inf,
    strictly_above: bool = True,
) -> Any:
    """A numeric option within bounds, or `default` when it is not given."""
    raw, source = option(args, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
        ok = math.isfinite(value) and (value > low if strictly_above else value >= low)
        ok = ok and value <= high
    except ValueError:
        ok = False
    if not ok:
        what = "a whole number" if kind is int else "a number"
        bound = f"above {_plain(low)}" if strictly_above else f"at least {_plain(low)}"
        if high != math.inf:
            bound += f" and at most {_plain(high)}"
        raise UsageError(f"{source} must be {what} {bound}, got {raw!r}")
    return value


def _plain(value: float) -> str:
    """A bound as people write it: 2147483647, not 2.14748e+09."""
    return str(int(value)) if value == int(value) else f"{value:g}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def flag(args: argparse.Namespace, name: str) -> bool:
    """A switch given on the command line, or as DBJOBQ_<NAME>=1 (or 0)."""
    if getattr(args, name.replace("-", "_"), False):
        return True
    raw = env(name)
    if raw is None or raw.strip().lower() in _FALSE:
        return False
    if raw.strip().lower() in _TRUE:
        return True
    variable = f"DBJOBQ_{name.upper().replace('-', '_')}"
    raise UsageError(f"{variable} must be 1 or 0 (true or false), got {raw!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(raw: str, source: str) -> float:
    """Seconds from a duration such as 90s, 15m, 12h, 7d or 2w (a bare number: seconds)."""
    match = _DURATION.fullmatch(raw.strip().lower())
    if not match:
        raise UsageError(f"{source} must be a duration such as 90s, 15m, 12h or 7d, got {raw!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]
