"""Small tools shared by the tests."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def require(*modules: str) -> None:
    """Skip the test if a module of the `heavy` extra is missing; in CI, fail instead.

    CI installs every extra, so a missing module there is a broken set-up, which a
    skip would hide.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)}: python -m pip install -e '.[heavy]'"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must not skip this test)")
    pytest.skip(message)
