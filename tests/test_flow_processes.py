"""Flow control across worker processes: limits that hold on the database, and a SIGKILL.

Three processes of four worker threads each (`tests/proc_flow_worker.py`) share one
database. Their handlers write a ledger of every run (start and end, wall time, pid);
the tests read it back and check the limits at every instant.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dbjobq import Job, JobQueue, JobSpec, JobStatus

from .conftest import StorageConfig
from .helpers import Processes, wait_until

pytestmark = pytest.mark.slow  # on SQLite (a file), PostgreSQL and MySQL/MariaDB: sql_config
ROOT = Path(__file__).resolve().parent.parent
LIMIT = 2  # the Concurrency of the "sync" handler in proc_flow_worker
KEYS = 10
JOBS = 300


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes("tests.proc_flow_worker")
    try:
        yield procs
    finally:
        procs.kill_all()


@dataclasses.dataclass
class Run:
    """One handler call, as its ledger lines tell it (times are wall-clock seconds)."""

    job_id: str
    key: str
    pid: int
    start: float
    started_at: float  # the job's started_at, as the database recorded it
    end: float | None = None


def read_ledgers(ledgers: Iterable[Path]) -> list[Run]:
    """Every run in the ledger files (one file per process)."""
    found: list[Run] = []
    for ledger in ledgers:
        running: dict[str, Run] = {}
        for line in ledger.read_text().splitlines() if ledger.exists() else []:
            fields = line.split()
            if fields[0] == "start":
                job_id, key, pid, start, started_at = fields[1:]
                assert job_id not in running, f"{job_id} started again while it ran: {ledger}"
                running[job_id] = Run(job_id, key, int(pid), float(start), float(started_at))
                found.append(running[job_id])
            else:
                running.pop(fields[1]).end = float(fields[2])
    return found


def peaks(intervals: Iterable[tuple[str, float, float]]) -> dict[str, int]:
    """The most intervals of each key open at one instant (an end before a start at a tie)."""
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for key, start, end in intervals:
        assert end >= start
        events[key] += [(start, 1), (end, -1)]
    found = {}
    for key, points in events.items():
        open_now = peak = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):
            open_now += step
            peak = max(peak, open_now)
        found[key] = peak
    return found


def finished(queue: JobQueue) -> int:
    counts = queue.counts().get("default", {})
    return sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))


def enqueue_sync_jobs(queue: JobQueue) -> list[str]:
    # Grouped by key (30 jobs of key 0 first, ...): a claim that ignored the limit would
    # hand the first jobs of one key to every free worker at once.
    return queue.enqueue_many(
        JobSpec(type="sync", payload={"key": n // (JOBS // KEYS), "n": n}) for n in range(JOBS)
    )


def seconds(at: datetime | None) -> float:
    assert at is not None and at.tzinfo is not None
    return at.timestamp()


def test_three_processes_never_run_more_than_the_limit_of_one_key(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    queue = JobQueue(sql_config.open())
    ledgers = [tmp_path / f"ledger-{n}.txt" for n in range(3)]
    procs = processes.start(sql_config, ledgers, workers=4, sleep=0.05)
    ids = enqueue_sync_jobs(queue)
    wait_until(lambda: finished(queue) == JOBS, timeout=90, what=f"{JOBS} jobs to finish")
    processes.stop(procs)

    runs = read_ledgers(ledgers)
    assert Counter(run.job_id for run in runs) == Counter(ids)  # each job ran exactly once
    assert all(run.end is not None for run in runs)
    found = peaks((run.key, run.start, run.end or run.start) for run in runs)
    assert len(found) == KEYS
    assert max(found.values()) <= LIMIT, found
    assert max(found.values()) == LIMIT, found  # runs of one key did overlap
    assert len({run.pid for run in runs}) == 3  # every process took part
    jobs = [queue.get_job(i) for i in ids]
    assert {(job.status, job.attempts) for job in jobs} == {(JobStatus.COMPLETED, 1)}
    queue.close()


def held_by(queue: JobQueue, pid: int) -> list[Job]:
    """The jobs that a process's workers hold a lease on."""
    running = queue.list_jobs(JobStatus.RUNNING, limit=None)
    return [job for job in running if job.worker_id and f":{pid}:" in job.worker_id]


