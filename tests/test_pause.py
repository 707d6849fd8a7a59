"""Pausing and resuming queues: JobQueue, workers in threads and processes, the command."""

from __future__ import annotations

import signal
import threading

import pytest

from dbjobq import ConfigurationError, InvalidJobError, JobContext, JobQueue, JobStatus, Worker

from .helpers import wait_until
from .test_capabilities import OldStyleStorage
from .test_cli import ON_TWO_BACKENDS, Cli, cli, status

__all__ = ["cli"]  # the command-line fixture, shared with test_cli


def test_a_worker_leaves_a_paused_queue_alone_until_it_is_resumed(queue: JobQueue) -> None:
    ran: list[str] = []
    marker_done = threading.Event()

    @queue.handler("work")
    def work(ctx: JobContext) -> None:
        ran.append(ctx.job.queue)
        if ctx.job.queue == "other":
            marker_done.set()

    assert queue.pause("mail")
    assert queue.paused_queues() == {"mail"}
    held = queue.enqueue("work", queue="mail", priority=10)  # enqueueing still works
    worker = Worker(queue, queues=["mail", "other"], poll_interval=0.01, max_poll_interval=0.05)
    worker.start()
    try:
        # The marker is lower in priority: the worker polled past the paused job to get it.
        queue.enqueue("work", queue="other")
        assert marker_done.wait(10)
        assert ran == ["other"]
        job = queue.get_job(held)
        assert (job.status, job.attempts) == (JobStatus.PENDING, 0)
        (mail,) = [q for q in queue.stats().queues if q.queue == "mail"]
        assert mail.paused and mail.counts["pending"] == 1
        assert queue.resume("mail")
        wait_until(lambda: queue.get_job(held).status is JobStatus.COMPLETED, what="resumed job")
    finally:
        assert worker.stop(timeout=10)
    assert queue.get_job(held).attempts == 1
    assert not queue.resume("mail") and queue.paused_queues() == set()


def test_pause_checks_its_argument_and_the_storage(queue: JobQueue) -> None:
    with pytest.raises(InvalidJobError, match="queue"):
        queue.pause("")
    old = JobQueue(OldStyleStorage())  # a backend without Capabilities.pauses
    with pytest.raises(ConfigurationError, match="OldStyleStorage cannot pause queues"):
        old.pause("mail")
    with pytest.raises(ConfigurationError, match="cannot pause queues"):
        old.resume("mail")
    assert old.paused_queues() == set()


@ON_TWO_BACKENDS
def test_a_pause_from_the_command_line_holds_a_worker_process(cli: Cli) -> None:
    worker = cli.worker("--queues", "default,other", "--poll-interval", "0.05")
    assert cli.run("pause", "default").stdout.strip() == "paused queue default"
    assert cli.run("pause", "default").stdout.strip() == "queue default was paused already"
    held = cli.json("enqueue", "send_email", "--priority", "10", "--payload", '{"to": "a@b.c"}')
    marker = cli.json("enqueue", "send_email", "--queue", "other", "--payload", '{"to": "x@y.z"}')
    wait_until(lambda: status(cli, marker["id"]) == "completed", timeout=30)
    assert status(cli, held["id"]) == "pending"
    assert "paused: queue default (dbjobq resume default)" in cli.run("stats").stdout
    assert [q["paused"] for q in cli.json("stats")["queues"] if q["queue"] == "default"] == [True]
    assert cli.json("resume", "default") == {"resumed": True}
    wait_until(lambda: status(cli, held["id"]) == "completed", timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
