"""Workflows (optional: `Capabilities.workflows`): dependencies, settling, groups."""

from __future__ import annotations

from typing import Any

import pytest

from dbjobq._contract.concurrency import run_together
from dbjobq._contract.helpers import claim_one, make_job
from dbjobq._ids import new_job_id
from dbjobq.errors import GroupNotFound, InvalidJobError, JobNotFound
from dbjobq.job import Job, JobStatus, NewJob
from dbjobq.storage.base import Storage

__all__ = ["WorkflowContract"]


def _needs_workflows(storage: Storage) -> None:
    if not storage.capabilities.workflows:
        pytest.skip("workflows are not offered (Capabilities.workflows)")


def _status(storage: Storage, job_id: str) -> JobStatus:
    return JobStatus(storage.get(job_id).status)


def _run(storage: Storage, job_id: str, result: Any = None, *, fail: bool = False) -> None:
    """Claim `job_id` (the only due job of its type) and complete or fail it for good."""
    job = claim_one(storage, types=[storage.get(job_id).type])
    assert job.id == job_id
    token = job.lease_token or ""
    if fail:
        assert storage.fail(job.id, token, error="boom", retry_in=None)
    else:
        assert storage.complete(job.id, token, result=result)


def _child(*parents: str, type: str = "child", **fields: Any) -> NewJob:  # noqa: A002
    return make_job(type=type, depends_on=tuple(parents), **fields)


