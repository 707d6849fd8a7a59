"""Text compares byte for byte; ids and filters that cannot exist find nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbjobq._contract.helpers import claim_one, make_job, worker_info
from dbjobq.errors import JobNotFound
from dbjobq.job import JobStatus
from dbjobq.storage.base import Storage

__all__ = ["TextContract"]

# Strings that a loose comparison (case, accents, trailing spaces, normalisation)
# would take for equal: each is a different value to every backend.
LOOKALIKES = ("user-A", "user-a", "café", "cafe", "cafe\u0301", "k", "k ", "ß", "ss")

# A lone surrogate cannot be encoded, NUL cannot be stored everywhere: no job, queue
# or type can have them (JobQueue refuses them at enqueue), so no lookup finds one.
IMPOSSIBLE = ("\ud800", "a\udfffb", "nul\x00")


class TextContract:
    """Text compares byte for byte: tests that take the `storage` fixture."""

    # -- text compares byte for byte ------------------------------------------------------

    def test_unique_keys_compare_byte_for_byte(self, storage: Storage) -> None:
        jobs = [make_job(unique_key=key) for key in LOOKALIKES]
        assert storage.enqueue(jobs) == [j.id for j in jobs]
        for job in jobs:  # each key still finds its own job
            assert storage.enqueue([make_job(unique_key=job.unique_key)]) == [job.id]
        assert len(storage.list_jobs()) == len(jobs)

    def test_claim_compares_types_and_queues_byte_for_byte(self, storage: Storage) -> None:
        mail = make_job("mail")
        others = [make_job(kind) for kind in ("MAIL", "Mail", "mail ", "ma\u0131l")]
        others += [make_job("mail", queue=name) for name in ("Default ", "DEFAULT", "default ")]
        storage.enqueue([*others, mail])
        claimed = storage.claim(
            queues=["default"], worker_id="w", lease_seconds=60, types={"mail"}, limit=20
        )
        assert [j.id for j in claimed] == [mail.id]
        every_type = storage.claim(queues=["default"], worker_id="w", lease_seconds=60, limit=20)
        assert {j.type for j in every_type} == {"MAIL", "Mail", "mail ", "ma\u0131l"}
        spaced = storage.claim(queues=["default "], worker_id="w", lease_seconds=60, limit=20)
        assert [j.queue for j in spaced] == ["default "]

    def test_list_jobs_filters_byte_for_byte(self, storage: Storage) -> None:
        exact = make_job("Report", queue="emails")
        storage.enqueue([exact, make_job("report", queue="Emails"), make_job("Report ")])
        assert [j.id for j in storage.list_jobs(type="Report", queue="emails")] == [exact.id]
        assert [j.type for j in storage.list_jobs(type="report")] == ["report"]
        assert [j.queue for j in storage.list_jobs(queue="Emails")] == ["Emails"]

    def test_ids_compare_byte_for_byte(self, storage: Storage) -> None:
        new = make_job()
        storage.enqueue([new])
        for lookalike in (new.id.upper(), new.id + " "):
            with pytest.raises(JobNotFound):
                storage.get(lookalike)
            with pytest.raises(JobNotFound):
                storage.cancel(lookalike)
            with pytest.raises(JobNotFound):
                storage.retry(lookalike)
        assert storage.get(new.id).status is JobStatus.PENDING

    def test_schedules_compare_byte_for_byte(self, storage: Storage) -> None:
        tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
        names = ("Report", "report", "report ")
        for n, name in enumerate(names):
            assert storage.enqueue_tick(name, tick + timedelta(hours=n), make_job(name))
        for n, name in enumerate(names):
            assert storage.last_tick(name) == tick + timedelta(hours=n)
        assert sorted(j.type for j in storage.list_jobs()) == sorted(names)

    def test_worker_ids_compare_byte_for_byte(self, storage: Storage) -> None:
        for worker_id in ("w-a", "W-A", "w-a "):
            storage.save_worker(worker_info(worker_id))
        assert sorted(w.id for w in storage.list_workers(seen_within=3600)) == [
            "W-A",
            "w-a",
            "w-a ",
        ]

    def test_text_beyond_latin1_round_trips(self, storage: Storage) -> None:
        """Emoji, CJK, Cyrillic in every text field (MySQL databases made latin1 too)."""
        text = "邮件 ✉️ почта 🚀"
        new = make_job(
            f"send {text}",
            queue=f"q {text}",
            unique_key=f"key {text}",
            payload={text: [text]},
            meta={"trace": text},
        )
        storage.enqueue([new])
        job = claim_one(storage, worker=f"w {text}", queues=[f"q {text}"], types={new.type})
        assert (job.type, job.queue, job.unique_key, job.worker_id) == (
            new.type,
            new.queue,
            new.unique_key,
            f"w {text}",
        )
        assert (job.payload, job.meta) == ({text: [text]}, {"trace": text})
        assert storage.set_progress(job.id, job.lease_token or "", progress=0.5, message=text)
        assert storage.get(job.id).progress_message == text
        assert storage.fail(job.id, job.lease_token or "", error=f"Error: {text}", retry_in=None)
        assert storage.get(job.id).last_error == f"Error: {text}"
        assert [j.id for j in storage.list_jobs(queue=new.queue, type=new.type)] == [new.id]
        assert storage.retry(job.id)
        again = claim_one(storage, queues=[f"q {text}"])
        assert storage.complete(again.id, again.lease_token or "", result={"r": text})
        assert storage.get(new.id).result == {"r": text}
        assert storage.enqueue_tick(text, datetime(2030, 1, 1, tzinfo=timezone.utc), make_job())
        assert storage.last_tick(text) == datetime(2030, 1, 1, tzinfo=timezone.utc)

    # -- ids and filters that cannot exist ----------------------------------------------------

    def test_an_id_that_cannot_exist_is_not_found(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        for job_id in IMPOSSIBLE:
            for call in (storage.get, storage.cancel, storage.retry):
                with pytest.raises(JobNotFound):
                    call(job_id)

    def test_a_filter_that_cannot_match_finds_nothing(self, storage: Storage) -> None:
        storage.enqueue([make_job()])
        for text in IMPOSSIBLE:
            assert storage.list_jobs(queue=text) == []
            assert storage.list_jobs(type=text) == []
            assert storage.list_jobs(status="pending", queue="default", type=text) == []
        assert len(storage.list_jobs(queue="default")) == 1
