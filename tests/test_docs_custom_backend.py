"""The example backend of "Writing a storage backend" passes the whole conformance suite.

docs/examples/test_custom_backend.py is what the page tells backend authors to write;
it is run here as they would run it: pytest in a process of its own.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dbjobq._contract.limits import LimitContract, SnoozeContract
from dbjobq._contract.pauses import PauseContract
from dbjobq._contract.unique import UniqueRulesContract
from dbjobq._contract.workflows import WorkflowContract
from dbjobq.testing import StorageContract

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
TEST_FILE = EXAMPLES / "test_custom_backend.py"


def contract_tests() -> list[str]:
    return [
        name
        for name, _ in inspect.getmembers(StorageContract, inspect.isfunction)
        if name.startswith("test_")
    ]


def test_the_example_backend_stays_short() -> None:
    """The required methods are few enough for a whole backend in under 300 lines."""
    source = (EXAMPLES / "custom_backend.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 300
    assert "capabilities = Capabilities(" in source  # it declares what it offers


def test_the_docs_test_file_is_left_to_this_test() -> None:
    assert TEST_FILE.read_text(encoding="utf-8").startswith("# docs-test: custom\n")


@pytest.mark.slow  # the whole conformance suite again, on a backend that rewrites a file
def test_the_example_backend_passes_every_conformance_test(tmp_path: Path) -> None:
    expected = len(contract_tests())
    assert expected >= 50  # the suite is really there
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLES), path]))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEST_FILE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    # The optional parts it leaves out (pauses, limits, snoozes, workflows, unique rules,
    # reports of finished jobs) are skipped by capability, and nothing else is.
    left_out = (PauseContract, LimitContract, SnoozeContract, WorkflowContract, UniqueRulesContract)
    optional = [name for name in contract_tests() if any(name in vars(c) for c in left_out)]
    # At least one run per test function (some are parametrized).
    assert counts.get("passed", 0) + counts.get("skipped", 0) >= expected, output
    assert counts.get("passed", 0) >= expected - len(optional) - 1, output
    assert counts.get("skipped", 0) >= len(optional), output
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    reasons = (
        "(Capabilities.pauses)",
        "(Capabilities.limits)",
        "(Capabilities.snooze)",
        "(Capabilities.workflows)",
        "(Capabilities.unique_rules)",
        "does not report finished jobs",
    )
    assert skips and all(any(r in line for r in reasons) for line in skips), output
    for outcome in ("failed", "error", "errors", "xfailed", "xpassed", "deselected"):
        assert counts.get(outcome, 0) == 0, output
