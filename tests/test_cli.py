"""The `dbjobq` command: the demo that the README's first command runs."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dbjobq import JobQueue
from dbjobq.cli import main

from .conftest import StorageConfig
from .helpers import wait_until


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


# -- the real command, against SQLite and PostgreSQL --------------------------------------

APP = """
import os
import time

from dbjobq import JobContext, JobQueue
from dbjobq.storage import SQLAlchemyStorage

queue = JobQueue(
    SQLAlchemyStorage(
        os.environ["APP_URL"],
        table_prefix=os.environ["APP_PREFIX"],
        schema=os.environ.get("APP_SCHEMA") or None,
    )
)


@queue.handler("send_email")
def send_email(ctx: JobContext) -> dict:
    time.sleep(ctx.payload.get("seconds", 0))
    return {"sent_to": ctx.payload["to"]}


if os.environ.get("APP_PERIODIC"):

    @queue.periodic(every=1)
    def beat(ctx: JobContext) -> None:
        return None
"""


class Cli:
    """Runs `python -m dbjobq` in a directory holding app.py, on one test database."""

    def __init__(self, config: StorageConfig, work: Path, **extra_env: str) -> None:
        (work / "app.py").write_text(APP)
        self.work = work
        self.env = {
            **os.environ,
            "APP_URL": config.url,
            "APP_PREFIX": config.table_prefix,
            "APP_SCHEMA": config.schema or "",
            "DBJOBQ_APP": "app:queue",
            **extra_env,
        }
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dbjobq", *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def worker(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbjobq", "worker", "app:queue", *args],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


# The command runs the same code on every backend; SQLite and PostgreSQL cover it
# without spending CI time on a third copy of these slow, process-starting tests.
ON_TWO_BACKENDS = pytest.mark.parametrize("sql_config", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def cli(sql_config: StorageConfig, tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(sql_config, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def status(cli: Cli, job_id: str) -> str:
    return str(cli.json("job", job_id)["status"])


@ON_TWO_BACKENDS
def test_a_worker_runs_a_job_enqueued_from_the_command_line(cli: Cli) -> None:
    worker = cli.worker("--poll-interval", "0.1", "--max-poll-interval", "0.2")
    job_id = cli.json("enqueue", "send_email", "--payload", '{"to": "ada@example.com"}')["id"]
    wait_until(lambda: status(cli, job_id) == "completed", timeout=30)
    listed = cli.json("jobs", "--status", "completed")
    assert [(j["id"], j["result"]) for j in listed] == [(job_id, {"sent_to": "ada@example.com"})]
    table = cli.run("jobs")
    assert job_id in table.stdout and "completed" in table.stdout
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


@ON_TWO_BACKENDS
def test_sigterm_lets_the_running_job_finish_before_exit(cli: Cli) -> None:
    worker = cli.worker("--poll-interval", "0.1")
    job_id = cli.json(
        "enqueue", "send_email", "--payload", '{"to": "bob@example.com", "seconds": 2}'
    )["id"]
    wait_until(lambda: status(cli, job_id) == "running", timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert status(cli, job_id) == "completed"
    _, stderr = worker.communicate()
    assert "stopping" in stderr


@ON_TWO_BACKENDS
def test_a_second_signal_exits_at_once_and_the_job_is_rescued_later(cli: Cli) -> None:
    worker = cli.worker("--poll-interval", "0.1", "--lease-seconds", "1")
    job_id = cli.json(
        "enqueue", "send_email", "--payload", '{"to": "eve@example.com", "seconds": 30}'
    )["id"]
    wait_until(lambda: status(cli, job_id) == "running", timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.stderr is not None
    while "stopping" not in worker.stderr.readline():  # the first signal was handled
        pass
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 1
    assert status(cli, job_id) == "running"  # its lease has yet to expire
    rescuer = cli.worker("--poll-interval", "0.1", "--lease-seconds", "5")
    wait_until(lambda: cli.json("job", job_id)["attempts"] == 2, timeout=30)
    rescuer.kill()


@ON_TWO_BACKENDS
def test_management_commands(cli: Cli) -> None:
    first = cli.json("enqueue", "send_email", "--payload", '{"to": "a@x"}', "--delay", "1h")["id"]
    second = cli.json("enqueue", "send_email", "--payload", '{"to": "b@x"}')["id"]
    assert cli.json("cancel", first) == {"cancelled": True}
    assert cli.json("retry", "--all-failed") == {"retried": []}
    assert cli.json("retry", first) == {"retried": [first]}
    stats = cli.json("stats")
    (default,) = stats["queues"]
    assert default["counts"]["pending"] == 2
    assert "warning: no live worker handles 'send_email'" in cli.run("stats").stdout
    assert cli.json("workers") == []
    worker = cli.worker("--poll-interval", "0.1", "--worker-id", "cli-worker")
    wait_until(lambda: status(cli, second) == "completed", timeout=30)
    wait_until(lambda: cli.json("workers"), timeout=30)
    assert [w["id"] for w in cli.json("workers")] == ["cli-worker"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert cli.json("purge", "--older-than", "1h") == {"deleted": 0}
    cli.run("purge", "--older-than", "0s")
    detail = cli.run("job", second)
    assert detail.returncode in (0, 1)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--concurrency", "x"], {}, "--concurrency must be a whole number"),
        (["--poll-interval", "-1"], {}, "--poll-interval must be a number above 0"),
        ([], {"DBJOBQ_CONCURRENCY": "0"}, "DBJOBQ_CONCURRENCY must be a whole number"),
        (["--poll-interval", "5", "--max-poll-interval", "1"], {}, "--max-poll-interval must not"),
        (["--log-level", "LOUD"], {}, "--log-level must be"),
        (["--url", "nope://"], {}, "unsupported database 'nope'"),
        (["--queues", " , "], {}, "queues must be a non-empty list"),
    ],
)
def test_bad_worker_options_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    runner = Cli(StorageConfig(f"sqlite:///{tmp_path / 'jobs.db'}"), tmp_path, **env)
    done = subprocess.run(
        [sys.executable, "-m", "dbjobq", "worker", "app:queue", *args],
        cwd=tmp_path,
        env=runner.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr


def test_bad_app_is_named(tmp_path: Path) -> None:
    runner = Cli(StorageConfig(f"sqlite:///{tmp_path / 'jobs.db'}"), tmp_path)
    done = runner.run("jobs", "--app", "nowhere:queue")
    assert done.returncode == 2
    assert "cannot import 'nowhere'" in done.stderr
    done = runner.run("jobs", "--app", "app:missing")
    assert "'app:missing' is nothing, not a dbjobq.JobQueue" in done.stderr


@ON_TWO_BACKENDS
def test_a_periodic_job_fires_once_per_tick_across_processes(
    sql_config: StorageConfig, tmp_path: Path
) -> None:
    """4 workers in 2 processes share a 1 s schedule: one job per tick."""
    runner = Cli(sql_config, tmp_path, APP_PERIODIC="1")
    try:
        workers = [runner.worker("--concurrency", "2", "--poll-interval", "0.2") for _ in range(2)]
        wait_until(
            lambda: len(runner.json("jobs", "--type", "beat", "--limit", "100")) >= 6, timeout=60
        )
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(30) == 0
        jobs = runner.json("jobs", "--type", "beat", "--limit", "1000")
    finally:
        runner.close()
    ticks = sorted(datetime.fromisoformat(j["meta"]["tick"]) for j in jobs)
    assert len(ticks) == len(set(ticks))  # never two jobs for one tick
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert gaps == {1.0}  # and no tick skipped while the workers ran


@pytest.mark.parametrize("sql_config", ["sqlite"], indirect=True)
def test_worker_types_and_lifo_flags(cli: Cli) -> None:
    bad = cli.run("worker", "--types", "send_email,resize")
    assert bad.returncode == 2
    assert "types ['resize'] have no handler" in bad.stderr
    cli.env["DBJOBQ_LIFO"] = "maybe"
    bad = cli.run("worker")
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "dbjobq worker: error: DBJOBQ_LIFO must be true or false, got 'maybe'",
    )
    cli.env["DBJOBQ_LIFO"] = "true"
    ids = [cli.json("enqueue", "send_email", "--payload", '{"to": "a@x"}')["id"] for _ in range(2)]
    worker = cli.worker("--types", "send_email", "--lifo", "--max-jobs", "2")
    assert worker.wait(60) == 0
    assert [status(cli, job_id) for job_id in ids] == ["completed", "completed"]
