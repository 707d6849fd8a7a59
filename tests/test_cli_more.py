"""The `dbjobq` command, in process: refusals, the rarer outputs, and the worker's exits.

tests/test_cli.py runs the real command in subprocesses against SQLite and PostgreSQL;
these call `main` directly (quick, no database server) for what those leave out.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.cli import main
from dbjobq.cli._output import age, short, when

_ENVIRONMENT = ("DBJOBQ_URL", "DBJOBQ_APP", "DBJOBQ_JSON", "DBJOBQ_LOG_LEVEL", "DBJOBQ_MAX_JOBS")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DBJOBQ_* from the caller's environment; logging as it was before the test."""
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    library_level = logging.getLogger("dbjobq").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("dbjobq").setLevel(library_level)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """A module in tmp_path holding `queue`; returns its `module:queue` spec."""
    name = f"cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:queue"


MEMORY_APP = """
from dbjobq import JobQueue
from dbjobq.errors import StorageError
from dbjobq.storage import MemoryStorage


class Flaky(MemoryStorage):
    # Lists nothing: every listing fails as a database that went away would.
    def list_jobs(self, *args, **kwargs):
        raise StorageError("the database went away")


queue = JobQueue(Flaky())


@queue.handler("hello")
def hello(ctx):
    return {"hi": ctx.payload["name"]}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- refused options: one line, exit status 2, before anything is opened --------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["purge", "--older-than", "soon"],
            "dbjobq purge: error: --older-than must be a duration such as 90s, 15m, 12h or 7d, "
            "got 'soon'",
        ),
        (
            ["enqueue", "t", "--url", "sqlite://", "--delay", "5y"],
            "dbjobq enqueue: error: --delay must be a duration such as 90s, 15m, 12h or 7d, "
            "got '5y'",
        ),
        (
            ["worker", "app:queue", "--max-jobs", "0"],
            "dbjobq worker: error: --max-jobs must be a whole number at least 1, got '0'",
        ),
        (
            ["worker", "a:queue", "--app", "b:queue"],
            "dbjobq worker: error: two apps given: 'a:queue' and --app 'b:queue'",
        ),
        (
            ["worker", "app:queue", "--log-level", "loud"],
            "dbjobq worker: error: --log-level must be DEBUG, INFO, WARNING or ERROR, got 'LOUD'",
        ),
        (
            ["worker"],
            "dbjobq worker: error: give the app as module:queue, --app module:queue or DBJOBQ_APP",
        ),
        (
            ["worker", "app:queue", "--log-format", "xml"],
            "dbjobq worker: error: --log-format must be text or json, got 'xml'",
        ),
        (
            ["jobs"],
            "dbjobq jobs: error: give the database with --url (or DBJOBQ_URL), or an app with "
            "--app",
        ),
        (
            ["stats", "--app", "no_colon_here"],
            "dbjobq stats: error: --app must look like module:queue, got 'no_colon_here'",
        ),
        (["retry"], "dbjobq retry: error: give the ID of the job to retry, or --all-failed"),
    ],
)
def test_a_bad_option_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_an_option_from_the_environment_is_named_by_its_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBJOBQ_LOG_LEVEL", "chatty")
    status, _, err = run(capsys, "worker", "app:queue")
    assert status == 2
    assert "DBJOBQ_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got 'CHATTY'" in err


def test_a_payload_that_is_not_json_is_refused(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    status, out, err = run(capsys, "enqueue", "t", "--url", url, "--payload", "{to: ada}")
    assert status == 2
    assert out == ""
    assert err.startswith("dbjobq enqueue: error: --payload is not JSON: ")


@pytest.mark.parametrize(("attribute", "found"), [("nothing_here", "nothing"), ("number", "int")])
def test_an_app_that_is_not_a_queue_is_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    attribute: str,
    found: str,
) -> None:
    module = write_app(tmp_path, monkeypatch, "number = 42\n").partition(":")[0]
    status, _, err = run(capsys, "stats", "--app", f"{module}:{attribute}")
    assert status == 2
    assert f"'{module}:{attribute}' is {found}, not a dbjobq.JobQueue" in err


def test_the_app_is_found_in_the_current_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with `python -m`: the app module usually sits where the command is run."""
    (tmp_path / "here_app.py").write_text(MEMORY_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "here_app", raising=False)
    status, out, _ = run(capsys, "init", "--app", "here_app:queue")
    assert status == 0
    assert str(tmp_path) in sys.path
    # A storage that is not SQL is shown as its repr, not as a URL.
    assert out == "dbjobq tables ready at MemoryStorage(jobs=0)\n"


# -- what the commands print ---------------------------------------------------------------


def test_a_storage_error_is_reported_with_its_kind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = write_app(tmp_path, monkeypatch, MEMORY_APP)
    status, out, err = run(capsys, "jobs", "--app", app)
    assert status == 1
    assert out == ""
    assert err == "dbjobq jobs: StorageError: the database went away\n"


