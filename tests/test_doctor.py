"""`dbjobq doctor` and `dbjobq.doctor.diagnose`; the `explain` and `job` commands too."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbjobq import JobQueue
from dbjobq.cli import main
from dbjobq.doctor import Finding, diagnose, sql_findings
from dbjobq.flow import Concurrency, RateLimit
from dbjobq.handlers import HandlerRegistry
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage, Storage

from .conftest import FAST_RETRIES, StorageConfig
from .helpers import wait_until
from .test_explain import claim, noop, register_worker


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest) -> JobQueue:
    storage: Storage = request.getfixturevalue(f"{request.param}_storage")
    return JobQueue(storage, retry_policy=FAST_RETRIES)


def codes(queue: JobQueue, **options: float) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in diagnose(queue.storage, queue.registry, **options)]


def test_a_healthy_deployment_has_no_findings(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    queue.enqueue("work")
    queue.enqueue("work", queue="later", delay=3600)  # not due: no worker needed yet
    assert codes(queue) == []


def test_due_jobs_no_live_worker_handles(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue, "w1", ("default",), "other")
    queue.enqueue("work")
    queue.enqueue("work")
    (finding,) = diagnose(queue.storage, queue.registry)
    assert (finding.code, finding.severity) == ("no_worker", "error")
    assert dict(finding.detail) == {"queue": "default", "type": "work", "pending": 2}
    assert finding.text == (
        "2 pending job(s) of type work in queue default, and no live worker handles them"
    )
    assert "--queues default" in finding.fix


def test_a_paused_queue_with_a_backlog(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    queue.pause("default")
    assert codes(queue) == []  # paused, but nothing waits
    queue.enqueue("work")
    (finding,) = diagnose(queue.storage, queue.registry)
    assert (finding.code, finding.severity) == ("paused_backlog", "warning")
    assert finding.fix == "resume it once the pause is over: dbjobq resume default"


def test_a_backlog_older_than_the_threshold(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    queue.enqueue("work", run_at=queue.storage.now() - timedelta(minutes=40))
    (finding,) = diagnose(queue.storage, queue.registry, backlog_minutes=15)
    assert (finding.code, finding.severity) == ("backlog", "error")
    assert finding.detail["queue"] == "default" and finding.detail["waited"] >= 2400
    assert finding.text.startswith("the oldest due job of queue default has waited 40 min")
    assert codes(queue, backlog_minutes=60) == []


def test_leases_expired_and_about_to_expire(queue: JobQueue) -> None:
    queue.register("work", noop)
    register_worker(queue)
    soon = queue.enqueue("work", priority=1)
    lost = queue.enqueue("work")
    assert claim(queue, lease_seconds=3) == [soon]  # within the 5 s of stuck_within
    assert codes(queue) == [("lease_expiring", "warning")]
    assert claim(queue, lease_seconds=0.05) == [lost]

    def expired() -> list[Finding]:
        return [f for f in diagnose(queue.storage, queue.registry) if f.code == "lease_expired"]

    (finding,) = wait_until(expired, what="the lease to expire")
    assert finding.severity == "error" and finding.detail["job_id"] == lost
    assert codes(queue, stuck_within=1) == [("lease_expired", "error")]


def test_a_saturated_concurrency_key(queue: JobQueue) -> None:
    queue.register("sync", noop, concurrency=Concurrency(2, key=lambda p: p["account"]))
    register_worker(queue)
    ids = [queue.enqueue("sync", {"account": 1}) for _ in range(3)]

    def saturated(registry: HandlerRegistry = queue.registry, minutes: float = 0) -> list[Finding]:
        found = diagnose(queue.storage, registry, backlog_minutes=minutes)
        return [f for f in found if f.code == "concurrency_saturated"]

    assert claim(queue) == ids[:1]
    assert saturated() == []  # one slot of two is free
    assert claim(queue) == ids[1:2]
    (finding,) = wait_until(saturated, what="the key to be held for some time")
    assert finding.severity == "warning"
    assert (finding.detail["key"], finding.detail["limit"]) == ("sync:1", 2)
    assert sorted(finding.detail["running"]) == sorted(ids[:2])
    assert saturated(minutes=15) == []  # held for less than 15 minutes
    assert saturated(JobQueue(queue.storage).registry) == []  # limits are the handlers'


def test_errors_come_first(queue: JobQueue) -> None:
    queue.register("work", noop)
    queue.pause("default")
    queue.enqueue("work")
    assert codes(queue) == [("no_worker", "error"), ("paused_backlog", "warning")]


# -- backend checks -------------------------------------------------------------------------


def test_a_sqlite_file_out_of_wal_mode(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    storage = SQLAlchemyStorage(engine)
    storage.initialize()
    assert sql_findings(storage) == []  # dbjobq puts the file in WAL mode

    # An application hook that runs after dbjobq's and switches the journal back.
    @sa.event.listens_for(engine, "connect")
    def rollback_journal(dbapi_connection: object, record: object) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=DELETE")  # type: ignore[attr-defined]

    engine.dispose()
    (finding,) = sql_findings(storage)
    assert (finding.code, finding.severity) == ("sqlite_not_wal", "error")
    assert finding.detail["journal_mode"] == "delete"
    storage.close()


def test_sqlite_in_memory_has_no_journal_to_check() -> None:
    storage = SQLAlchemyStorage("sqlite://")
    storage.initialize()
    assert sql_findings(storage) == []
    storage.close()


def test_postgresql_autovacuum_off(postgres_config: StorageConfig) -> None:
    storage = postgres_config.open()
    storage.initialize()
    table = f"{postgres_config.schema}.{postgres_config.table_prefix}jobs"
    try:
        with storage.engine.connect() as conn:
            server = conn.exec_driver_sql("SHOW autovacuum").scalar()
        # The server's own setting is reported as it is (test servers often turn it off).
        expected = [] if server == "on" else [{"scope": "server", "setting": server}]
        assert [dict(f.detail) for f in sql_findings(storage)] == expected
        with storage.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        (finding,) = [f for f in sql_findings(storage) if f.detail["scope"] == "table"]
        assert (finding.code, finding.severity) == ("autovacuum_off", "error")
        assert finding.detail["reloptions"] == ["autovacuum_enabled=false"]
        assert finding.text.startswith(f"autovacuum is off for the table {table}: ")
        assert finding.fix == f"ALTER TABLE {table} RESET (autovacuum_enabled)"
    finally:
        with storage.engine.begin() as conn:
            storage._metadata.drop_all(conn)
        storage.close()


def test_a_backend_may_bring_its_own_checks() -> None:
    class Checked(MemoryStorage):
        def health_checks(self) -> list[Finding]:
            return [Finding("disk_full", "error", "the disk is full", "free some space")]

    queue = JobQueue(Checked())
    assert codes(queue) == [("disk_full", "error")]


# -- the commands ---------------------------------------------------------------------------


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("DBJOBQ_URL", "DBJOBQ_APP", "DBJOBQ_JSON"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


APP = """
from dbjobq import Concurrency, JobQueue, RateLimit

