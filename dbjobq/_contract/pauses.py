"""Pausing and resuming queues (optional: `Capabilities.pauses`)."""

from __future__ import annotations

import pytest

from dbjobq._contract.helpers import make_job
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["PauseContract"]


def _needs_pauses(storage: Storage) -> None:
    if not storage.capabilities.pauses:
        pytest.skip("pausing queues is not offered (Capabilities.pauses)")


def _claim(storage: Storage, queues: list[str], limit: int = 10) -> list[str]:
    jobs = storage.claim(queues=queues, worker_id="w", lease_seconds=60, limit=limit)
    return [job.id for job in jobs]


class PauseContract:
    """`pause_queue`, `resume_queue`, `paused_queues`, and what claims make of them."""

    def test_a_paused_queue_is_not_claimed_until_resumed(self, storage: Storage) -> None:
        _needs_pauses(storage)
        held = make_job(queue="mail", priority=10)
        other = make_job(queue="default")
        storage.enqueue([held, other])
        assert storage.pause_queue("mail")
        assert storage.paused_queues() == {"mail"}
        # Only the queue that is not paused gives jobs, whatever the priorities.
        assert _claim(storage, ["mail", "default"]) == [other.id]
        assert _claim(storage, ["mail"]) == []
        assert storage.get(held.id).status is JobStatus.PENDING
        assert storage.get(held.id).attempts == 0
        assert storage.resume_queue("mail")
        assert storage.paused_queues() == set()
        assert _claim(storage, ["mail"]) == [held.id]

    def test_pause_and_resume_say_whether_they_changed_anything(self, storage: Storage) -> None:
        _needs_pauses(storage)
        assert not storage.resume_queue("reports")  # never paused
        assert storage.pause_queue("reports")
        assert not storage.pause_queue("reports")  # already paused
        assert storage.paused_queues() == {"reports"}
        assert storage.resume_queue("reports")
        assert not storage.resume_queue("reports")

    def test_enqueue_into_a_paused_queue_works_and_running_jobs_finish(
        self, storage: Storage
    ) -> None:
        _needs_pauses(storage)
        running = make_job(queue="mail")
        storage.enqueue([running])
        (claimed,) = storage.claim(queues=["mail"], worker_id="w", lease_seconds=60)
        storage.pause_queue("mail")
        later = make_job(queue="mail")
        assert storage.enqueue([later]) == [later.id]
        assert storage.complete(claimed.id, claimed.lease_token or "", result={"ok": True})
        assert storage.get(running.id).status is JobStatus.COMPLETED
        assert storage.get(later.id).status is JobStatus.PENDING
        assert _claim(storage, ["mail"]) == []

    def test_a_pause_holds_for_every_storage_object_and_only_for_its_queue(
        self, storage: Storage, other_storage: Storage
    ) -> None:
        _needs_pauses(storage)
        jobs = [make_job(queue=name) for name in ("mail", "Mail", "mail ", "default")]
        storage.enqueue(jobs)
        storage.pause_queue("mail")
        assert other_storage.paused_queues() == {"mail"}
        # Byte for byte: "Mail" and "mail " are other queues.
        claimed = _claim(other_storage, ["mail", "Mail", "mail ", "default"])
        assert sorted(claimed) == sorted(j.id for j in jobs[1:])
        other_storage.resume_queue("mail")
        assert _claim(storage, ["mail"]) == [jobs[0].id]
