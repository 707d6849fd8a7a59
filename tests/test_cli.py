"""The `dbjobq` command: the demo that the README's first command runs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dbjobq import JobQueue, JobSpec
from dbjobq.cli import main

from .conftest import POSTGRES_URL, StorageConfig
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
import signal
import threading
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


@queue.handler("signal_from_a_thread")
def signal_from_a_thread(ctx: JobContext) -> None:
    # The system may deliver a process's signal to any of its threads: this sends
    # SIGTERM to this very thread (not the main one) once the test says so.
    while not os.path.exists(ctx.payload["go"]):
        time.sleep(0.01)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    time.sleep(30)


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


def read_until(proc: subprocess.Popen[str], text: str) -> None:
    """Read the process's standard error up to a line that holds `text`."""
    assert proc.stderr is not None
    seen: list[str] = []
    while text not in (line := proc.stderr.readline()):
        assert line, f"the process ended before printing {text!r}: {seen}"
        seen.append(line)


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
def test_sigterm_lets_the_running_job_finish_before_exit(
    cli: Cli, sql_config: StorageConfig
) -> None:
    worker = cli.worker("--poll-interval", "0.1")
    job_id = cli.json(
        "enqueue", "send_email", "--payload", '{"to": "bob@example.com", "seconds": 2}'
    )["id"]
    # Watched through a storage object of the test's own: a command takes about a second
    # to start, and could miss the two seconds the job runs.
    storage = sql_config.open()
    try:
        wait_until(lambda: storage.get(job_id).status.value == "running", timeout=30)
    finally:
        storage.close()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert status(cli, job_id) == "completed"
    _, stderr = worker.communicate()
    assert "stopping" in stderr


@pytest.mark.slow  # three worker processes, one after the other, and a lease to expire
@ON_TWO_BACKENDS
def test_a_second_signal_exits_at_once_and_the_job_is_rescued_later(cli: Cli) -> None:
    worker = cli.worker("--poll-interval", "0.1", "--lease-seconds", "1")
    job_id = cli.json(
        "enqueue", "send_email", "--payload", '{"to": "eve@example.com", "seconds": 30}'
    )["id"]
    wait_until(lambda: status(cli, job_id) == "running", timeout=30)
    worker.send_signal(signal.SIGTERM)
    read_until(worker, "stopping")  # the first signal was handled
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


@pytest.mark.slow  # two worker processes for several seconds of ticks
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


# -- output, options and exit statuses, in this process -------------------------------------

ESC = "\x1b"
HOSTILE_TYPE = f"mail{ESC}[2J{ESC}]0;pwned\x07"
HOSTILE_QUEUE = "q\x9b31m\u202e"
HOSTILE_ERROR = f"ValueError: {ESC}[31mred\r\nsecond line{ESC}[0m"
TERMINAL_ACTS_ON = (ESC, "\x07", "\x9b", "\u202e", "\r")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _failed_hostile_job(url: str) -> str:
    queue = JobQueue(url)
    job_id = queue.enqueue(HOSTILE_TYPE, {"note": f"{ESC}[5mblink\x9b"}, queue=HOSTILE_QUEUE)
    (job,) = queue.storage.claim(queues=[HOSTILE_QUEUE], worker_id="w", lease_seconds=60)
    assert job.lease_token is not None
    queue.storage.fail(job_id, job.lease_token, error=HOSTILE_ERROR, retry_in=None)
    queue.close()
    return job_id


