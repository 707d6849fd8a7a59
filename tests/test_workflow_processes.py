"""Workflows across worker processes, with SIGKILLs (`tests/proc_workflow_worker.py`).

On SQLite (a file), PostgreSQL and MySQL/MariaDB (`sql_config`): a group whose members
are drained by three processes racing, one of them killed mid-run, runs its callback
exactly once, after the last member; and a worker killed right after committing the
last parent's outcome leaves no child waiting.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbjobq import JobQueue, JobSpec, JobStatus, Worker

from .conftest import StorageConfig
from .helpers import Processes, wait_until

pytestmark = pytest.mark.slow
MEMBERS = 200


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes("tests.proc_workflow_worker")
    try:
        yield procs
    finally:
        procs.kill_all()


def _ledger(paths: list[Path]) -> list[tuple[str, str, int]]:
    lines = [line.split() for p in paths if p.exists() for line in p.read_text().splitlines()]
    return [(kind, job_id, int(pid)) for kind, job_id, pid in lines]


def test_a_group_callback_runs_once_though_a_worker_is_killed(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    queue = JobQueue(sql_config.open())
    group = queue.group(
        [JobSpec(type="member", payload={"n": n}) for n in range(MEMBERS)],
        then=JobSpec(type="callback"),
    )
    assert group.callback_id is not None
    ledgers = [tmp_path / f"ledger-{n}" for n in range(3)]
    victim, *others = processes.start(sql_config, ledgers, workers=2, lease=2.0, sleep=0.02)

    def members_run() -> int:
        return sum(1 for kind, _, _ in _ledger(ledgers) if kind == "member")

    wait_until(lambda: members_run() >= 40, timeout=120, what="40 member runs")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    callback_id = group.callback_id
    wait_until(
        lambda: queue.get_job(callback_id).status.is_finished, timeout=180, what="the callback"
    )
    processes.stop(others)

    runs = _ledger(ledgers)
    assert Counter(kind for kind, job_id, _ in runs if job_id == callback_id) == {"callback": 1}
    callback = queue.get_job(callback_id)
    assert callback.status is JobStatus.COMPLETED
    assert callback.result == sum(range(MEMBERS))
    members = [queue.get_job(job_id) for job_id in group.job_ids]
    assert {m.status for m in members} == {JobStatus.COMPLETED}
    assert {m.result for m in members} == set(range(MEMBERS))
    assert callback.started_at is not None
    assert all(m.finished_at is not None and m.finished_at <= callback.started_at for m in members)
    assert victim.pid in {pid for _, _, pid in runs}  # it took part before it died
    status = queue.get_group(group.id)
    assert status.completed == MEMBERS and status.finished
    queue.close()


def test_a_kill_right_after_the_last_parent_leaves_no_child_waiting(
    sql_config: StorageConfig, processes: Processes, tmp_path: Path
) -> None:
    queue = JobQueue(sql_config.open())
    parent = queue.enqueue("last", {"n": 7})
    child = queue.enqueue("last", {"n": 8}, depends_on=[parent])
    grandchild = queue.enqueue("last", {"n": 9}, depends_on=[child])
    [proc] = processes.start(
        sql_config, [tmp_path / "ledger"], workers=1, **{"kill-after-outcome": 1}
    )
    assert proc.wait(60) == -signal.SIGKILL  # right after the parent's outcome was committed
    assert queue.get_job(parent).status is JobStatus.COMPLETED
    # Settled in the parent's own transaction: nothing left for a later sweep.
    assert queue.get_job(child).status is JobStatus.PENDING
    assert queue.get_job(grandchild).status is JobStatus.WAITING

    @queue.handler("last")
    def last(ctx: object) -> int:
        return 0

    assert Worker(queue).run_until_empty() == 2
    assert queue.get_job(grandchild).status is JobStatus.COMPLETED
    queue.close()
