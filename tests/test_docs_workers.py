"""The workers page's systemd script runs jobs and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from dbjobq import JobQueue

from .helpers import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
SYSTEMD_SCRIPT = EXAMPLES / "workers_systemd.py"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


class Output:
    """A pipe's lines, read on a thread so that the test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 15.0) -> str:
        def find() -> str | None:
            return next((line for line in list(self.lines) if line.startswith(prefix)), None)

        line = wait_until(find, timeout, f"a line starting with {prefix!r}: {self.lines}")
        assert line is not None
        return line

    def close(self) -> None:
        self._thread.join(10)


def test_systemd_script_runs_jobs_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    assert SYSTEMD_SCRIPT.read_text().startswith("# docs-test: custom\n")
    proc = subprocess.Popen(
        [sys.executable, str(SYSTEMD_SCRIPT)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    queue = JobQueue(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Output(proc.stdout), Output(proc.stderr)
        assert out.wait_for("ready") == "ready: 4 workers"

        job_id = queue.enqueue("send_email", {"to": "a@example.com"})

        wait_until(lambda: queue.get_job(job_id).status.is_finished, 20, "the job to finish")
        job = queue.get_job(job_id)
        assert job.status == "completed"
        assert job.result == {"sent_to": "a@example.com"}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        out.close()
        err.close()
        assert out.lines[-2:] == ["SIGTERM: stopping", "stopped"]
        assert any("stopped after" in line for line in err.lines), err.lines  # workers' logs
        assert not any("Traceback" in line for line in err.lines), err.lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        queue.close()
