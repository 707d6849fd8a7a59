"""Run the benchmark and print the table.

    python -m benchmarks                 # SQLite, and PostgreSQL if DBJOBQ_TEST_POSTGRES_URL
    python -m benchmarks --quick         # smaller counts
    python -m benchmarks --smoke         # tiny: only checks that every case runs
    python -m benchmarks --only drain --only flow   # only these cases
    python -m benchmarks --only wait     # wait() wake-up latency from another process

Every dbjobq figure is printed next to a baseline measured in the same run on the
same database: the same work done with plain SQL through the driver.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy

from . import cases, flow_cases, peers, wait_cases, workflow_cases
from .cases import Figure

SIZES = {
    #        bulk,   single, drain,  threads,     procs, latency, history,  rss,    runs
    "full": (20_000, 2_000, 20_000, [1, 4, 16], 20_000, 100, 1_000_000, 1_000_000, 3),
    "quick": (20_000, 1_000, 5_000, [1, 4, 16], 5_000, 50, 100_000, 100_000, 1),
    "smoke": (200, 20, 200, [1, 4], 200, 5, 1_000, 1_000, 1),
}


CASES = [
    "enqueue",
    "drain",
    "peers",
    "flow",
    "workflows",
    "processes",
    "latency",
    "wait",
    "history",
    "memory",
]


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table."""
    rows = [("backend", "measure", "dbjobq", "baseline", "ratio")]
    for f in figures:
        value = f"{f.value:,.0f} {f.unit}" if f.unit != "ms" else f"{f.value:.1f} ms"
        if f.unit == "MB":
            value = f"{f.value:.0f} MB"
        base = "-" if f.baseline is None else f"{f.baseline:,.0f} {f.unit} ({f.baseline_name})"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        rows.append((f.backend, f.measure, value, base, ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def peer_figures(
    figures: list[Figure], work: Path, single: int, drain: int, runs: int
) -> list[Figure]:
    """The SQLite figures again, next to huey's (medians of `runs`), if huey is installed."""
    found = [peers.huey_sqlite(work, max(single, drain)) for _ in range(runs)]
    if None in found:
        print("huey is not installed: no peer figures", file=sys.stderr)
        return []
    enqueue, drained = (statistics.median(f) for f in zip(*found, strict=True))
    ours = {f.measure: f.value for f in figures if f.backend == "sqlite"}
    return [
        Figure(
            "sqlite",
            "enqueue, one job per call",
            ours["enqueue, one job per call"],
            "jobs/s",
            enqueue,
            "huey SqliteHuey",
        ),
        Figure(
            "sqlite",
            "drain, 1 worker thread",
            ours["drain, 1 worker thread"],
            "jobs/s",
            drained,
            "huey SqliteHuey, 1 thread",
        ),
    ]


def pgqueuer_figures(
    figures: list[Figure], work: Path, bulk: int, single: int, drain: int, runs: int
) -> list[Figure]:
    """The PostgreSQL figures again, next to pgqueuer's (medians), if it is installed."""
    found: list[peers.PgQueuerFigures] = []
    for _ in range(runs):
        with cases.scratch("postgresql", work) as store:
            assert store.schema is not None
            one = peers.pgqueuer_postgres(store.url, store.schema, max(bulk, drain), single)
        if one is None:
            print("pgqueuer is not installed: no PostgreSQL peer figures", file=sys.stderr)
            return []
        found.append(one)
    ours = {f.measure: f.value for f in figures if f.backend == "postgresql"}
    rows = [
        ("bulk enqueue (one call)", statistics.median(f.bulk_enqueue for f in found), "pgqueuer"),
        (
            "enqueue, one job per call",
            statistics.median(f.single_enqueue for f in found),
            "pgqueuer",
        ),
    ]
    rows += [
        (
            "drain, 1 worker thread",
            statistics.median(f.drain[batch] for f in found),
            f"pgqueuer, batch {batch}",
        )
        for batch in sorted(found[0].drain)
    ]
    return [
        Figure("postgresql", measure, ours[measure], "jobs/s", theirs, name)
        for measure, theirs, name in rows
    ]


def main() -> int:
    """Parse the options, run every case, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--smoke", action="store_true")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--only",
        action="append",
        choices=CASES,
        help="run only this case (repeat for several); peers need enqueue and drain too",
    )
    args = parser.parse_args()
    chosen = set(args.only or CASES)
    if "peers" in chosen and not {"enqueue", "drain"} <= chosen:
        parser.error("--only peers needs --only enqueue and --only drain too")
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    bulk, single, drain, threads, procs_jobs, samples, history, rss_jobs, runs = SIZES[size]
    backends = args.backend or ["sqlite"] + (
        ["postgresql"] if os.environ.get("DBJOBQ_TEST_POSTGRES_URL") else []
    )
    figures: list[Figure] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbjobq-bench-") as tmp:
        work = Path(tmp)

        @contextmanager
        def fresh(backend: str) -> Iterator[Any]:
            with cases.scratch(backend, work) as store:
                yield store

        for backend in backends:

            def factory(b: str = backend) -> Any:
                return fresh(b)

            def step(name: str, b: str = backend) -> None:
                print(
                    f"{b}: {name} ({time.monotonic() - began:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )

            def run(case: str) -> bool:
                if case in chosen:
                    step(case)
                return case in chosen

            if run("enqueue"):
                figures += cases.enqueue_rates(factory, backend, bulk, single, runs)
            if run("drain"):
                figures += cases.drain_rates(factory, backend, drain, threads, runs)
            if run("peers"):
                if backend == "sqlite":
                    figures += peer_figures(figures, work, single, drain, runs)
                else:
                    figures += pgqueuer_figures(figures, work, bulk, single, drain, runs)
            if run("flow"):
                figures += flow_cases.flow_drains(factory, backend, drain, threads[:2], runs)
            if run("workflows"):
                fan_out = 200 if size == "smoke" else 10_000
                figures += workflow_cases.workflow_figures(factory, backend, fan_out, 4, runs)
            if run("processes"):
                figures.append(cases.drain_processes(factory, backend, procs_jobs, 2, 8, runs))
            if run("latency"):
                with fresh(backend) as store:
                    figures += cases.pickup_latency(store, samples)
            if run("wait"):
                with fresh(backend) as store:
                    figures += wait_cases.wake_latency(store, samples)
            if run("history"):
                figures += cases.history_scaling(factory, backend, drain, history, runs)
            if run("memory"):
                with fresh(backend) as store:
                    figures.append(cases.worker_rss(store, rss_jobs))
    print(table(figures), flush=True)
    print(
        f"\n{size} run, {time.monotonic() - began:.0f}s; Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs"
    )
    if "postgresql" in backends:
        with cases.scratch("postgresql", Path(tempfile.gettempdir())) as store:
            storage = store.storage()
            with storage.engine.connect() as conn:
                version = conn.exec_driver_sql("SHOW server_version").scalar()
            if not cases.autovacuum(storage):
                print(
                    f"PostgreSQL {version} runs with autovacuum off: the long drains "
                    "vacuumed the jobs table every 10 s, as autovacuum would."
                )
            else:
                print(f"PostgreSQL {version}")
            storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
