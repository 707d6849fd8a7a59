"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_block(after_heading: str, index: int = 0) -> str:
    section = README.split(after_heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) > index, f"no python block {index} after {after_heading!r}"
    return str(blocks[index])


def run(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, *args, str(script)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_quick_start_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    done = run(python_block("## Quick start"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "completed 1 {'sent': True, 'to': 'a@example.com'}"


def test_enqueue_example_runs(tmp_path: Path) -> None:
    prelude = "from dbjobq import JobQueue, JobSpec\nqueue = JobQueue('sqlite:///jobs.db')\n"
    code = (
        prelude
        + python_block("## Enqueueing")
        + "\nassert len(queue.list_jobs(limit=None)) == 1001\n"
    )
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr


def test_custom_backend_example_runs_the_conformance_suite(tmp_path: Path) -> None:
    prelude = "from dbjobq.storage import MemoryStorage as MyStorage\n"
    done = run(
        prelude + python_block("### Your own backend"),
        tmp_path,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d{2,} passed", done.stdout), done.stdout


def test_transactional_enqueue_example_runs(tmp_path: Path) -> None:
    prelude = (
        "import sqlalchemy as sa\n"
        "from dbjobq import JobQueue\n"
        "engine = sa.create_engine('sqlite:///app.db')\n"
        "users = sa.Table('users', sa.MetaData(), sa.Column('name', sa.String))\n"
        "users.create(engine)\n"
    )
    check = "\nassert [j.payload for j in queue.list_jobs()] == [{'name': 'ada'}]\n"
    done = run(prelude + python_block("## Enqueueing", 1) + check, tmp_path)
    assert done.returncode == 0, done.stderr