@pytest.mark.parametrize(
    "command", [["jobs"], ["jobs", "--status", "failed"], ["job", "ID"], ["stats"]]
)
def test_plain_output_escapes_what_a_terminal_would_act_on(
    url: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _failed_hostile_job(url)
    args = [job_id if a == "ID" else a for a in command]
    assert main([*args, "--url", url]) == 0
    out = capsys.readouterr().out
    assert not [c for c in TERMINAL_ACTS_ON if c in out], out
    if command != ["stats"]:
        assert "mail\\u001b[2J" in out  # shown, escaped, not dropped
    assert "q\\u009b31m\\u202e" in out


def test_job_shows_the_whole_error_with_its_lines_and_escaped(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _failed_hostile_job(url)
    assert main(["job", job_id, "--url", url]) == 0
    out = capsys.readouterr().out
    assert "ValueError: \\u001b[31mred\\u000d\nsecond line\\u001b[0m" in out
    assert '{"note": "\\u001b[5mblink\\u009b"}' in out


def test_json_output_stays_exact_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = _failed_hostile_job(url)
    assert main(["job", job_id, "--url", url, "--json"]) == 0
    out = capsys.readouterr().out
    assert not [c for c in TERMINAL_ACTS_ON if c in out], out
    job = json.loads(out)
    assert (job["type"], job["queue"], job["last_error"]) == (
        HOSTILE_TYPE,
        HOSTILE_QUEUE,
        HOSTILE_ERROR,
    )
    assert job["payload"] == {"note": f"{ESC}[5mblink\x9b"}
    assert main(["jobs", "--url", url, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["type"] == HOSTILE_TYPE


READ_ONLY = [["stats"], ["jobs"], ["job", "ID"], ["workers"], ["retry", "ID"], ["cancel", "ID"]]


@pytest.mark.parametrize("command", [*READ_ONLY, ["purge", "--older-than", "1d"]])
def test_commands_on_a_missing_sqlite_file_create_nothing(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.db"
    args = ["01a205d6-d226-71ae-a2a2-de8de484d7dd" if a == "ID" else a for a in command]
    assert main([*args, "--url", f"sqlite:///{path}"]) == 1
    err = capsys.readouterr().err
    assert f"no dbjobq tables at sqlite+pysqlite:///{path}" in err
    assert "dbjobq init" in err
    assert list(tmp_path.iterdir()) == []


def test_init_creates_the_tables_and_then_commands_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["init", "--url", url]) == 0
    assert "dbjobq tables ready at sqlite+pysqlite:///" in capsys.readouterr().out
    assert main(["init", "--url", url, "--json"]) == 0  # idempotent
    assert json.loads(capsys.readouterr().out) == {"initialized": True}
    assert main(["stats", "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queues"] == []


def test_the_first_enqueue_creates_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["enqueue", "send_email", "--url", url]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["job", job_id, "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "pending"


@pytest.mark.parametrize("sql_config", ["postgres", "mysql"], indirect=True)
def test_read_only_commands_create_no_tables_on_a_server(
    sql_config: StorageConfig, tmp_path: Path
) -> None:
    fresh = dataclasses.replace(sql_config, table_prefix=f"t{uuid.uuid4().hex[:10]}_")
    runner = Cli(fresh, tmp_path)
    storage = fresh.open()

    def tables() -> list[str]:
        with storage.engine.connect() as conn:
            names = sa.inspect(conn).get_table_names(schema=fresh.schema)
        return [n for n in names if n.startswith(fresh.table_prefix)]

    try:
        for command in (["stats"], ["jobs", "--status", "failed"], ["workers"]):
            done = runner.run(*command)
            assert done.returncode == 1, done.stderr
            assert "no dbjobq tables at " in done.stderr
            assert f"table prefix {fresh.table_prefix!r}" in done.stderr
        assert tables() == []
        assert runner.run("init").returncode == 0
        made = {"jobs", "schema", "workers", "periodic", "paused_queues", "rate_starts"}
        made |= {"dependencies", "groups"}
        assert sorted(tables()) == sorted(fresh.table_prefix + name for name in made)
        assert runner.json("stats")["queues"] == []
    finally:
        with storage.engine.begin() as conn:
            storage._metadata.drop_all(conn)
        storage.close()


def test_the_message_masks_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    if not POSTGRES_URL:
        pytest.skip("set DBJOBQ_TEST_POSTGRES_URL to run this test")
    url = make_url(POSTGRES_URL).set(password="s3cret", query={"options": "-csearch_path=nix"})
    shown = url.render_as_string(hide_password=False)
    code = main(["stats", "--url", shown])
    err = capsys.readouterr().err
    assert "s3cret" not in err
    if code == 1:  # the server may refuse the password: that is an error too
        assert "no dbjobq tables at " in err or "StorageError" in err


# SQLite ignores (and SQLAlchemy warns of) such query arguments; the URL is still shown.
@pytest.mark.filterwarnings("ignore:Query string argument")
@pytest.mark.parametrize("key", ["password", "passwd", "pwd", "sslpassword"])
def test_init_and_missing_tables_messages_mask_query_passwords(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite:///{tmp_path / 'none.db'}?{key}=s3cret"
    assert main(["stats", "--url", missing]) == 1
    assert main(["init", "--url", f"sqlite:///{tmp_path / 'new.db'}?{key}=s3cret"]) == 0
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err
    assert f"{key}=***" in err
    assert f"{key}=***" in out


def test_demo_ignores_dbjobq_url_and_writes_its_own_file(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    done = subprocess.run(
        [sys.executable, "-m", "dbjobq", "demo", "--jobs", "20", "--workers", "2"],
        cwd=tmp_path,
        env={**os.environ, "DBJOBQ_URL": f"sqlite:///{real}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not real.exists()
    assert (tmp_path / "dbjobq-demo.db").exists()
    assert "dbjobq-demo.db" in done.stdout.splitlines()[0]


@pytest.mark.parametrize("sql_config", ["sqlite"], indirect=True)
def test_a_second_signal_exits_at_once_whichever_thread_receives_it(
    cli: Cli, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    worker = cli.worker("--poll-interval", "0.1")
    job_id = cli.json("enqueue", "signal_from_a_thread", "--payload", json.dumps({"go": str(go)}))[
        "id"
    ]
    wait_until(lambda: status(cli, job_id) == "running", timeout=30)
    worker.send_signal(signal.SIGTERM)
    read_until(worker, "stopping")  # the first signal was handled by the main thread
    go.touch()  # the job now sends the second one to its own thread
    assert worker.wait(10) == 1  # at once, not after the 30 s stop timeout
    assert worker.stderr is not None
    assert "second signal, exiting at once" in worker.stderr.read()


@pytest.mark.parametrize("sql_config", ["sqlite"], indirect=True)
def test_a_job_left_behind_at_the_stop_timeout_exits_1(cli: Cli) -> None:
    worker = cli.worker("--poll-interval", "0.1", "--stop-timeout", "0", "--lease-seconds", "60")
    job_id = cli.json(
        "enqueue", "send_email", "--payload", '{"to": "eve@example.com", "seconds": 30}'
    )["id"]
    wait_until(lambda: status(cli, job_id) == "running", timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 1
    _, stderr = worker.communicate()
    assert "some jobs did not finish in time" in stderr
    assert status(cli, job_id) == "running"  # until its lease expires, then rescued


def test_limit_1_is_accepted_and_too_large_names_the_bound(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = JobQueue(url)
    queue.enqueue_many([JobSpec(type="a"), JobSpec(type="b")])
    queue.close()
    assert main(["jobs", "--url", url, "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["jobs", "--url", url, "--limit", "0"]) == 2
    assert "--limit must be a whole number at least 1 and at most 2147483647, got '0'" in (
        capsys.readouterr().err
    )
    assert main(["jobs", "--url", url, "--limit", "99999999999"]) == 2
    assert "at most 2147483647, got '99999999999'" in capsys.readouterr().err


def test_too_much_concurrency_names_the_upper_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "app:queue", "--concurrency", "5000"]) == 2
    assert "--concurrency must be a whole number at least 1 and at most 1000, got '5000'" in (
        capsys.readouterr().err
    )


def test_retry_without_an_argument_says_what_is_needed(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["retry", "--url", url]) == 2
    err = capsys.readouterr().err
    assert "give the ID of the job to retry, or --all-failed for every failed job" in err
    assert "not both" not in err
    assert main(["retry", "some-id", "--all-failed", "--url", url]) == 2
    assert "not both" in capsys.readouterr().err


def test_dbjobq_json_1_is_honoured(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    JobQueue(url).initialize()
    monkeypatch.setenv("DBJOBQ_JSON", "1")
    assert main(["stats", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["queues"] == []
    monkeypatch.setenv("DBJOBQ_JSON", "0")
    assert main(["workers", "--url", url]) == 0
    assert capsys.readouterr().out.startswith("ID ")
    monkeypatch.setenv("DBJOBQ_JSON", "maybe")
    assert main(["workers", "--url", url]) == 2
    assert "DBJOBQ_JSON must be 1 or 0" in capsys.readouterr().err


def test_jobs_lists_finished_ones_newest_first_by_default(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = JobQueue(url)
    ids = queue.enqueue_many([JobSpec(type="t", payload={"n": n}) for n in range(3)])
    for job_id in ids:
        queue.cancel(job_id)
    queue.close()

    def listed(*args: str) -> list[str]:
        assert main(["jobs", "--url", url, "--json", *args]) == 0
        return [j["id"] for j in json.loads(capsys.readouterr().out)]

    assert listed("--status", "cancelled") == ids[::-1]
    assert listed("--status", "cancelled", "--limit", "1") == [ids[-1]]
    assert listed("--status", "cancelled", "--oldest-first") == ids
    assert listed() == ids  # everything, or unfinished work: oldest first
    assert listed("--newest-first") == ids[::-1]
    with pytest.raises(SystemExit):
        main(["jobs", "--url", url, "--newest-first", "--oldest-first"])


def test_a_closed_pipe_ends_quietly(url: str) -> None:
    queue = JobQueue(url)
    queue.enqueue_many([JobSpec(type="t") for _ in range(50)])
    queue.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`, say) is gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dbjobq", "jobs", "--url", url],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""


def test_the_worker_takes_the_app_as_an_option_too(
    sql_config: StorageConfig, tmp_path: Path
) -> None:
    runner = Cli(sql_config, tmp_path)
    del runner.env["DBJOBQ_APP"]
    job_id = runner.json("enqueue", "send_email", "--app", "app:queue", "--payload", '{"to": "x"}')[
        "id"
    ]
    done = subprocess.run(
        [sys.executable, "-m", "dbjobq", "worker", "--app", "app:queue", "--max-jobs", "1"],
        cwd=tmp_path,
        env=runner.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert runner.json("job", job_id, "--app", "app:queue")["status"] == "completed"
    done = runner.run("worker", "app:queue", "--app", "other:queue")
    assert done.returncode == 2
    assert "two apps given" in done.stderr