class WorkflowContract:
    """Jobs that wait for others, settle with them, and groups with a callback."""

    def test_a_child_waits_until_its_parent_completes(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="parent")])
        [child] = storage.enqueue([_child(parent)])
        assert _status(storage, child) is JobStatus.WAITING
        assert (
            storage.claim(queues=["default"], worker_id="w", lease_seconds=60, types=["child"])
            == []
        )
        _run(storage, parent, {"made": 1})
        assert _status(storage, child) is JobStatus.PENDING
        assert [p.result for p in storage.parents(child)] == [{"made": 1}]
        assert [c.id for c in storage.children(parent)] == [child]
        assert claim_one(storage, types=["child"]).id == child

    def test_parents_that_decided_already_decide_at_enqueue(self, storage: Storage) -> None:
        _needs_workflows(storage)
        done, broken = storage.enqueue([make_job(type="a"), make_job(type="b")])
        _run(storage, done)
        _run(storage, broken, fail=True)
        runs, cancelled, runs_anyway = storage.enqueue(
            [_child(done), _child(done, broken), _child(broken, on_parent_failure="run")]
        )
        assert _status(storage, runs) is JobStatus.PENDING
        job = storage.get(cancelled)
        assert job.status is JobStatus.CANCELLED
        assert job.last_error == f"parent {broken} failed"
        assert job.finished_at is not None
        assert _status(storage, runs_anyway) is JobStatus.PENDING

    def test_an_unknown_parent_stores_nothing_of_the_call(self, storage: Storage) -> None:
        _needs_workflows(storage)
        first = make_job(type="first")
        with pytest.raises(InvalidJobError, match="no-such-job"):
            storage.enqueue([first, _child(first.id), _child("no-such-job")])
        assert storage.list_jobs(limit=None) == []

    def test_parents_may_come_earlier_in_the_same_call(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [holder] = storage.enqueue([make_job(type="a", unique_key="k")])
        again = make_job(type="a", unique_key="k")  # deduplicated: stands for `holder`
        first = make_job(type="b")
        ids = storage.enqueue([first, again, _child(first.id, again.id)])
        assert ids[1] == holder
        assert [p.id for p in storage.parents(ids[2])] == sorted([first.id, holder])
        assert _status(storage, ids[2]) is JobStatus.WAITING

    def test_a_diamond_runs_its_join_after_both_branches(self, storage: Storage) -> None:
        _needs_workflows(storage)
        a = make_job(type="a")
        b, c = _child(a.id, type="b"), _child(a.id, type="c")
        d = _child(b.id, c.id, type="d")
        storage.enqueue([a, b, c, d])
        _run(storage, a.id, "A")
        assert {_status(storage, b.id), _status(storage, c.id)} == {JobStatus.PENDING}
        _run(storage, b.id, "B")
        assert _status(storage, d.id) is JobStatus.WAITING
        _run(storage, c.id, "C")
        assert _status(storage, d.id) is JobStatus.PENDING
        assert {p.id: p.result for p in storage.parents(d.id)} == {b.id: "B", c.id: "C"}

    def test_a_failure_cancels_three_levels_down(self, storage: Storage) -> None:
        _needs_workflows(storage)
        a = make_job(type="a")
        b = _child(a.id, type="b")
        c = _child(b.id, type="c")
        d = _child(c.id, type="d")
        other = _child(a.id, type="e", on_parent_failure="run")
        storage.enqueue([a, b, c, d, other])
        _run(storage, a.id, fail=True)
        errors = {j.id: storage.get(j.id).last_error for j in (b, c, d)}
        assert [_status(storage, j.id) for j in (b, c, d)] == [JobStatus.CANCELLED] * 3
        assert errors == {
            b.id: f"parent {a.id} failed",
            c.id: f"parent {b.id} was cancelled",
            d.id: f"parent {c.id} was cancelled",
        }
        assert _status(storage, other.id) is JobStatus.PENDING

    def test_run_anyway_waits_for_every_parent_to_finish(self, storage: Storage) -> None:
        _needs_workflows(storage)
        bad, good = make_job(type="bad"), make_job(type="good")
        child = _child(bad.id, good.id, on_parent_failure="run")
        storage.enqueue([bad, good, child])
        _run(storage, bad.id, fail=True)
        assert _status(storage, child.id) is JobStatus.WAITING
        _run(storage, good.id, "ok")
        assert _status(storage, child.id) is JobStatus.PENDING
        assert {p.id: p.result for p in storage.parents(child.id)} == {bad.id: None, good.id: "ok"}

    def test_cancelling_a_parent_or_a_waiting_job_cancels_down(self, storage: Storage) -> None:
        _needs_workflows(storage)
        a = make_job(type="a")
        b = _child(a.id, type="b")
        c = _child(b.id, type="c")
        storage.enqueue([a, b, c])
        assert storage.cancel(b.id)  # waiting
        assert _status(storage, c.id) is JobStatus.CANCELLED
        assert storage.get(c.id).last_error == f"parent {b.id} was cancelled"
        assert _status(storage, a.id) is JobStatus.PENDING  # parents are not touched
        running = claim_one(storage, types=["a"])
        [d] = storage.enqueue([_child(running.id, type="d")])
        assert storage.cancel(running.id)
        assert _status(storage, d) is JobStatus.CANCELLED

    def test_a_rescued_parent_that_fails_cancels_its_children(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a", max_retries=0)])
        claim_one(storage, types=["a"], lease=0.0)
        [child] = storage.enqueue([_child(parent)])
        assert storage.rescue_expired() == 1
        assert _status(storage, parent) is JobStatus.FAILED
        assert _status(storage, child) is JobStatus.CANCELLED

    def test_a_retry_on_the_way_does_not_settle(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a")])
        [child] = storage.enqueue([_child(parent)])
        job = claim_one(storage, types=["a"])
        assert storage.fail(job.id, job.lease_token or "", error="once", retry_in=0.0)
        assert _status(storage, child) is JobStatus.WAITING
        _run(storage, parent)
        assert _status(storage, child) is JobStatus.PENDING

    def test_retrying_a_parent_does_not_revive_its_cancelled_child(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a")])
        [child] = storage.enqueue([_child(parent)])
        _run(storage, parent, fail=True)
        assert storage.retry(parent)
        _run(storage, parent)
        assert _status(storage, child) is JobStatus.CANCELLED
        assert storage.retry(child)  # the child itself, retried: runs without waiting
        assert _status(storage, child) is JobStatus.PENDING

    def test_rescued_workers_cancel_the_children_of_failed_jobs(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a", max_retries=0)])
        claim_one(storage, worker="gone", types=["a"])
        [child] = storage.enqueue([_child(parent)])
        assert storage.rescue_workers(["gone"]) == 1
        assert _status(storage, child) is JobStatus.CANCELLED

    def test_cancelled_children_let_go_of_their_unique_keys(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [failed] = storage.enqueue([make_job(type="a")])
        _run(storage, failed, fail=True)
        [at_once] = storage.enqueue([_child(failed, unique_key="k1")])
        assert _status(storage, at_once) is JobStatus.CANCELLED
        [parent] = storage.enqueue([make_job(type="b")])
        [later] = storage.enqueue([_child(parent, unique_key="k2")])
        _run(storage, parent, fail=True)
        assert _status(storage, later) is JobStatus.CANCELLED
        again = storage.enqueue([make_job(unique_key="k1"), make_job(unique_key="k2")])
        assert at_once not in again and later not in again

    def test_unknown_parents_are_refused_for_a_deduplicated_job(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [holder] = storage.enqueue([make_job(unique_key="k")])
        with pytest.raises(InvalidJobError, match="no-such-job"):
            storage.enqueue([_child("no-such-job", unique_key="k")])
        assert [j.id for j in storage.list_jobs(limit=None)] == [holder]

    def test_waiting_is_unfinished(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a")])
        [child] = storage.enqueue([_child(parent, unique_key="once")])
        assert storage.enqueue([make_job(unique_key="once")]) == [child]
        assert storage.count_jobs()[("default", JobStatus.WAITING)] == 1
        assert [j.id for j in storage.list_jobs(status=JobStatus.WAITING)] == [child]

    def test_completing_many_parents_at_once_settles_the_child(self, storage: Storage) -> None:
        _needs_workflows(storage)
        parents = [make_job(type="p") for _ in range(3)]
        child = _child(*(p.id for p in parents))
        storage.enqueue([*parents, child])
        jobs = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, types=["p"], limit=3
        )
        done = storage.complete_many([(j.id, j.lease_token or "", {"n": j.id}) for j in jobs])
        assert done == [True, True, True]
        assert _status(storage, child.id) is JobStatus.PENDING

    def test_the_last_parents_finishing_together_release_the_child(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        _needs_workflows(storage)
        backends = [storage, other_storage]
        for _ in range(10):
            left, right = make_job(type="left"), make_job(type="right")
            child = _child(left.id, right.id)
            storage.enqueue([left, right, child])
            leases = [claim_one(storage, types=[t]) for t in ("left", "right")]

            def finish(n: int, leases: list[Job] = leases) -> None:
                job = leases[n]
                assert backends[n].complete(job.id, job.lease_token or "", result=n)

            assert run_together(2, finish) == []
            assert _status(storage, child.id) is JobStatus.PENDING

    def test_purge_keeps_the_parents_of_unfinished_jobs(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [a, b] = storage.enqueue([make_job(type="a"), make_job(type="b")])
        [child] = storage.enqueue([_child(a, b)])
        _run(storage, a, "kept")
        finished = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
        assert storage.purge(statuses=finished, older_than=-60) == 0
        assert [p.result for p in storage.parents(child) if p.id == a] == ["kept"]
        _run(storage, b)
        _run(storage, child)
        assert storage.purge(statuses=finished, older_than=-60) == 3
        assert storage.list_jobs(limit=None) == []

    def test_parents_and_children_of_unknown_jobs(self, storage: Storage) -> None:
        _needs_workflows(storage)
        with pytest.raises(JobNotFound):
            storage.parents("no-such-job")
        with pytest.raises(JobNotFound):
            storage.children("no-such-job")
        [plain] = storage.enqueue([make_job()])
        assert storage.parents(plain) == storage.children(plain) == []

    def test_a_group_runs_its_callback_after_the_last_member(self, storage: Storage) -> None:
        _needs_workflows(storage)
        group_id = new_job_id()
        members = [make_job(type="m", payload={"n": n}) for n in range(4)]
        callback = _child(*(m.id for m in members), type="cb")
        ids = storage.enqueue_group(group_id, members, callback)
        assert ids == [*(m.id for m in members), callback.id]
        assert {storage.get(m.id).group_id for m in members} == {group_id}
        assert storage.get(callback.id).group_id is None
        group = storage.get_group(group_id)
        assert group.callback_id == callback.id
        assert dict(group.counts) == {JobStatus.PENDING: 4}
        for member in members[:3]:
            _run(storage, member.id, member.payload["n"])
        assert _status(storage, callback.id) is JobStatus.WAITING
        assert dict(storage.get_group(group_id).counts) == {
            JobStatus.COMPLETED: 3,
            JobStatus.PENDING: 1,
        }
        _run(storage, members[3].id, 3)
        assert _status(storage, callback.id) is JobStatus.PENDING
        assert storage.get_group(group_id).finished
        results = {p.id: p.result for p in storage.parents(callback.id)}
        assert results == {m.id: m.payload["n"] for m in members}

    def test_a_group_without_callback_and_unknown_groups(self, storage: Storage) -> None:
        _needs_workflows(storage)
        group_id = new_job_id()
        ids = storage.enqueue_group(group_id, [make_job(), make_job()], None)
        assert len(ids) == 2
        status = storage.get_group(group_id)
        assert status.callback_id is None
        assert status.total == 2
        with pytest.raises(GroupNotFound):
            storage.get_group("no-such-group")

    def test_a_failed_member_cancels_the_callback(self, storage: Storage) -> None:
        _needs_workflows(storage)
        group_id = new_job_id()
        members = [make_job(type="m"), make_job(type="n")]
        callback = _child(*(m.id for m in members), type="cb")
        storage.enqueue_group(group_id, members, callback)
        _run(storage, members[0].id, fail=True)
        assert _status(storage, callback.id) is JobStatus.CANCELLED

    def test_a_group_of_many_finished_by_racing_threads(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        _needs_workflows(storage)
        group_id = new_job_id()
        members = [make_job(type="m", payload={"n": n}) for n in range(60)]
        callback = _child(*(m.id for m in members), type="cb")
        storage.enqueue_group(group_id, members, callback)
        backends = [storage, other_storage]

        def drain(n: int) -> None:
            backend = backends[n % 2]
            while jobs := backend.claim(
                queues=["default"], worker_id=f"w{n}", lease_seconds=60, types=["m"], limit=3
            ):
                outcomes = [(j.id, j.lease_token or "", j.payload["n"]) for j in jobs]
                assert all(backend.complete_many(outcomes))

        assert run_together(4, drain) == []
        assert _status(storage, callback.id) is JobStatus.PENDING
        assert storage.get_group(group_id).completed == 60
        assert sorted(p.result for p in storage.parents(callback.id)) == list(range(60))

    def test_purge_forgets_groups_and_their_callbacks(self, storage: Storage) -> None:
        _needs_workflows(storage)
        finished = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
        group_id = new_job_id()
        member = make_job(type="m")
        callback = _child(member.id, type="cb", on_parent_failure="run")
        storage.enqueue_group(group_id, [member], callback)
        _run(storage, member.id, fail=True)
        _run(storage, callback.id)
        assert storage.purge(statuses=[JobStatus.COMPLETED], older_than=-60) == 1
        assert storage.get_group(group_id).callback_id is None  # purged with its job
        assert storage.get_group(group_id).counts == {JobStatus.FAILED: 1}
        assert storage.purge(statuses=finished, older_than=-60) == 1
        with pytest.raises(GroupNotFound):
            storage.get_group(group_id)

    def complete_unsettled(self, storage: Storage, job_id: str, result: Any) -> None:
        """Record `job_id` as completed without settling its children: a crash between.

        A backend's test class overrides this with its store's own means (a raw
        UPDATE, say), so that `settle_waiting`, the safety net, is tested; without
        it, those tests are skipped.
        """
        pytest.skip("the test class has no complete_unsettled() for this backend")

    def test_settle_waiting_settles_what_a_crash_left(self, storage: Storage) -> None:
        _needs_workflows(storage)
        a = make_job(type="a")
        b = _child(a.id, type="b")
        c = _child(b.id, type="c")
        run = _child(a.id, type="d", on_parent_failure="run")
        storage.enqueue([a, b, c, run])
        self.complete_unsettled(storage, a.id, "A")
        assert _status(storage, b.id) is JobStatus.WAITING
        assert storage.settle_waiting() == 2  # b and the run-anyway child
        assert [_status(storage, j.id) for j in (b, c, run)] == [
            JobStatus.PENDING,
            JobStatus.WAITING,
            JobStatus.PENDING,
        ]
        assert storage.settle_waiting() == 0

    def test_settle_waiting_cancels_down_the_graph_and_counts_it(self, storage: Storage) -> None:
        _needs_workflows(storage)
        a = make_job(type="a")
        chain = [_child(a.id, type="b")]
        for _ in range(3):
            chain.append(_child(chain[-1].id, type="b"))
        storage.enqueue([a, *chain])
        self.fail_unsettled(storage, a.id)
        assert storage.settle_waiting(limit=1) == 4
        assert {_status(storage, j.id) for j in chain} == {JobStatus.CANCELLED}

    def fail_unsettled(self, storage: Storage, job_id: str) -> None:
        """Record `job_id` as failed without settling its children (see `complete_unsettled`)."""
        pytest.skip("the test class has no fail_unsettled() for this backend")

    def test_settle_waiting_has_nothing_to_do_after_settling(self, storage: Storage) -> None:
        _needs_workflows(storage)
        [parent] = storage.enqueue([make_job(type="a")])
        storage.enqueue([_child(parent), _child(parent)])
        assert storage.settle_waiting() == 0
        _run(storage, parent)
        assert storage.settle_waiting() == 0
        assert storage.count_jobs()[("default", JobStatus.PENDING)] == 2

    def test_list_jobs_by_correlation_id(self, storage: Storage) -> None:
        _needs_workflows(storage)
        mine = [make_job(meta={"correlation_id": "req-1"}) for _ in range(3)]
        storage.enqueue([*mine, make_job(meta={"correlation_id": "req-2"}), make_job()])
        found = storage.list_jobs(correlation_id="req-1", limit=None)  # type: ignore[call-arg]
        assert [j.id for j in found] == sorted(m.id for m in mine)
        assert storage.list_jobs(correlation_id="nobody") == []  # type: ignore[call-arg]
