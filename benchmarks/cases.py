"""The measurements.

Each returns `Figure`s: dbjobq's number next to a baseline measured in the same run
on the same database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbjobq import JobContext, JobQueue, JobSpec, Worker
from dbjobq.storage import SQLAlchemyStorage

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Figure:
    """One row of the results table."""

    backend: str
    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""

    @property
    def ratio(self) -> float | None:
        """The figure divided by the baseline."""
        if not self.baseline:
            return None
        return self.value / self.baseline


@dataclasses.dataclass
class Store:
    """Where one case keeps its tables."""

    backend: str
    url: str
    prefix: str
    schema: str | None

    def storage(self) -> SQLAlchemyStorage:
        """A new storage on these tables."""
        return SQLAlchemyStorage(self.url, table_prefix=self.prefix, schema=self.schema)

    def table(self, name: str) -> str:
        """The qualified name of a table."""
        return f"{self.schema}.{self.prefix}{name}" if self.schema else f"{self.prefix}{name}"


@contextmanager
def scratch(backend: str, work: Path) -> Iterator[Store]:
    """A fresh SQLite file, or a fresh PostgreSQL schema."""
    prefix = f"b{uuid.uuid4().hex[:6]}_"
    if backend == "sqlite":
        for leftover in work.glob("bench.db*"):
            leftover.unlink()
        yield Store("sqlite", f"sqlite:///{work / 'bench.db'}", prefix, None)
        return
    url = os.environ["DBJOBQ_TEST_POSTGRES_URL"]
    schema = f"dbjobq_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = SQLAlchemyStorage(url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield Store("postgresql", url, prefix, schema)
    finally:
        engine.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def _queue(store: Store) -> JobQueue:
    queue = JobQueue(store.storage())
    queue.initialize()
    return queue


def _noop(queue: JobQueue) -> None:
    queue.register("noop", lambda ctx: None)


def _spec(n: int) -> JobSpec:
    return JobSpec(type="noop", payload={"n": n})


# -- the raw-driver floor ------------------------------------------------------------------


class Raw:
    """The same work done with plain SQL through the driver, no dbjobq in between."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = sa.create_engine(
            store.url.replace("postgresql://", "postgresql+psycopg://", 1)
            if store.url.startswith("postgresql://")
            else store.url,
            poolclass=sa.pool.NullPool,  # each thread holds its own connection throughout
            # The same busy timeout as dbjobq's SQLite storage.
            connect_args={"isolation_level": None, "timeout": 30}
            if store.backend == "sqlite"
            else {},
        )
        self.table = store.table("raw")
        with self.engine.begin() as conn:
            pk = "bigserial" if store.backend == "postgresql" else "integer"
            conn.exec_driver_sql(
                f"CREATE TABLE {self.table} (id {pk} PRIMARY KEY, type varchar(200), "
                "payload text, status varchar(16), run_at double precision)"
            )
            conn.exec_driver_sql(
                f"CREATE INDEX {self.store.prefix}raw_ready ON {self.table} (status, run_at)"
            )

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def _connection(self) -> Any:
        return self.engine.raw_connection()

    def _begin(self, cursor: Any) -> None:
        if self.store.backend != "sqlite":
            return
        while True:  # many threads: one may wait out the busy timeout; try again
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error):
                    raise

    def insert_many(self, n: int) -> None:
        """Insert `n` rows with one executemany and one commit."""
        conn = self._connection()
        try:
            cursor = conn.cursor()
            self._begin(cursor)
            mark = "%s" if self.store.backend == "postgresql" else "?"
            cursor.executemany(
                f"INSERT INTO {self.table} (type, payload, status, run_at) "
                f"VALUES ({mark}, {mark}, 'pending', {mark})",
                [("noop", json.dumps({"n": i}), time.time()) for i in range(n)],
            )
            conn.commit()
        finally:
            conn.close()

    def insert_one_each(self, n: int) -> None:
        """Insert `n` rows, one statement and one commit each."""
        conn = self._connection()
        mark = "%s" if self.store.backend == "postgresql" else "?"
        try:
            cursor = conn.cursor()
            for i in range(n):
                self._begin(cursor)
                cursor.execute(
                    f"INSERT INTO {self.table} (type, payload, status, run_at) "
                    f"VALUES ({mark}, {mark}, 'pending', {mark})",
                    ("noop", json.dumps({"n": i}), time.time()),
                )
                conn.commit()
        finally:
            conn.close()

    def drain(self, threads: int, batch: int = 1) -> None:
        """Claim `batch` rows per statement, then mark them done in one statement.

        SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite.
        """
        pg = self.store.backend == "postgresql"
        lock = " FOR UPDATE SKIP LOCKED" if pg else ""
        claim = (
            f"UPDATE {self.table} SET status = 'running' WHERE id IN (SELECT id FROM "
            f"{self.table} WHERE status = 'pending' ORDER BY run_at, id LIMIT {batch}"
            f"{lock}) RETURNING id"
        )

        def loop() -> None:
            conn = self._connection()
            try:
                cursor = conn.cursor()
                while True:
                    self._begin(cursor)
                    cursor.execute(claim)
                    ids = [row[0] for row in cursor.fetchall()]
                    conn.commit()
                    if not ids:
                        return
                    self._begin(cursor)
                    if pg:
                        cursor.execute(
                            f"UPDATE {self.table} SET status = 'done' WHERE id = ANY(%s)", (ids,)
                        )
                    else:
                        marks = ", ".join("?" * len(ids))
                        cursor.execute(
                            f"UPDATE {self.table} SET status = 'done' WHERE id IN ({marks})", ids
                        )
                    conn.commit()
            finally:
                conn.close()

        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                loop()
            except Exception as error:  # noqa: BLE001 - raised again after the join
                errors.append(error)

        workers = [threading.Thread(target=guarded) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise RuntimeError(f"the driver baseline failed: {errors[0]}") from errors[0]


# -- the measurements -----------------------------------------------------------------------


def _rate(n: int, fn: Callable[[], Any]) -> float:
    began = time.perf_counter()
    fn()
    return n / (time.perf_counter() - began)


def _enqueue_round(store: Store, n_bulk: int, n_single: int) -> tuple[float, ...]:
    """The bulk and single enqueue rates of dbjobq and of the driver, on these tables."""
    queue = _queue(store)
    raw = Raw(store)
    try:
        # Not measured: the first calls prepare statements (and, on PostgreSQL, the
        # temporary table of COPY).
        queue.enqueue_many([_spec(i) for i in range(100)])
        raw.insert_many(100)
        return (
            _rate(n_bulk, lambda: queue.enqueue_many([_spec(i) for i in range(n_bulk)])),
            _rate(n_bulk, lambda: raw.insert_many(n_bulk)),
            _rate(n_single, lambda: [queue.enqueue("noop", {"n": i}) for i in range(n_single)]),
            _rate(n_single, lambda: raw.insert_one_each(n_single)),
        )
    finally:
        raw.close()
        queue.close()


def enqueue_rates(
    store_factory: Callable[[], Any], backend: str, n_bulk: int, n_single: int, runs: int
) -> list[Figure]:
    """Bulk and one-at-a-time enqueue, against the driver doing the same inserts.

    Medians of `runs` rounds, each on fresh tables; each round measures dbjobq and
    then the driver, so that the machine's drifts in speed touch both alike.
    """
    rounds = []
    for _ in range(runs):
        with store_factory() as store:
            rounds.append(_enqueue_round(store, n_bulk, n_single))
    bulk, raw_bulk, single, raw_single = (statistics.median(r) for r in zip(*rounds, strict=True))
    return [
        Figure(backend, "bulk enqueue (one call)", bulk, "jobs/s", raw_bulk, "driver executemany"),
        Figure(
            backend,
            "enqueue, one job per call",
            single,
            "jobs/s",
            raw_single,
            "driver INSERT+COMMIT",
        ),
    ]


def drain_rate(store: Store, jobs: int, threads: int) -> float:
    """Jobs per second for `threads` workers in this process emptying a full queue."""
    return fill_and_drain(store, jobs, threads)[1]


def fill_and_drain(store: Store, jobs: int, threads: int) -> tuple[float, float]:
    """Enqueue `jobs` in one call, then drain them: both rates, in jobs per second."""
    queue = _queue(store)
    _noop(queue)
    # The first enqueue_many of a storage prepares its statements: not measured.
    for job_id in queue.enqueue_many([_spec(i) for i in range(100)]):
        queue.cancel(job_id)
    specs = [_spec(i) for i in range(jobs)]
    enqueued = _rate(jobs, lambda: queue.enqueue_many(specs))
    workers = [Worker(queue, poll_interval=0.01, max_poll_interval=0.05) for _ in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    wait_drained(store, queue, 0.02)
    elapsed = time.perf_counter() - began
    Worker.stop_all(workers)
    queue.close()
    return enqueued, jobs / elapsed


def wait_drained(store: Store, queue: JobQueue, every: float) -> None:
    """Until no job is pending or running.

    Probes walk the claim's and the leases' partial indexes and stop at the first
    row, so that watching a table of a million jobs does not itself load the
    database (counting them would). On a PostgreSQL server with autovacuum off, the
    jobs table is vacuumed every 10 s meanwhile, as autovacuum would.
    """
    table = store.table("jobs")
    pending = sa.text(
        f"SELECT 1 FROM {table} WHERE status = 'pending' "
        "ORDER BY queue, priority DESC, run_at, id LIMIT 1"
    )
    running = sa.text(
        f"SELECT 1 FROM {table} WHERE status = 'running' ORDER BY lease_expires_at LIMIT 1"
    )
    storage = queue.storage
    assert isinstance(storage, SQLAlchemyStorage)
    vacuum = store.backend == "postgresql" and not autovacuum(storage)
    last_vacuum = time.monotonic()
    while True:
        with storage.engine.connect() as conn:
            if conn.execute(pending).first() is None and conn.execute(running).first() is None:
                return
        if vacuum and time.monotonic() - last_vacuum >= 10:
            auto = storage.engine.execution_options(isolation_level="AUTOCOMMIT")
            with auto.connect() as conn:
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
            last_vacuum = time.monotonic()
        time.sleep(every)


def autovacuum(storage: SQLAlchemyStorage) -> bool:
    """Whether the PostgreSQL server runs autovacuum."""
    with storage.engine.connect() as conn:
        return bool(conn.exec_driver_sql("SHOW autovacuum").scalar() == "on")


def _add_history(store: Store, rows: int) -> None:
    """Finished jobs, inserted directly, for the claim to step over."""
    storage = store.storage()
    storage.initialize()
    table = storage._jobs
    now = storage.now()
    batch = 10_000
    with storage.engine.begin() as conn:
        for start in range(0, rows, batch):
            conn.execute(
                sa.insert(table),
                [
                    {
                        "id": f"h{start + i:035d}",
                        "type": "noop",
                        "queue": "default",
                        "status": "completed",
                        "priority": 0,
                        "attempts": 1,
                        "max_retries": 3,
                        "run_at": now,
                        "created_at": now,
                        "updated_at": now,
                        "finished_at": now,
                        "payload": {},
                        "meta": {},
                    }
                    for i in range(min(batch, rows - start))
                ],
            )
        if store.backend == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {store.table('jobs')}")
    storage.close()


def drain_rates(
    store_factory: Callable[[], Any], backend: str, jobs: int, threads: list[int], runs: int
) -> list[Figure]:
    """Drain with 1, 4, 16 worker threads, against the driver claiming 1 and 10 at a time.

    Each figure is the median of `runs` drains, each from fresh tables.
    """
    figures = []

    def ours(t: int) -> float:
        with store_factory() as store:
            return drain_rate(store, jobs, t)

    def driver(t: int, batch: int) -> float:
        with store_factory() as store:
            raw = Raw(store)
            raw.insert_many(jobs)
            try:
                return _rate(jobs, lambda: raw.drain(t, batch))
            finally:
                raw.close()

    for t in threads:
        value = median(lambda n=t: ours(n), runs)
        for batch in (1, 10) if t == 1 else (1,):
            baseline = median(lambda n=t, b=batch: driver(n, b), runs)
            figures.append(
                Figure(
                    backend,
                    f"drain, {t} worker thread{'s' if t > 1 else ''}",
                    value,
                    "jobs/s",
                    baseline,
                    f"driver, {batch} per statement",
                )
            )
    return figures


def drain_processes(
    store_factory: Callable[[], Any],
    backend: str,
    jobs: int,
    processes: int,
    threads: int,
    runs: int,
) -> Figure:
    """Jobs per second for worker processes emptying a full queue: the median of `runs`."""

    def once() -> float:
        with store_factory() as store:
            return _drain_by_processes(store, jobs, processes, threads)

    return Figure(
        backend, f"drain, {processes} processes x {threads} threads", median(once, runs), "jobs/s"
    )


def _drain_by_processes(store: Store, jobs: int, processes: int, threads: int) -> float:
    queue = _queue(store)
    _noop(queue)
    queue.enqueue_many([_spec(i) for i in range(jobs)])
    procs = [_worker_process(store, threads) for _ in range(processes)]
    began = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    wait_drained(store, queue, 0.02)
    elapsed = time.perf_counter() - began
    for p in procs:
        p.terminate()
        p.communicate(timeout=60)
    queue.close()
    return jobs / elapsed


def _worker_process(store: Store, threads: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker_proc",
        store.url,
        store.prefix,
        store.schema or "",
        str(threads),
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def pickup_latency(store: Store, samples: int) -> list[Figure]:
    """Time from enqueue to handler start, for an idle worker.

    Enqueued in the same process, and from another process.
    """
    queue = _queue(store)
    started: dict[int, float] = {}
    done = threading.Event()

    @queue.handler("ping")
    def ping(ctx: JobContext) -> None:
        started[ctx.payload["n"]] = time.time()
        if len(started) >= samples:
            done.set()

    worker = Worker(queue)  # the defaults: poll 1 s, up to 10 s
    worker.start()
    sent: dict[int, float] = {}
    for n in range(samples):
        time.sleep(0.05)  # idle in between: each job meets a waiting worker
        sent[n] = time.time()
        queue.enqueue("ping", {"n": n})
    done.wait(120)
    same = [started[n] - sent[n] for n in sent if n in started]
    # From another process: a producer enqueues, this worker picks up.
    started.clear()
    done.clear()
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.producer_proc",
            store.url,
            store.prefix,
            store.schema or "",
            str(samples),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = producer.communicate(timeout=300)
    done.wait(120)
    sent_other = {int(k): v for k, v in json.loads(out).items()}
    other = [started[n] - sent_other[n] for n in sent_other if n in started]
    worker.stop()
    queue.close()

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    return [
        Figure(store.backend, "pickup latency p50, same process", pct(same, 0.5), "ms"),
        Figure(store.backend, "pickup latency p99, same process", pct(same, 0.99), "ms"),
        Figure(store.backend, "pickup latency p50, other process", pct(other, 0.5), "ms"),
        Figure(store.backend, "pickup latency p99, other process", pct(other, 0.99), "ms"),
    ]


def history_scaling(
    store_factory: Callable[[], Any], backend: str, jobs: int, history: int, runs: int
) -> list[Figure]:
    """Bulk enqueue and drain with `history` finished rows in the table, against none.

    Medians of `runs` rounds on the same tables (the history is added once; each
    round adds `jobs` finished jobs to it).
    """

    def rounds(store: Store) -> tuple[float, float]:
        found = [fill_and_drain(store, jobs, 4) for _ in range(runs)]
        enqueued, drained = zip(*found, strict=True)
        return statistics.median(enqueued), statistics.median(drained)

    with store_factory() as store:
        empty = rounds(store)
    with store_factory() as store:
        _add_history(store, history)
        full = rounds(store)
    return [
        Figure(
            backend,
            f"{what} with {history:,} finished jobs in the table",
            full[n],
            "jobs/s",
            empty[n],
            "empty table",
        )
        for n, what in enumerate(["bulk enqueue", "drain"])
    ]


def worker_rss(store: Store, jobs: int) -> Figure:
    """Peak resident memory of a 4-thread worker process draining `jobs` jobs."""
    queue = _queue(store)
    _noop(queue)
    for start in range(0, jobs, 50_000):
        queue.enqueue_many([_spec(i) for i in range(start, min(jobs, start + 50_000))])
    proc = _worker_process(store, 4, "--report-rss")
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    wait_drained(store, queue, 0.2)
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    queue.close()
    rss_mb = json.loads(out.strip().splitlines()[-1])["max_rss_kb"] / 1024
    return Figure(store.backend, f"peak RSS, worker process draining {jobs:,} jobs", rss_mb, "MB")


def median(fn: Callable[[], float], runs: int) -> float:
    """The median of `runs` calls of `fn`."""
    return statistics.median(fn() for _ in range(runs))
