"""The reliability harness: scratch databases, worker processes, and the invariants.

Two independent records are checked after every scenario: the ledger that the
handler writes from inside the worker processes, and the queue's own tables,
including an audit table filled by a database trigger on every change of a job's
status or lease token (and on any write to a finished job).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbjobq import JobQueue
from dbjobq.storage import SQLAlchemyStorage

from .proc import WORKER_MAX_RETRIES

ROOT = Path(__file__).resolve().parents[2]
FINISHED = {"completed", "failed", "cancelled"}


@dataclasses.dataclass
class Store:
    """A scratch place for one scenario's tables: its URL, prefix and schema."""

    backend: str
    url: str
    prefix: str
    schema: str | None = None

    def open(self) -> SQLAlchemyStorage:
        return SQLAlchemyStorage(self.url, table_prefix=self.prefix, schema=self.schema)

    def queue(self) -> JobQueue:
        return JobQueue(self.open())

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{self.prefix}{name}" if self.schema else f"{self.prefix}{name}"

    def install_audit(self) -> None:
        """Create the tables and an audit trigger that logs every interesting update."""
        storage = self.open()
        storage.initialize()
        jobs, audit = self.qualified("jobs"), self.qualified("audit")
        trigger = f"{self.prefix}audit_trg"
        with storage.engine.begin() as conn:
            if self.backend == "postgresql":
                conn.exec_driver_sql(
                    f"CREATE TABLE {audit} (seq bigserial PRIMARY KEY, job_id varchar(36), "
                    "old_status varchar(16), new_status varchar(16), old_token varchar(32), "
                    "new_token varchar(32), attempts int, result text, at double precision)"
                )
                function = self.qualified("audit_fn")
                conn.exec_driver_sql(
                    f"CREATE FUNCTION {function}() RETURNS trigger AS $$ BEGIN "
                    f"INSERT INTO {audit} (job_id, old_status, new_status, old_token, "
                    "new_token, attempts, result, at) VALUES (NEW.id, OLD.status, "
                    "NEW.status, OLD.lease_token, NEW.lease_token, NEW.attempts, "
                    "NEW.result::text, extract(epoch from clock_timestamp())); "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {trigger} AFTER UPDATE ON {jobs} FOR EACH ROW WHEN "
                    "(OLD.status IS DISTINCT FROM NEW.status OR OLD.lease_token IS "
                    "DISTINCT FROM NEW.lease_token OR OLD.status IN ('completed', "
                    f"'failed', 'cancelled')) EXECUTE FUNCTION {function}()"
                )
            elif self.backend == "sqlite":
                conn.exec_driver_sql(
                    f"CREATE TABLE {audit} (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id "
                    "TEXT, old_status TEXT, new_status TEXT, old_token TEXT, new_token TEXT, "
                    "attempts INT, result TEXT, at REAL)"
                )
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {trigger} AFTER UPDATE ON {jobs} WHEN OLD.status IS NOT "
                    "NEW.status OR OLD.lease_token IS NOT NEW.lease_token OR OLD.status IN "
                    f"('completed', 'failed', 'cancelled') BEGIN INSERT INTO {audit} (job_id, "
                    "old_status, new_status, old_token, new_token, attempts, result, at) "
                    "VALUES (NEW.id, OLD.status, NEW.status, OLD.lease_token, "
                    "NEW.lease_token, NEW.attempts, NEW.result, "
                    "(julianday('now') - 2440587.5) * 86400.0); END"
                )
            else:
                conn.exec_driver_sql(
                    f"CREATE TABLE {audit} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, job_id "
                    "VARCHAR(36), old_status VARCHAR(16), new_status VARCHAR(16), old_token "
                    "VARCHAR(32), new_token VARCHAR(32), attempts INT, result LONGTEXT, "
                    "at DOUBLE)"
                )
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {self.qualified('audit_trg')} AFTER UPDATE ON {jobs} "
                    "FOR EACH ROW BEGIN IF NOT (OLD.status <=> NEW.status) OR NOT "
                    "(OLD.lease_token <=> NEW.lease_token) OR OLD.status IN ('completed', "
                    f"'failed', 'cancelled') THEN INSERT INTO {audit} (job_id, old_status, "
                    "new_status, old_token, new_token, attempts, result, at) VALUES (NEW.id, "
                    "OLD.status, NEW.status, OLD.lease_token, NEW.lease_token, NEW.attempts, "
                    "NEW.result, UNIX_TIMESTAMP(NOW(6))); END IF; END"
                )
        storage.close()

    def audit(self) -> list[dict[str, Any]]:
        storage = self.open()
        with storage.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT job_id, old_status, new_status, old_token, new_token, attempts, "
                f"result, at FROM {self.qualified('audit')} ORDER BY seq"
            ).mappings()
            found = [dict(r) for r in rows]
        storage.close()
        return found


def _allowed(stored_max_retries: int) -> int:
    """Attempts a job may take; -1 (no max_retries of its own) is the workers' value."""
    retries = WORKER_MAX_RETRIES if stored_max_retries == -1 else stored_max_retries
    return retries + 1