queue = JobQueue("{url}")


@queue.handler("sync", concurrency=Concurrency(1, key=lambda p: p["account"]))
def sync(ctx):
    return None


@queue.handler("call", rate_limit=RateLimit(10, per=60, key=lambda p: p["partner"]))
def call(ctx):
    return None
"""


def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    name = f"doctor_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP.format(url=url))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:queue"


def test_the_explain_command(capsys: pytest.CaptureFixture[str], url: str) -> None:
    queue = JobQueue(url)
    job_id = queue.enqueue("report", queue="reports", delay=600)
    queue.close()
    status, out, _ = run(capsys, "explain", job_id, "--url", url)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"job {job_id} (report, queue reports) is pending:"
    assert lines[1].startswith("  - due in 10m (run_at ")
    assert lines[2] == "  - no live worker takes jobs from queue reports"
    # Limits are the handler's: unchecked without it, where the storage has any.
    unchecked = ["limits_unknown"] if queue.storage.capabilities.limits else []
    if unchecked:
        assert lines[3].startswith("  - no handler of report is registered here (the command's")
    assert len(lines) == 3 + len(unchecked)
    status, out, _ = run(capsys, "explain", job_id, "--url", url, "--json")
    data = json.loads(out)
    assert status == 0 and data["job_id"] == job_id
    assert [r["code"] for r in data["reasons"]] == ["scheduled", "no_worker", *unchecked]
    status, out, err = run(capsys, "explain", "no-such-id", "--url", url)
    assert (status, out, err) == (1, "", "dbjobq explain: no job with id 'no-such-id'\n")


def test_the_explain_command_with_the_app_checks_limits(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = app(tmp_path, monkeypatch, url)
    queue = JobQueue(url)
    first = queue.enqueue("sync", {"account": 3}, concurrency_key="sync:3")
    second = queue.enqueue("sync", {"account": 3}, concurrency_key="sync:3")
    queue.close()
    _, out, _ = run(capsys, "explain", first, "--app", spec)
    assert "no handler" not in out
    holder = JobQueue(url)
    holder.register("sync", noop, concurrency=Concurrency(1, key=lambda p: p["account"]))
    assert claim(holder) == [first]
    holder.close()
    status, out, _ = run(capsys, "explain", second, "--app", spec, "--json")
    assert status == 0
    assert [r["code"] for r in json.loads(out)["reasons"]] == ["no_worker", "concurrency_full"]


def test_the_job_command_shows_the_key_and_the_limits(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = app(tmp_path, monkeypatch, url)
    queue = JobQueue(url)
    keyed = queue.enqueue("sync", {"account": 3}, concurrency_key="sync:3")
    called = queue.enqueue("call", {"partner": "acme"})
    plain = queue.enqueue("report")
    queue.close()
    _, out, _ = run(capsys, "job", keyed, "--app", spec)
    assert "concurrency key  sync:3" in out.splitlines()
    assert "limits           1 running per concurrency key" in out.splitlines()
    _, out, _ = run(capsys, "job", called, "--app", spec)
    assert "limits      10 starts per 60s per rate key" in out.splitlines()
    _, out, _ = run(capsys, "job", plain, "--url", url)
    assert "concurrency key" not in out and "limits" not in out


def test_the_doctor_command(capsys: pytest.CaptureFixture[str], url: str) -> None:
    queue = JobQueue(url)
    queue.initialize()
    queue.close()
    assert run(capsys, "doctor", "--url", url) == (0, "no problems found\n", "")
    assert json.loads(run(capsys, "doctor", "--url", url, "--json")[1]) == {
        "ok": True,
        "findings": [],
    }
    queue = JobQueue(url)
    queue.enqueue("report", run_at=queue.storage.now() - timedelta(minutes=30))
    queue.pause("mail")
    queue.enqueue("mail", queue="mail")
    queue.close()
    status, out, _ = run(capsys, "doctor", "--url", url)
    assert status == 1
    assert out.splitlines() == [
        "error: 1 pending job(s) of type report in queue default, and no live worker handles them",
        "  fix: start a worker on queue default with a handler for report "
        "(dbjobq worker APP --queues default)",
        "error: 1 pending job(s) of type mail in queue mail, and no live worker handles them",
        "  fix: start a worker on queue mail with a handler for mail "
        "(dbjobq worker APP --queues mail)",
        "error: the oldest due job of queue default has waited 30 min (more than 15)",
        "  fix: add workers (or --concurrency) on queue default, or see what holds its jobs: "
        "dbjobq jobs --status pending --queue default, then dbjobq explain ID",
        "warning: queue mail is paused with 1 pending job(s)",
        "  fix: resume it once the pause is over: dbjobq resume mail",
        "",
        "3 error(s), 1 warning(s)",
    ]
    status, out, _ = run(capsys, "doctor", "--url", url, "--backlog-minutes", "45", "--json")
    data = json.loads(out)
    assert status == 1 and data["ok"] is False
    assert [f["code"] for f in data["findings"]] == ["no_worker", "no_worker", "paused_backlog"]
    status, _, err = run(capsys, "doctor", "--url", url, "--backlog-minutes", "soon")
    assert status == 2 and "--backlog-minutes must be a number" in err


def test_rate_limits_are_the_handlers(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = app(tmp_path, monkeypatch, url)
    holder = JobQueue(url)
    holder.register("call", noop, rate_limit=RateLimit(1, per=60, key=lambda p: p["partner"]))
    ids = [holder.enqueue("call", {"partner": "acme"}) for _ in range(2)]
    assert claim(holder) == ids[:1]
    holder.close()
    # The app allows 10 per minute: one start leaves room, whatever the holder's limit was.
    _, out, _ = run(capsys, "explain", ids[1], "--app", spec, "--json")
    assert [r["code"] for r in json.loads(out)["reasons"]] == ["no_worker"]
