"""The `dbjobq` command: the demo that the README's first command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dbjobq import JobQueue
from dbjobq.cli import main


def test_demo_processes_real_jobs_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "dbjobq-demo.db").write_text("left over from an older run")
    done = subprocess.run(
        [sys.executable, "-m", "dbjobq", "demo", "--jobs", "100", "--workers", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "100 jobs finished" in done.stdout
    assert "failed:    2" in done.stdout  # the two bad card numbers, on purpose
    queue = JobQueue(f"sqlite:///{tmp_path / 'dbjobq-demo.db'}")
    counts = queue.counts()["default"]
    assert (counts["completed"], counts["failed"], counts["pending"]) == (98, 2, 0)
    queue.close()


def test_demo_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--jobs", "0"]) == 2
    assert "--jobs and --workers must be at least 1" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("dbjobq ")