@contextmanager
def scratch_store(backend: str, work: Path) -> Iterator[Store]:
    """A fresh place for tables: a SQLite file, a PostgreSQL schema, a MySQL database."""
    prefix = f"r{uuid.uuid4().hex[:8]}_"
    if backend == "sqlite":
        yield Store("sqlite", f"sqlite:///{work / 'jobs.db'}", prefix)
        return
    variable = {"postgresql": "DBJOBQ_TEST_POSTGRES_URL", "mysql": "DBJOBQ_TEST_MYSQL_URL"}[backend]
    url = os.environ.get(variable)
    if not url:
        raise LookupError(f"set {variable} to run the {backend} scenarios")
    name = f"dbjobq_rel_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = SQLAlchemyStorage(url).engine
    create, drop = (
        ("CREATE SCHEMA {}", "DROP SCHEMA {} CASCADE")
        if backend == "postgresql"
        else ("CREATE DATABASE {} CHARACTER SET utf8mb4", "DROP DATABASE {}")
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(create.format(name))
    try:
        yield Store(backend, url, prefix, name)
    finally:
        engine.dispose()  # its pooled connection may have been killed by the scenario
        with engine.begin() as conn:
            conn.exec_driver_sql(drop.format(name))
        engine.dispose()


class Processes:
    """Worker processes of one scenario; none outlives it."""

    def __init__(self, store: Store, work: Path, **defaults: Any) -> None:
        self.store = store
        self.work = work
        self.defaults = defaults
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.killed: list[tuple[int, float]] = []  # (pid, when), by us or by itself
        self.summaries: list[dict[str, Any]] = []
        self.armed: set[int] = set()  # processes started with a fault point armed
        self._n = 0

    def start(self, **options: Any) -> int:
        self._n += 1
        ledger = self.work / f"ledger-{self._n}.txt"
        summary = self.work / f"summary-{self._n}.json"
        opts = {**self.defaults, **options}
        cmd = [
            sys.executable,
            "-m",
            "tests.reliability.proc",
            "--url",
            self.store.url,
            "--prefix",
            self.store.prefix,
            "--ledger",
            str(ledger),
            "--summary",
            str(summary),
        ]
        if self.store.schema:
            cmd += ["--schema", self.store.schema]
        for key, value in opts.items():
            flag = f"--{key.replace('_', '-')}"
            cmd += [flag] if value is True else [flag, str(value)]
        log = open(self.work / f"stderr-{self._n}.txt", "w")  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"worker process did not start: {line!r}")
        proc.summary_path = summary  # type: ignore[attr-defined]
        self.procs[proc.pid] = proc
        if opts.get("fault"):
            self.armed.add(proc.pid)
        return proc.pid

    @staticmethod
    def _close(proc: subprocess.Popen[str]) -> None:
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.killed.append((pid, time.time()))
        self._close(self.procs.pop(pid))

    def reap_dead(self) -> list[int]:
        """Notice processes that died by themselves (an armed fault killed them)."""
        dead = [pid for pid, p in self.procs.items() if p.poll() is not None]
        for pid in dead:
            self.killed.append((pid, time.time()))
            self._close(self.procs.pop(pid))
        return dead

    def alive(self) -> list[int]:
        return [pid for pid, p in self.procs.items() if p.poll() is None]

    def stop_all(self, timeout: float = 60) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            self._close(proc)
            path: Path = proc.summary_path  # type: ignore[attr-defined]
            if path.exists():
                self.summaries.append(json.loads(path.read_text()))
            elif proc.pid in self.armed and proc.returncode == -signal.SIGKILL:
                # Its armed fault point killed it on its last jobs, after the last reap:
                # a fault death like the others, not a process that lost its summary.
                self.killed.append((proc.pid, time.time()))
            else:
                self.summaries.append({"pid": proc.pid, "missing": True, "code": proc.returncode})
        self.procs.clear()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            self._close(proc)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.work.glob("stderr-*.txt")))


@contextmanager
def processes(store: Store, work: Path, **defaults: Any) -> Iterator[Processes]:
    group = Processes(store, work, **defaults)
    try:
        yield group
    finally:
        group.kill_all()


def read_ledger(work: Path) -> list[tuple[str, str, int, int, float]]:
    events = []
    for path in sorted(work.glob("ledger-*.txt")):
        for line in path.read_text().splitlines():
            event, job_id, attempt, pid, when = line.split()
            events.append((event, job_id, int(attempt), int(pid), float(when)))
    return events


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, tick: Callable[[], None] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        if tick is not None:
            tick()
        time.sleep(0.1)


def unfinished(queue: JobQueue, ids: list[str]) -> int:
    counts = queue.counts()
    return sum(q.get("pending", 0) + q.get("running", 0) for q in counts.values())


