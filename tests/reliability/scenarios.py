"""The reliability scenarios. Each returns a `Report`; none leaves a process behind.

Every scenario takes `size`: "quick" for CI, "full" for the published figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbjobq import JobQueue, JobSpec

from .harness import (
    Processes,
    Report,
    Store,
    check,
    processes,
    read_ledger,
    unfinished,
    wait_until,
)

LEASE = 2.0
MAX_POLL = 0.25
RESCUE_BOUND = LEASE + MAX_POLL + 1.0  # lease + poll interval + 1 s


def _work(n: int, ms: Callable[[int], int]) -> list[JobSpec]:
    return [JobSpec(type="work", payload={"ms": ms(i)}) for i in range(n)]


def contention(store: Store, work: Path, size: str, *, no_busy_wait: bool = False) -> Report:
    """4 processes x 4 worker threads drain a pile of no-op jobs: each exactly once."""
    jobs = 20_000 if size == "full" else 1_000
    name = "contention" + (" (no busy timeout)" if no_busy_wait else "")
    report = Report(name, store.backend)
    store.install_audit()
    queue = store.queue()
    extra = {"busy_timeout": 0} if no_busy_wait else {}
    # The default 30 s lease, as in production: with 16 threads on 2 cores, a 2 s lease
    # is shorter than the worst write wait under this load, and a job whose outcome
    # write waits past its lease is (correctly) rescued and run again.
    with processes(store, work, threads=4, lease=30.0, max_poll=MAX_POLL, **extra) as group:
        for _ in range(4):
            group.start()
        began = time.monotonic()
        ids = queue.enqueue_many(_work(jobs, lambda i: 0))
        wait_until(lambda: unfinished(queue, ids) == 0, 600, "the queue to drain")
        elapsed = time.monotonic() - began
        group.stop_all()
        summaries = group.summaries
    queue.close()
    check(report, store, ids, work)
    _check_processes(report, summaries)
    report.notes = f"{jobs / elapsed:.0f} jobs/s"
    return report


def crash(store: Store, work: Path, size: str) -> Report:
    """Kill a random worker process every ~2 s and start a replacement; arm each fault
    point once. Nothing may be lost or completed twice, and only jobs in flight at a
    kill may run again."""
    jobs, kills, every = (5_000, 10, 2.0) if size == "full" else (500, 4, 0.8)
    report = Report("crash", store.backend)
    store.install_audit()
    queue = store.queue()
    rng = random.Random(7)
    # 5-50 ms jobs, and a few long ones, so that heartbeats happen mid-job.
    specs = _work(jobs, lambda i: 1500 if i % 97 == 0 else rng.randint(5, 50))
    faults = ["after_claim:kill", "heartbeat:kill", "before_outcome:kill", "after_outcome:kill"]
    with processes(store, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
        for _ in range(3):
            group.start()
        ids = queue.enqueue_many(specs)
        done_kills = 0
        next_kill = time.monotonic() + every
        while unfinished(queue, ids) or done_kills < kills:
            time.sleep(0.05)
            for _ in group.reap_dead():  # an armed fault point killed its process
                report.faults += 1
                group.start()
            if time.monotonic() >= next_kill and (done_kills < kills or unfinished(queue, ids)):
                alive = group.alive()
                if alive and done_kills < kills:
                    group.kill(rng.choice(alive))
                    done_kills += 1
                    report.faults += 1
                    fault = faults.pop(0) if faults else None
                    group.start(**({"fault": fault} if fault else {}))
                next_kill = time.monotonic() + every
            if done_kills >= kills and not unfinished(queue, ids):
                break
        wait_until(lambda: unfinished(queue, ids) == 0, 300, "the queue to drain")
        group.stop_all()
    queue.close()
    check(report, store, ids, work, killed=group.killed, rescue_bound=RESCUE_BOUND)
    _check_processes(report, group.summaries)
    report.notes = f"{done_kills} kills, {len(group.killed) - done_kills} fault-point deaths"
    return report


def outage(store: Store, work: Path, size: str) -> Report:
    """Terminate the workers' database connections again and again."""
    jobs, seconds = (3_000, 20.0) if size == "full" else (600, 5.0)
    report = Report("connection kills", store.backend)
    store.install_audit()
    queue = store.queue()
    admin = store.open()  # a connection pool of its own
    with processes(store, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
        for _ in range(2):
            group.start()
        ids = queue.enqueue_many(_work(jobs, lambda i: 10))
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            report.faults += _kill_connections(admin.engine)
            time.sleep(0.3)
        queue.close()
        queue = store.queue()
        wait_until(lambda: unfinished(queue, ids) == 0, 300, "the queue to drain")
        group.stop_all()
    admin.close()
    queue.close()
    check(report, store, ids, work, explained=set(ids))
    _check_processes(report, group.summaries, max_logs_per_process=60)
    logged = max(sum(s["log_counts"].values()) for s in group.summaries)
    report.notes = f"at most {logged} log records per process"
    return report


def _kill_connections(admin: sa.Engine) -> int:
    """End every other client connection to the database; return how many."""
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            return len(
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid() AND backend_type = "
                    "'client backend'"
                ).all()
            )
        ids = conn.exec_driver_sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND "
            "USER = SUBSTRING_INDEX(USER(), '@', 1) AND ID <> CONNECTION_ID() AND "
            "COMMAND <> 'Daemon'"
        ).scalars()
        killed = 0
        for connection_id in ids:
            with contextlib.suppress(sa.exc.DBAPIError):  # it may be gone already
                conn.exec_driver_sql(f"KILL CONNECTION {int(connection_id)}")
                killed += 1
        return killed