def test_a_killed_process_frees_its_keys_when_its_leases_expire(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    lease = 3.0
    queue = JobQueue(sql_config.open())
    ledgers = [tmp_path / f"ledger-{n}.txt" for n in range(3)]
    # Only the victim has a short lease: under SQLite's one writer at a time, a write of
    # a survivor can wait more than 2 s, and with a lease that short its outcome could be
    # lost and its job run again (which the checks below would count as a double run).
    # Its jobs are slower, so that it surely holds some at the instant it is killed.
    [victim] = processes.start(sql_config, ledgers[:1], workers=4, sleep=0.5, lease=lease)
    survivors = processes.start(sql_config, ledgers[1:], workers=4, sleep=0.05)
    ids = enqueue_sync_jobs(queue)
    # Mid-run: the victim has run some jobs and holds leases on others.
    wait_until(
        lambda: finished(queue) >= JOBS // 5 and held_by(queue, victim.pid),
        timeout=60,
        what="the victim to hold jobs mid-run",
    )
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = time.time()
    held = {job.id: job for job in held_by(queue, victim.pid)}
    assert held, "the victim held no job when it was killed"
    for job in held.values():
        # Its leases are not renewed any more: each ends within `lease` of the kill.
        assert seconds(job.lease_expires_at) <= killed_at + lease + 0.01

    wait_until(lambda: finished(queue) == JOBS, timeout=90, what=f"{JOBS} jobs to finish")
    logged = processes.stop(survivors)
    print(logged)  # shown with -rP: what the survivors warned about

    runs = read_ledgers(ledgers)
    victims = [run for run in runs if run.pid == victim.pid]
    others = [run for run in runs if run.pid != victim.pid]
    assert victims and others
    # A run of the killed process simply stopped: it ends at the kill at the latest.
    for run in victims:
        assert run.end is not None or run.job_id in held, run
    assert all(run.end is not None for run in others)
    found = peaks((r.key, r.start, killed_at if r.end is None else r.end) for r in runs)
    assert max(found.values()) <= LIMIT, found
    # Stronger: the victim's slots stay taken until its leases expire, not only until
    # the kill. A held job's slot runs from its claim to its lease's expiry.
    slots = [
        (r.key, r.start, r.end)
        for r in runs
        if r.end is not None and not (r.pid == victim.pid and r.job_id in held)
    ]
    # It begins when its handler started (on PostgreSQL the job's started_at is the
    # claim transaction's start, a little before the claim admitted it).
    began = {r.job_id: r.start for r in victims if r.job_id in held}
    slots += [
        (
            str(job.payload["key"]),
            began.get(job.id, seconds(job.started_at)),
            seconds(job.lease_expires_at),
        )
        for job in held.values()
    ]
    found = peaks(slots)
    assert max(found.values()) <= LIMIT, found

    # Every job completed; the victim's held jobs once more by a survivor, after the
    # lease expired; no other job ran twice.
    starts = Counter(run.job_id for run in others)
    assert starts == Counter(ids) - Counter(r.job_id for r in victims if r.job_id not in held), (
        logged
    )
    for job_id in ids:
        job = queue.get_job(job_id)
        assert job.status is JobStatus.COMPLETED, job
        if job_id in held:
            assert job.attempts == 2, job
            assert seconds(job.started_at) >= seconds(held[job_id].lease_expires_at)
        else:
            assert job.attempts == 1, job
    queue.close()


def test_a_rate_limit_holds_across_processes(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    count, per, jobs = 10, 1.0, 50  # RateLimit(10, per=1.0) in proc_flow_worker
    queue = JobQueue(sql_config.open())
    ledgers = [tmp_path / f"ledger-{n}.txt" for n in range(3)]
    procs = processes.start(sql_config, ledgers, workers=4)
    began = time.monotonic()
    ids = queue.enqueue_many(JobSpec(type="call") for _ in range(jobs))
    wait_until(lambda: finished(queue) == jobs, timeout=60, what=f"{jobs} calls to finish")
    took = time.monotonic() - began
    processes.stop(procs)

    runs = read_ledgers(ledgers)
    assert Counter(run.job_id for run in runs) == Counter(ids)
    starts = sorted(run.started_at for run in runs)  # as the database recorded them
    for i, at in enumerate(starts):
        window = [s for s in starts[i:] if s - at < per]
        assert len(window) <= count, (i, window)
    # So the 41st start came at least 4 windows after the first: 50 jobs take >= 4 s.
    assert starts[-1] - starts[0] >= 4 * per
    assert took >= 4 * per
    assert len({run.pid for run in runs}) > 1
    jobs_after = [queue.get_job(i) for i in ids]
    assert {(job.status, job.attempts) for job in jobs_after} == {(JobStatus.COMPLETED, 1)}
    queue.close()