@dataclasses.dataclass
class Report:
    """One row of the results table."""

    scenario: str
    backend: str
    jobs: int = 0
    faults: int = 0
    lost: int = 0
    double_completed: int = 0
    re_executed: int = 0
    unexplained_re_executions: int = 0
    max_rescue_delay: float | None = None
    rescue_bound: float | None = None
    violations: list[str] = dataclasses.field(default_factory=list)
    notes: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


def check(
    report: Report,
    store: Store,
    ids: list[str],
    work: Path,
    *,
    killed: list[tuple[int, float]] = (),  # type: ignore[assignment]
    explained: set[str] = frozenset(),  # type: ignore[assignment]
    expect_completed: bool = True,
    max_attempts: int | None = None,
    rescue_bound: float | None = None,
) -> Report:
    """Check both records against the invariants and fill in the report."""
    queue = store.queue()
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    table = storage._jobs
    with storage.engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    table.c.id,
                    table.c.status,
                    table.c.attempts,
                    table.c.max_retries,
                    table.c.result,
                )
            )
        }
    queue.close()
    report.jobs = len(ids)
    lost = [i for i in ids if i not in rows or rows[i].status not in FINISHED]
    report.lost = len(lost)
    if lost:
        report.violations.append(f"{len(lost)} job(s) not finished, e.g. {lost[0]}")
    if expect_completed:
        not_done = [i for i in ids if i in rows and rows[i].status != "completed"]
        if not_done:
            report.violations.append(f"{len(not_done)} job(s) not completed, e.g. {not_done[0]}")
    over = [i for i, r in rows.items() if r.attempts > (max_attempts or _allowed(r.max_retries))]
    if over:
        report.violations.append(f"{len(over)} job(s) over their attempt limit")

    # The audit trail: every transition must be legal; completion happens once.
    audit = store.audit()
    completions = Counter(a["job_id"] for a in audit if a["new_status"] == "completed")
    doubles = [j for j, n in completions.items() if n > 1]
    illegal = [
        a
        for a in audit
        if (a["old_status"] in FINISHED and a["new_status"] != "pending")
        or (a["old_status"] == a["new_status"] == "running" and a["old_token"] != a["new_token"])
    ]
    # The ledger: each recorded result must be the outcome of the job's last attempt.
    ledger = read_ledger(work)
    ends = {(job_id, attempt, pid) for event, job_id, attempt, pid, _ in ledger if event == "end"}
    stale = []
    for job_id, row in rows.items():
        result = row.result
        if row.status != "completed" or not isinstance(result, dict) or "pid" not in result:
            continue
        if result["attempt"] != row.attempts or (
            (job_id, result["attempt"], result["pid"]) not in ends
        ):
            stale.append(job_id)
    report.double_completed = len(set(doubles) | set(stale))
    if doubles:
        report.violations.append(f"{len(doubles)} job(s) completed twice, e.g. {doubles[0]}")
    if stale:
        report.violations.append(f"{len(stale)} result(s) from a stale attempt, e.g. {stale[0]}")
    if illegal:
        report.violations.append(f"{len(illegal)} illegal transition(s), e.g. {illegal[0]}")

    # Re-execution must be explained by a fault: every attempt but the last ran in a
    # process that was killed, or a fault was aimed at the job itself.
    starts: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    ended = set()
    for event, job_id, attempt, pid, when in ledger:
        if event == "start":
            starts[job_id].append((attempt, pid, when))
        else:
            ended.add((job_id, attempt))
    kill_time = dict(killed)
    again = [j for j, runs in starts.items() if len(runs) > 1]
    report.re_executed = len(again)
    unexplained = [
        j
        for j in again
        if j not in explained and not all(pid in kill_time for _, pid, _ in sorted(starts[j])[:-1])
    ]
    report.unexplained_re_executions = len(unexplained)
    if unexplained:
        report.violations.append(
            f"{len(unexplained)} job(s) ran again without a fault, e.g. {unexplained[0]}"
        )
    # Rescue delay: from a kill to the rescue of each job the killed process held, as
    # the audit trail saw it (running -> pending or failed, on the database's clock).
    rescues: dict[str, list[float]] = defaultdict(list)
    for a in audit:
        if a["old_status"] == "running" and a["new_status"] in ("pending", "failed"):
            rescues[a["job_id"]].append(float(a["at"]))
    delays = []
    for job_id, runs in starts.items():
        for attempt, pid, _ in runs:
            if pid in kill_time and (job_id, attempt) not in ended:
                after = [t for t in rescues[job_id] if t >= kill_time[pid] - 0.5]
                if after:
                    delays.append(max(0.0, min(after) - kill_time[pid]))
    report.max_rescue_delay = max(delays) if delays else None
    report.rescue_bound = rescue_bound
    if rescue_bound is not None and delays and max(delays) > rescue_bound:
        report.violations.append(
            f"rescue took {max(delays):.2f}s, more than the bound of {rescue_bound:.2f}s"
        )
    return report


def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dbjobq-reliability-") as tmp:
        yield Path(tmp)