def server_restart(store: Store, work: Path, size: str) -> Report:
    """Stop a PostgreSQL server of the test's own for a while, then start it again."""
    down_for = 20.0 if size == "full" else 5.0
    jobs = 2_000 if size == "full" else 400
    report = Report("server down", store.backend)
    with own_postgres() as (url, pg_dir):
        own = Store("postgresql", url, store.prefix, None)
        own.install_audit()
        queue = own.queue()
        with processes(own, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
            for _ in range(2):
                group.start()
            ids = queue.enqueue_many(_work(jobs, lambda i: 20))
            wait_until(lambda: len(read_ledger(work)) > 50, 60, "work to start")
            queue.close()
            _pg_ctl(pg_dir, "stop", "-m", "immediate")  # as if the server crashed
            report.faults += 1
            time.sleep(down_for)
            _pg_ctl(pg_dir, "start", "-w", "-l", str(pg_dir / "pg.log"))
            queue = own.queue()
            wait_until(lambda: unfinished(queue, ids) == 0, 300, "the queue to drain")
            group.stop_all()
        queue.close()
        check(report, own, ids, work, explained=set(ids))
    # One outage: each worker thread reports its failing polls and writes once (and
    # again every 30 s), the jobs it had to give up, and the recovery; the process's
    # LISTEN connection reports its loss once (and again every 60 s): a bound that
    # does not grow with the length of the outage.
    per_process = 6 * 2 + 4 + int(down_for // 30) * 4 + 1 + int(down_for // 60)
    _check_processes(report, group.summaries, max_logs_per_process=per_process)
    logged = max(sum(s["log_counts"].values()) for s in group.summaries)
    report.notes = f"down {down_for:.0f}s, at most {logged} log records per process"
    return report


def bursts(store: Store, work: Path, size: str) -> Report:
    """3 worker processes while producers enqueue in bursts: no "database is locked"."""
    rounds = 30 if size == "full" else 4
    report = Report("enqueue bursts", store.backend)
    store.install_audit()
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce() -> None:
        queue = store.queue()
        try:
            for _ in range(rounds):
                got = queue.enqueue_many(_work(100, lambda i: 1))
                with lock:
                    ids.extend(got)
                for _ in range(20):
                    got_one = queue.enqueue("work", {"ms": 1})
                    with lock:
                        ids.append(got_one)
                time.sleep(0.05)
        except BaseException as error:
            errors.append(error)
        finally:
            queue.close()

    with processes(store, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
        for _ in range(3):
            group.start()
        producers = [threading.Thread(target=produce) for _ in range(3)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        queue = store.queue()
        wait_until(lambda: unfinished(queue, ids) == 0, 300, "the queue to drain")
        queue.close()
        group.stop_all()
    if errors:
        report.violations.append(f"a producer failed: {errors[0]!r}")
    check(report, store, ids, work)
    _check_processes(report, group.summaries)
    return report


def hostile(store: Store, work: Path, size: str) -> Report:
    """Handlers that raise SystemExit & co., return non-JSON or hang; rows corrupted by
    hand. Every job ends failed or completed with a readable reason."""
    report = Report("hostile handlers", store.backend)
    store.install_audit()
    queue = store.queue()
    modes = ["system_exit", "keyboard_interrupt", "generator_exit", "not_json", "hang"]
    specs = [
        JobSpec(type="work", payload={"mode": m}, max_retries=1, timeout=1.0) for m in modes
    ] + _work(50, lambda i: 1)
    ids = queue.enqueue_many(specs)
    corrupted = queue.enqueue("work", {"ms": 1})
    storage = queue.storage
    table = storage._jobs  # type: ignore[attr-defined]
    with storage.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            sa.update(table)
            .where(table.c.id == corrupted)
            .values(payload=sa.literal_column("'[1]'"))
        )
    report.faults = len(modes) + 1
    with processes(store, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
        group.start()
        wait_until(lambda: unfinished(queue, ids) == 0, 120, "the queue to drain")
        group.stop_all()
    all_ids = [*ids, corrupted]
    check(report, store, all_ids, work, expect_completed=False, explained=set(ids[: len(modes)]))
    inspector = store.open()
    with inspector.engine.connect() as conn:
        statuses: dict[str, str] = dict(conn.execute(sa.select(table.c.id, table.c.status)).all())
        errors: dict[str, str | None] = dict(
            conn.execute(sa.select(table.c.id, table.c.last_error)).all()
        )
    inspector.close()
    for job_id, mode in zip(ids, modes, strict=False):
        if statuses[job_id] != "failed" or not errors[job_id]:
            report.violations.append(f"{mode}: expected a failed job with a reason")
    if statuses[corrupted] != "failed" or "corrupt" not in (errors[corrupted] or ""):
        report.violations.append("the corrupted row was not failed with a reason")
    done = [i for i in ids[len(modes) :] if statuses[i] != "completed"]
    if done:
        report.violations.append(f"{len(done)} ordinary job(s) did not complete")
    _check_processes(report, group.summaries, max_logs_per_process=200)
    queue.close()
    return report


def shutdown(store: Store, work: Path, size: str) -> Report:
    """SIGTERM a process during long jobs: stop() returns within its timeout, and the
    jobs it gave up are rescued by another process. The library installs no signal
    handlers of its own."""
    report = Report("graceful stop", store.backend)
    store.install_audit()
    queue = store.queue()
    ids = queue.enqueue_many(_work(4, lambda i: 4000) + _work(40, lambda i: 5))
    with processes(store, work, threads=4, lease=LEASE, max_poll=MAX_POLL) as group:
        first = group.start(stop_timeout=1.0)
        wait_until(lambda: len(read_ledger(work)) >= 4, 30, "long jobs to start")
        proc = group.procs.pop(first)
        proc.terminate()
        group._close(proc)
        report.faults += 1
        summary = json.loads(proc.summary_path.read_text())  # type: ignore[attr-defined]
        if summary["stop_seconds"] > 1.0 + 1.0 + 0.5:
            report.violations.append(f"stop() took {summary['stop_seconds']:.1f}s")
        group.killed.append((first, time.time()))
        group.start()
        wait_until(lambda: unfinished(queue, ids) == 0, 120, "the queue to drain")
        group.stop_all()
        summaries = [summary, *group.summaries]
    queue.close()
    check(report, store, ids, work, killed=group.killed, rescue_bound=LEASE + MAX_POLL + 2.5)
    _check_processes(report, summaries, max_logs_per_process=50)
    report.notes = f"stop() returned in {summary['stop_seconds']:.2f}s (timeout 1 s)"
    return report


def pause(store: Store, work: Path, size: str, *, unfenced: bool = False) -> Report:
    """Freeze a worker process (SIGSTOP) mid-job for longer than its lease, let another
    process rescue and finish the job, then let the frozen one go on (SIGCONT). The
    fence must reject the frozen worker's late outcome."""
    report = Report("frozen worker" + (" (no fence)" if unfenced else ""), store.backend)
    store.install_audit()
    queue = store.queue()
    rounds = 3 if size == "full" else 1
    extra = {"unfenced": True} if unfenced else {}
    ids: list[str] = []
    with processes(store, work, threads=1, lease=LEASE, max_poll=MAX_POLL, **extra) as group:
        for _ in range(rounds):
            ids.append(_freeze_one(group, queue, work))
            report.faults += 1
        queue.close()
    check(report, store, ids, work, explained=set(ids))
    report.notes = "fence disabled: must fail" if unfenced else ""
    return report


def _freeze_one(group: Processes, queue: JobQueue, work: Path) -> str:
    victim = group.start()
    job_id = queue.enqueue("work", {"ms": 3000})
    wait_until(lambda: _ran(work, "start", job_id), 30, "the job to start")
    os.kill(victim, signal.SIGSTOP)
    rescuer = group.start()
    wait_until(lambda: _ran(work, "start", job_id, rescuer), 30, "the rescue")
    os.kill(victim, signal.SIGCONT)
    # Both handlers return; a graceful stop then lets each record its outcome.
    wait_until(
        lambda: _ran(work, "end", job_id, victim) and _ran(work, "end", job_id, rescuer),
        30,
        "both attempts to end",
    )
    group.stop_all()
    return job_id


def _ran(work: Path, event: str, job_id: str, pid: int | None = None) -> bool:
    """Whether the ledger has `event` for the job (from `pid`, if given)."""
    return any(
        e == event and j == job_id and (pid is None or p == pid)
        for e, j, _, p, _ in read_ledger(work)
    )


def clock_skew(store: Store, work: Path, size: str) -> Report:
    """Workers whose clocks are an hour ahead and an hour behind neither steal live
    leases nor delay rescue: leases and schedules run on the database's clock."""
    report = Report("clock skew", store.backend)
    store.install_audit()
    queue = store.queue()
    ids = queue.enqueue_many(_work(6, lambda i: 3000) + _work(60, lambda i: 10))
    with processes(store, work, threads=2, lease=LEASE, max_poll=MAX_POLL) as group:
        ahead = group.start(skew=3600)
        group.start(skew=-3600)
        wait_until(lambda: any(pid == ahead for _, _, _, pid, _ in read_ledger(work)), 30, "work")
        # Watch for longer than a lease: a lease judged on a skewed clock would be
        # taken over (and show as a re-execution) within this window.
        time.sleep(LEASE + 1)
        group.kill(ahead)
        report.faults += 1
        wait_until(lambda: unfinished(queue, ids) == 0, 120, "the queue to drain")
        group.stop_all()
    queue.close()
    check(report, store, ids, work, killed=group.killed, rescue_bound=RESCUE_BOUND)
    _check_processes(report, group.summaries)
    report.notes = "clocks +1 h and -1 h"
    return report


def _check_processes(
    report: Report, summaries: list[dict[str, Any]], max_logs_per_process: int = 20
) -> None:
    locked = sum(int(s.get("lock_errors", 0)) for s in summaries)
    if locked:
        report.violations.append(f'"database is locked" met {locked} time(s), retried or not')
    for s in summaries:
        if s.get("missing"):
            report.violations.append(f"process {s['pid']} left no summary (exit {s['code']})")
            continue
        if not s["threads_alive_throughout"]:
            report.violations.append(f"a worker thread died in process {s['pid']}")
        if not s["stopped"]:
            report.violations.append(f"process {s['pid']} did not stop in time")
        if not s["signal_handlers_untouched"]:
            report.violations.append("the library changed signal handlers")
        logged = sum(s["log_counts"].values())
        if logged > max_logs_per_process:
            report.violations.append(
                f"process {s['pid']} logged {logged} warnings/errors (bound "
                f"{max_logs_per_process}): {s['first_logs'][:3]}"
            )


# -- a PostgreSQL server of our own ---------------------------------------------------------

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _as_postgres(*cmd: str) -> list[str]:
    import os

    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


def _pg_ctl(work: Path, *args: str) -> None:
    subprocess.run(
        _as_postgres(str(PG_BIN[-1] / "pg_ctl"), "-D", str(work / "pgdata"), *args),
        check=True,
        capture_output=True,
        timeout=60,
    )


class own_postgres:  # noqa: N801 - used as a context manager, like a function
    """initdb a throwaway PostgreSQL cluster on a spare port, and remove it after."""

    def __enter__(self) -> tuple[str, Path]:
        import socket

        if not PG_BIN:
            raise LookupError("PostgreSQL server binaries are not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="dbjobq-pg-"))
        self.dir.chmod(0o777)  # the server runs as the postgres user
        data = self.dir / "pgdata"
        subprocess.run(
            _as_postgres(
                str(PG_BIN[-1] / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{data}'\nfsync = off\n"
            )
        _pg_ctl(self.dir, "start", "-w", "-l", str(self.dir / "pg.log"))
        return f"postgresql://postgres@127.0.0.1:{port}/postgres", self.dir

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg_ctl(self.dir, "stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


SCENARIOS: dict[str, tuple[Callable[[Store, Path, str], Report], tuple[str, ...]]] = {
    "contention": (contention, ("sqlite", "postgresql", "mysql")),
    "crash": (crash, ("sqlite", "postgresql", "mysql")),
    "connection kills": (outage, ("postgresql", "mysql")),
    "server down": (server_restart, ("postgresql",)),
    "enqueue bursts": (bursts, ("sqlite",)),
    "hostile handlers": (hostile, ("sqlite", "postgresql", "mysql")),
    "graceful stop": (shutdown, ("sqlite", "postgresql", "mysql")),
    "frozen worker": (pause, ("sqlite", "postgresql", "mysql")),
    "clock skew": (clock_skew, ("sqlite", "postgresql", "mysql")),
}

__all__ = ["SCENARIOS"]
