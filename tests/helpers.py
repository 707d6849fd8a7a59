"""Small tools shared by the tests."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from .conftest import StorageConfig

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


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


class Processes:
    """Starts worker processes (`python -m <module>`) and makes sure none outlives the test.

    Each prints `ready` once its workers run, exits 0 on SIGTERM, and takes `--url`,
    `--prefix`, `--ledger` and `--schema` (see tests/proc_flow_worker.py).
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, config: StorageConfig, ledgers: list[Path], **options: object
    ) -> list[subprocess.Popen[str]]:
        """One process per ledger, started side by side; returns once all are ready."""
        started = []
        for ledger in ledgers:
            cmd = [sys.executable, "-m", self.module, "--url", config.url]
            cmd += ["--prefix", config.table_prefix, "--ledger", str(ledger)]
            if config.schema:
                cmd += ["--schema", config.schema]
            for key, value in options.items():
                cmd += [f"--{key}", str(value)]
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", (
                f"worker process failed to start: {line}{proc.stderr.read() if proc.stderr else ''}"
            )
        return started

    def stop(self, procs: Iterable[subprocess.Popen[str]]) -> str:
        """SIGTERM, then each must exit cleanly, with nothing logged at ERROR level.

        Returns:
            What they wrote to stderr (warnings), for the messages of failed checks.
        """
        procs = list(procs)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        logged = []
        for proc in procs:
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
            logged.append(f"{proc.pid}: {stderr}")
        return "\n".join(logged)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
