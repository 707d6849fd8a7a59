"""Idle workers learn of jobs enqueued by other processes without waiting for a poll.

The workers here poll once at start and then not for a minute: only a wake-up can
get a job run within the tests' 20-second limit.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbjobq import JobContext, JobQueue, Worker
from dbjobq.storage import SQLAlchemyStorage
from dbjobq.storage._sql.dialects.postgresql import PostgreSQLDialect

from .conftest import StorageConfig
from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
LONG = 60.0  # the poll interval: far beyond every wait below


def enqueue_from_another_process(config: StorageConfig, n: int = 1) -> list[str]:
    script = (
        "import sys\n"
        "from dbjobq import JobQueue, JobSpec\n"
        "from dbjobq.storage import SQLAlchemyStorage\n"
        "url, prefix, schema, n = sys.argv[1:5]\n"
        "q = JobQueue(SQLAlchemyStorage(url, table_prefix=prefix, schema=schema or None))\n"
        "ids = q.enqueue_many([JobSpec(type='ping', payload={'i': i}) for i in range(int(n))])\n"
        "print(' '.join(ids))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            config.url,
            config.table_prefix,
            config.schema or "",
            f"{n}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest) -> StorageConfig:
    return request.getfixturevalue(f"{request.param}_config")  # type: ignore[no-any-return]


@pytest.fixture
def queue(config: StorageConfig) -> Iterator[JobQueue]:
    queue = JobQueue(config.open())
    queue.initialize()
    yield queue
    queue.close()


def idle_worker(queue: JobQueue) -> Worker:
    worker = Worker(queue, poll_interval=LONG, max_poll_interval=LONG)
    worker.start()
    wait_until(lambda: worker._idle, what="the worker to go idle")
    return worker


def test_a_job_from_another_process_wakes_an_idle_worker(
    queue: JobQueue, config: StorageConfig
) -> None:
    ran: list[int] = []
    queue.register("ping", lambda ctx: ran.append(ctx.payload["i"]))
    worker = idle_worker(queue)
    try:
        for round_ in range(3):
            (job_id,) = enqueue_from_another_process(config)
            expected = round_ + 1

            def ran_it(job_id: str = job_id, expected: int = expected) -> bool:
                return len(ran) == expected and queue.get_job(job_id).status == "completed"

            wait_until(ran_it, timeout=20, what="the job to run")
            wait_until(lambda: worker._idle, what="the worker to go idle again")
    finally:
        worker.stop()


def test_a_bulk_enqueue_elsewhere_is_all_run(queue: JobQueue, config: StorageConfig) -> None:
    ran: list[int] = []
    queue.register("ping", lambda ctx: ran.append(ctx.payload["i"]))
    workers = [idle_worker(queue) for _ in range(2)]
    try:
        enqueue_from_another_process(config, n=50)
        wait_until(lambda: len(ran) == 50, timeout=20, what="all 50 jobs")
        assert sorted(ran) == list(range(50))
    finally:
        Worker.stop_all(workers)


def test_listen_false_polls_only(config: StorageConfig) -> None:
    storage = SQLAlchemyStorage(
        config.url, table_prefix=config.table_prefix, schema=config.schema, listen=False
    )
    assert storage.subscribe(lambda: None) is None
    storage.close()


def test_closing_a_sqlite_storage_ends_its_watcher_first(tmp_path: Path) -> None:
    """Its connection to the file is closed before close() returns, not a second later."""
    storage = SQLAlchemyStorage(f"sqlite:///{tmp_path / 'jobs.db'}")
    storage.initialize()
    fired = threading.Event()
    storage.subscribe(fired.set)
    wait_until(fired.is_set, what="the watcher to start")  # it fires once on connecting
    watchers = [t for t in threading.enumerate() if t.name == "dbjobq-sqlite-watch"]
    assert len(watchers) == 1
    storage.close()
    assert not watchers[0].is_alive()


def test_mysql_and_in_memory_sqlite_poll_only() -> None:
    storage = SQLAlchemyStorage("sqlite://")
    assert storage.subscribe(lambda: None) is None
    storage.close()


def test_the_subscription_ends_with_the_last_worker(queue: JobQueue) -> None:
    queue.register("ping", lambda ctx: None)
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    workers = [idle_worker(queue) for _ in range(2)]
    watcher = storage._watcher
    assert watcher is not None and len(watcher._subscribers) == 1  # one per queue
    workers[0].stop()
    assert len(watcher._subscribers) == 1
    workers[1].stop()
    assert not watcher._subscribers
    wait_until(lambda: watcher._thread is None, what="the watcher thread to end")


def test_postgres_listener_reconnects_after_its_connection_is_killed(
    postgres_config: StorageConfig,
) -> None:
    queue = JobQueue(postgres_config.open())
    queue.initialize()
    ran = threading.Event()

    @queue.handler("ping")
    def ping(ctx: JobContext) -> None:
        ran.set()

    worker = idle_worker(queue)
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    try:
        wait_until(lambda: _listeners(storage) == 1, what="the LISTEN connection")
        with storage.engine.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND query LIKE :channel"
                ),
                {"channel": f"%{_channel(storage)}%"},
            )
        wait_until(lambda: _listeners(storage) == 1, timeout=20, what="a new LISTEN connection")
        enqueue_from_another_process(postgres_config)
        assert ran.wait(20), "the job was not run: the listener did not come back"
    finally:
        worker.stop()
        queue.close()


def _channel(storage: SQLAlchemyStorage) -> str:
    dialect = storage._dialect
    assert isinstance(dialect, PostgreSQLDialect)
    return dialect.channel


def _listeners(storage: SQLAlchemyStorage) -> int:
    with storage.engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
                "AND query LIKE :channel AND state = 'idle'"
            ),
            {"channel": f"%{_channel(storage)}%"},
        ).scalar()
    return int(found or 0)
