"""Every example in the documentation runs, again and again, and prints what it says.

The docs/examples/*.py files are run one after the other in one shared working
directory, and then all once more in the same directory, as a reader trying them in
one folder would: each must run alone or after any other, as often as one likes.
`test_*.py` files run with pytest, the others as scripts. A file whose first line is
`# docs-test: custom` has a test of its own instead.

What an example states it prints is checked: a `print(...)` line ending in a comment
(or followed by comment lines) states the line it prints. In a statement, `<id>`
stands for a job id and `...` for anything; an explanation may follow after `: ` or in
a trailing `(...)`. Statements that begin with `about` or `e.g.` are not checked (times,
counts that depend on timing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import require

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

# Examples that need the frameworks of the `heavy` extra.
NEEDS = {
    "workers_django.py": ["django"],
    "workers_fastapi.py": ["fastapi", "httpx"],
    "workers_flask.py": ["flask"],
}


def _generic(path: Path) -> bool:
    return not path.read_text().startswith("# docs-test: custom")


SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if _generic(p))


def stated_outputs(source: str) -> list[str]:
    """The outputs that an example's comments say its prints give, as regexes."""
    lines = source.splitlines()
    stated: list[str] = []
    for n, line in enumerate(lines):
        code, _, comment = line.partition("  # ")
        if not code.lstrip().startswith("print(") or "file=" in code:
            continue
        if not comment:  # the statement may follow on comment lines of its own
            following = []
            for after in lines[n + 1 :]:
                if not after.lstrip().startswith("#"):
                    break
                following.append(after.strip().lstrip("#").strip())
            comment = " ".join(following)
        comment = comment.strip()
        if not comment or comment.startswith(("about ", "e.g. ")):
            continue
        stated.append(comment)
    return stated


def _pattern(statement: str) -> re.Pattern[str]:
    candidates = {statement, statement.split(": ", 1)[0], re.sub(r" \(.*\)$", "", statement)}
    regexes = []
    for text in sorted(candidates):
        regex = re.escape(text).replace(re.escape("<id>"), r"\S+")
        regexes.append(regex.replace(re.escape("..."), ".*"))
    return re.compile("|".join(f"(?:{r})" for r in regexes))


def test_there_are_examples_and_stated_outputs() -> None:
    assert len(SCRIPTS) >= 5
    statements = [s for p in SCRIPTS for s in stated_outputs(p.read_text())]
    assert len(statements) >= 20, statements


def test_a_statement_and_its_explanation_are_told_apart() -> None:
    pattern = _pattern("running True: left for rescue")
    assert pattern.fullmatch("running True")
    assert _pattern("<id> completed 10 (then 11, then 12)").fullmatch("01a2-b3 completed 10")
    assert _pattern("failed 1 JobValidationError: ...").fullmatch("failed 1 JobValidationError: x")
    assert not _pattern("['ada']").fullmatch("['ada', 'ada']")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory for every example and both rounds."""
    return tmp_path_factory.mktemp("examples")


def _params() -> list[Any]:
    params = []
    for run in (1, 2):
        for script in SCRIPTS:
            marks = [pytest.mark.heavy] if script.name in NEEDS else []
            params.append(pytest.param(script, id=f"{script.name}-run{run}", marks=marks))
    return params


@pytest.mark.parametrize("script", _params())
def test_example_runs_and_prints_what_it_states(script: Path, folder: Path) -> None:
    require(*NEEDS.get(script.name, []))
    args = (
        ["-m", "pytest", "-q", "-p", "no:cacheprovider"] if script.name.startswith("test_") else []
    )
    path = [str(EXAMPLES), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, *args, str(script)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = [line.rstrip() for line in done.stdout.splitlines()]
    for statement in stated_outputs(script.read_text()):
        pattern = _pattern(statement)
        assert any(pattern.fullmatch(line) for line in printed), (statement, printed)