def test_job_shows_progress_meta_result_and_the_error(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    queue = JobQueue(url)

    @queue.handler("report", max_retries=0)
    def report(ctx: JobContext) -> dict[str, int]:
        ctx.progress(50, "half way")
        if ctx.payload.get("fail"):
            raise RuntimeError("out of paper\nsecond line")
        return {"pages": 3}

    done = queue.enqueue("report", {"fail": False}, meta={"by": "ada"})
    failed = queue.enqueue("report", {"fail": True})
    assert Worker(queue).run_until_empty() == 2
    queue.close()

    status, out, _ = run(capsys, "job", done, "--url", url)
    assert status == 0
    lines = out.splitlines()
    assert "progress    50 half way" in lines
    assert 'payload     {"fail": false}' in lines
    assert 'meta        {"by": "ada"}' in lines
    assert 'result      {"pages": 3}' in lines
    assert "last error:" not in out

    status, out, _ = run(capsys, "job", failed, "--url", url)
    assert status == 0
    lines = out.splitlines()
    assert "status      failed" in lines
    assert not [line for line in lines if line.startswith("result")]
    error = out.split("\nlast error:\n", 1)[1]
    assert "RuntimeError: out of paper\nsecond line" in error


def test_retry_and_cancel_say_when_nothing_was_done(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    queue = JobQueue(url)
    job_id = queue.enqueue("later", delay=3600)
    queue.close()

    status, out, _ = run(capsys, "retry", job_id, "--url", url)
    assert status == 1
    assert out == (
        f"job {job_id} was not retried: it is not failed or cancelled, "
        "or another unfinished job holds its unique key\n"
    )
    assert run(capsys, "cancel", job_id, "--url", url) == (0, f"cancelled {job_id}\n", "")
    status, out, _ = run(capsys, "cancel", job_id, "--url", url)
    assert (status, out) == (1, f"job {job_id} had already finished\n")
    assert run(capsys, "retry", job_id, "--url", url) == (0, "retried 1 job(s)\n", "")


def test_an_unknown_job_is_reported(capsys: pytest.CaptureFixture[str], url: str) -> None:
    JobQueue(url).close()
    assert run(capsys, "init", "--url", url)[0] == 0
    status, out, err = run(capsys, "job", "no-such-id", "--url", url)
    assert (status, out) == (1, "")
    assert err == "dbjobq job: no job with id 'no-such-id'\n"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (7199, "120m"),
        (7200, "2.0h"),
        (172799, "48.0h"),
        (172800, "2.0d"),
        (864000, "10.0d"),
    ],
)
def test_ages_are_shown_in_the_largest_readable_unit(seconds: float | None, shown: str) -> None:
    assert age(seconds) == shown


def test_short_keeps_the_first_line_within_the_width() -> None:
    assert short(None) == ""
    assert short("") == ""
    assert short("one\ntwo") == "one"
    assert short("x" * 10, 10) == "x" * 10
    assert short("x" * 11, 10) == "x" * 9 + "…"
    assert when(None) == "-"


# -- the worker command, in process ---------------------------------------------------------


def test_the_worker_logs_json_lines_and_stops_after_max_jobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    app = write_app(
        tmp_path,
        monkeypatch,
        f"""
from dbjobq import JobQueue

queue = JobQueue({url!r})


@queue.handler("hello")
def hello(ctx):
    return {{"hi": ctx.payload["name"]}}
""",
    )
    queue = JobQueue(url)
    job_id = queue.enqueue("hello", {"name": "ada"})
    argv = ["worker", app, "--log-format", "json", "--max-jobs", "1", "--poll-interval", "0.05"]
    status, out, err = run(capsys, *argv)
    assert status == 0
    assert out == ""
    records = [json.loads(line) for line in err.splitlines()]
    mine = [r for r in records if r["logger"] == "dbjobq.cli"]
    assert mine[0]["message"].startswith("1 worker(s) on ")
    assert mine[-1]["message"] == "stopped after 1 job(s)"
    assert all(r["level"] == "INFO" for r in mine)
    job = queue.get_job(job_id)
    assert (job.status.value, job.result) == ("completed", {"hi": "ada"})
    queue.close()


def test_a_worker_that_cannot_look_for_jobs_left_behind_exits_with_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the stop it lists the running jobs; if that fails it must not claim success."""
    app = write_app(tmp_path, monkeypatch, MEMORY_APP)
    module = importlib.import_module(app.partition(":")[0])  # the command finds it loaded
    job_id = module.queue.enqueue("hello", {"name": "bob"})
    argv = ["worker", app, "--max-jobs", "1", "--poll-interval", "0.05", "--stop-timeout", "5"]
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert "could not look for jobs left behind: the database went away" in err
    assert "some jobs did not finish in time" in err
    assert module.queue.get_job(job_id).status.value == "completed"


def test_several_workers_get_numbered_ids(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = write_app(tmp_path, monkeypatch, MEMORY_APP.replace("Flaky()", "MemoryStorage()"))
    module = importlib.import_module(app.partition(":")[0])
    ran_in: list[str] = []
    module.queue.on("job:completed", lambda event: ran_in.append(event.worker_id))
    ids = [module.queue.enqueue("hello", {"name": str(n)}) for n in range(4)]
    argv = ["worker", app, "--concurrency", "2", "--worker-id", "box", "--max-jobs", "4"]
    status, _, err = run(capsys, *argv, "--poll-interval", "0.05")
    assert status == 0, err
    assert "2 worker(s) on " in err
    jobs = [module.queue.get_job(job_id) for job_id in ids]
    assert {job.status.value for job in jobs} == {"completed"}
    assert len(ran_in) == 4
    assert set(ran_in) <= {"box-1", "box-2"}


def test_the_demo_runs_on_the_database_it_is_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "demo", "--url", url, "--jobs", "20", "--workers", "2")
    assert status == 0
    assert out.startswith("dbjobq demo: 20 jobs, 2 workers, SQLAlchemyStorage(")
    assert "\n20 jobs finished in " in out
    assert "  failed:    1  (bad card numbers, not retried)" in out  # job 9, on purpose
    assert not (tmp_path / "dbjobq-demo.db").exists()  # the default file is left alone
    queue = JobQueue(url)
    counts = queue.counts()["default"]
    assert (counts["completed"], counts["failed"]) == (19, 1)
    queue.close()


def test_python_m_dbjobq_cli_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dbjobq.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dbjobq ")
