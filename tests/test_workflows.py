"""Workflows through the public API: depends_on, chains, groups, ctx.enqueue.

Each test runs on every bundled backend (the `queue` fixture), with real worker threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from dbjobq import (
    ConfigurationError,
    GroupNotFound,
    InvalidJobError,
    JobContext,
    JobNotFound,
    JobQueue,
    JobSpec,
    JobStatus,
    JobValidationError,
    Worker,
)
from dbjobq.storage import Capabilities
from dbjobq.storage.memory import MemoryStorage

from .conftest import StorageConfig
from .helpers import wait_until
from .test_cli import Cli, cli

__all__ = ["cli"]  # the command-line fixture, shared with test_cli


def _queue_with_steps(queue: JobQueue) -> list[tuple[str, dict[str, Any]]]:
    """Register `step` (returns its payload's n and its parents' results) and `boom`."""
    ran: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    @queue.handler("step")
    def step(ctx: JobContext) -> dict[str, Any]:
        parents = dict(ctx.parent_results)
        with lock:
            ran.append((ctx.job.id, parents))
        return {"n": ctx.payload.get("n"), "seen": sorted(r["n"] for r in parents.values() if r)}

    @queue.handler("boom", max_retries=0)
    def boom(ctx: JobContext) -> None:
        raise JobValidationError("broken on purpose")

    return ran


def _drain(queue: JobQueue, threads: int = 2) -> None:
    workers = [Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(threads)]
    for worker in workers:
        worker.run_until_empty()


def test_a_diamond_join_sees_both_branches(queue: JobQueue) -> None:
    ran = _queue_with_steps(queue)
    a = queue.enqueue("step", {"n": 1})
    b = queue.enqueue("step", {"n": 2}, depends_on=[a])
    c = queue.enqueue("step", {"n": 3}, depends_on=[a])
    d = queue.enqueue("step", {"n": 4}, depends_on=[b, c])
    assert [queue.get_job(i).status for i in (a, b, c, d)] == [
        JobStatus.PENDING,
        JobStatus.WAITING,
        JobStatus.WAITING,
        JobStatus.WAITING,
    ]
    _drain(queue)
    assert queue.get_job(d).result == {"n": 4, "seen": [2, 3]}
    order = [job_id for job_id, _ in ran]
    assert order.index(a) < min(order.index(b), order.index(c))
    assert order.index(d) == 3
    assert [p.id for p in queue.parents(d)] == sorted([b, c])
    assert [ch.id for ch in queue.children(a)] == sorted([b, c])


def test_a_chain_runs_in_order_and_stops_at_a_failure(queue: JobQueue) -> None:
    ran = _queue_with_steps(queue)
    ids = queue.chain([JobSpec(type="step", payload={"n": n}) for n in range(4)])
    broken = queue.chain(
        [
            JobSpec(type="step", payload={"n": 10}),
            JobSpec(type="boom"),
            JobSpec(type="step", payload={"n": 11}),
            JobSpec(type="step", payload={"n": 12}),
        ]
    )
    _drain(queue)
    assert [job_id for job_id, _ in ran if job_id in ids] == ids
    assert [queue.get_job(i).result["seen"] for i in ids] == [[], [0], [1], [2]]
    statuses = [queue.get_job(i).status for i in broken]
    assert statuses == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]
    assert queue.get_job(broken[2]).last_error == f"parent {broken[1]} failed"
    assert queue.get_job(broken[3]).last_error == f"parent {broken[2]} was cancelled"


def test_a_group_callback_runs_once_after_every_member(queue: JobQueue) -> None:
    ran = _queue_with_steps(queue)
    group = queue.group(
        [JobSpec(type="step", payload={"n": n}) for n in range(20)],
        then=JobSpec(type="step", payload={"n": 99}),
    )
    assert len(group.job_ids) == 20
    assert group.callback_id is not None
    assert queue.get_group(group.id).counts == {JobStatus.PENDING: 20}
    workers = [Worker(queue, poll_interval=0.01) for _ in range(3)]
    for worker in workers:
        worker.start()
    callback_id = group.callback_id
    try:
        wait_until(lambda: queue.get_job(callback_id).status.is_finished, timeout=60)
    finally:
        for worker in workers:
            worker.stop()
    runs = Counter(job_id for job_id, _ in ran)
    assert runs[group.callback_id] == 1
    callback = queue.get_job(group.callback_id)
    assert callback.result == {"n": 99, "seen": list(range(20))}
    last_member = max(queue.get_job(i).updated_at for i in group.job_ids)
    assert callback.started_at is not None and callback.started_at >= last_member
    status = queue.get_group(group.id)
    assert status.finished and status.completed == 20 and status.total == 20


def test_an_empty_group_runs_its_callback_at_once(queue: JobQueue) -> None:
    _queue_with_steps(queue)
    group = queue.group([], then=JobSpec(type="step", payload={"n": 1}))
    assert group.job_ids == []
    assert group.callback_id is not None
    assert queue.get_job(group.callback_id).status is JobStatus.PENDING
    assert queue.get_group(group.id).total == 0


def test_a_failed_member_cancels_the_callback_unless_it_runs_anyway(queue: JobQueue) -> None:
    _queue_with_steps(queue)
    strict = queue.group([JobSpec(type="boom"), JobSpec(type="step")], then=JobSpec(type="step"))
    lenient = queue.group(
        [JobSpec(type="boom"), JobSpec(type="step", payload={"n": 5})],
        then=JobSpec(type="step", payload={"n": 6}, on_parent_failure="run"),
    )
    _drain(queue)
    assert strict.callback_id is not None and lenient.callback_id is not None
    assert queue.get_job(strict.callback_id).status is JobStatus.CANCELLED
    assert queue.get_job(lenient.callback_id).result == {"n": 6, "seen": [5]}
    assert queue.get_group(strict.id).counts == {JobStatus.FAILED: 1, JobStatus.COMPLETED: 1}


def test_handlers_enqueue_children_that_share_a_correlation_id(queue: JobQueue) -> None:
    @queue.handler("root")
    def root(ctx: JobContext) -> None:
        for n in range(3):
            ctx.enqueue("leaf", {"n": n}, priority=5)

    @queue.handler("leaf")
    def leaf(ctx: JobContext) -> int:
        if ctx.payload["n"] == 0:
            ctx.enqueue("leaf", {"n": 10}, meta={"note": "grandchild"})
        return int(ctx.payload["n"])

    plain = queue.enqueue("root")
    tagged = queue.enqueue("root", meta={"correlation_id": "req-7"})
    _drain(queue)
    tree = queue.list_jobs(correlation_id="req-7", limit=None)
    assert sorted(j.payload.get("n", -1) for j in tree) == [-1, 0, 1, 2, 10]
    assert tagged in {j.id for j in tree}
    children = [j for j in tree if j.type == "leaf" and j.payload["n"] < 10]
    assert {j.meta["parent_id"] for j in children} == {tagged}
    assert {j.priority for j in children} == {5}
    grandchild = next(j for j in tree if j.payload.get("n") == 10)
    assert grandchild.meta["note"] == "grandchild"
    assert grandchild.meta["parent_id"] in {j.id for j in children}
    # Without a correlation id of its own, a root's id ties its tree together.
    assert len(queue.list_jobs(correlation_id=plain, limit=None)) == 4


def test_bad_dependencies_are_refused_and_write_nothing(queue: JobQueue) -> None:
    with pytest.raises(InvalidJobError, match="no job with id 'nope'"):
        queue.enqueue_many([JobSpec(type="a"), JobSpec(type="b", depends_on=["nope"])])
    assert queue.list_jobs(limit=None) == []
    with pytest.raises(InvalidJobError, match="not one string"):
        queue.enqueue("a", depends_on="abc")
    with pytest.raises(InvalidJobError, match="job ids"):
        queue.enqueue("a", depends_on=[1])  # type: ignore[list-item]
    with pytest.raises(InvalidJobError, match="on_parent_failure"):
        queue.enqueue("a", on_parent_failure="maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="at least one job"):
        queue.chain([])
    with pytest.raises(InvalidJobError, match="item 1"):
        queue.group([JobSpec(type="a"), "b"])  # type: ignore[list-item]
    with pytest.raises(InvalidJobError, match="then: "):
        queue.group([JobSpec(type="a")], then=JobSpec(type=""))
    with pytest.raises(GroupNotFound):
        queue.get_group("no-such-group")
    with pytest.raises(JobNotFound):
        queue.parents("no-such-job")
    assert queue.list_jobs(limit=None) == []


def test_a_finished_parent_counts_at_once(queue: JobQueue) -> None:
    _queue_with_steps(queue)
    parent = queue.enqueue("step", {"n": 1})
    _drain(queue)
    child = queue.enqueue("step", {"n": 2}, depends_on=[parent, parent])
    assert queue.get_job(child).status is JobStatus.PENDING
    assert [p.id for p in queue.parents(child)] == [parent]


def test_waiting_jobs_are_explained(queue: JobQueue) -> None:
    _queue_with_steps(queue)
    parent = queue.enqueue("step")
    child = queue.enqueue("step", depends_on=[parent])
    explanation = queue.explain(child)
    assert explanation.codes == ("waiting_for_parents",)
    assert explanation.reasons[0].detail["waiting_for"] == [parent]
    assert queue.counts()["default"]["waiting"] == 1


class _NoWorkflows(MemoryStorage):
    capabilities = Capabilities(release=True)


def test_a_backend_without_workflows_refuses_them_clearly() -> None:
    queue = JobQueue(_NoWorkflows())
    parent = queue.enqueue("a")
    for attempt in (
        lambda: queue.enqueue("b", depends_on=[parent]),
        lambda: queue.chain([JobSpec(type="a")]),
        lambda: queue.group([JobSpec(type="a")]),
        lambda: queue.get_group("g"),
        lambda: queue.list_jobs(correlation_id="c"),
    ):
        with pytest.raises(ConfigurationError, match="workflows"):
            attempt()
    assert queue.parents(parent) == []
    assert len(queue.list_jobs()) == 1


def test_upkeep_settles_a_child_left_waiting() -> None:
    """A parent whose outcome was stored without settling (a crash in between)."""
    storage = MemoryStorage()
    queue = JobQueue(storage)
    _queue_with_steps(queue)
    parent = queue.enqueue("step", {"n": 1})
    child = queue.enqueue("step", {"n": 2}, depends_on=[parent])
    job = storage.get(parent)
    storage._write(job, status=JobStatus.COMPLETED, result={"n": 1}, finished_at=job.created_at)
    assert queue.get_job(child).status is JobStatus.WAITING
    assert queue.explain(child).codes == ("parents_finished",)
    assert Worker(queue).run_until_empty() == 1
    assert queue.get_job(child).result == {"n": 2, "seen": [1]}


@pytest.mark.parametrize("sql_config", ["sqlite"], indirect=True)
def test_the_command_line_shows_and_makes_workflows(cli: Cli, sql_config: StorageConfig) -> None:
    queue = JobQueue(sql_config.open())
    group = queue.group([JobSpec(type="a", meta={"correlation_id": "req-1"})] * 3)
    parent = cli.json("enqueue", "send_email")["id"]
    child = cli.json("enqueue", "send_email", "--depends-on", parent, "--on-parent-failure", "run")
    assert queue.get_job(child["id"]).status is JobStatus.WAITING
    assert [p.id for p in queue.parents(child["id"])] == [parent]
    shown = cli.run("job", child["id"])
    assert "parents" in shown.stdout and f"{parent} (pending)" in shown.stdout, shown.stdout
    listed = cli.json("jobs", "--correlation-id", "req-1")
    assert sorted(j["id"] for j in listed) == sorted(group.job_ids)
    assert cli.json("group", group.id)["counts"] == {"pending": 3}
    missing = cli.run("group", "no-such-group")
    assert missing.returncode != 0 and "no group with id 'no-such-group'" in missing.stderr
    queue.close()
