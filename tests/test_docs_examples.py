"""Every example in the documentation runs and checks what the page says.

Each docs/examples/*.py is run in a fresh working directory: `test_*.py` files with
pytest, the others as scripts. A file whose first line is `# docs-test: custom` has a
test of its own instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _generic(path: Path) -> bool:
    return not path.read_text().startswith("# docs-test: custom")


SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if _generic(p))


def test_there_are_examples() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    args = (
        ["-m", "pytest", "-q", "-p", "no:cacheprovider"] if script.name.startswith("test_") else []
    )
    # The examples' folder first, then whatever PYTHONPATH names (a checkout under test).
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, *args, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
