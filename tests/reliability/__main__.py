"""Run the reliability scenarios and print the results table.

    python -m tests.reliability            # the quick tier (what CI runs)
    python -m tests.reliability --full     # the published figures

PostgreSQL and MySQL/MariaDB rows run when DBJOBQ_TEST_POSTGRES_URL and
DBJOBQ_TEST_MYSQL_URL are set. The exit status is 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from .harness import Report, scratch_store
from .scenarios import SCENARIOS

BACKENDS = {
    "sqlite": None,
    "postgresql": "DBJOBQ_TEST_POSTGRES_URL",
    "mysql": "DBJOBQ_TEST_MYSQL_URL",
}


def run(name: str, backend: str, size: str) -> Report:
    scenario, _ = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="dbjobq-reliability-") as tmp:
        work = Path(tmp)
        with scratch_store(backend, work) as store:
            return scenario(store, work, size)


def table(reports: list[Report]) -> str:
    head = (
        "scenario",
        "backend",
        "jobs",
        "faults",
        "lost",
        "double-completed",
        "re-executed (unexplained)",
        "max rescue delay",
        "result",
    )
    rows = [head]
    for r in reports:
        delay = "-" if r.max_rescue_delay is None else f"{r.max_rescue_delay:.2f} s"
        if r.max_rescue_delay is not None and r.rescue_bound is not None:
            delay += f" (bound {r.rescue_bound:.2f})"
        rows.append(
            (
                r.scenario,
                r.backend,
                str(r.jobs),
                str(r.faults),
                str(r.lost),
                str(r.double_completed),
                f"{r.re_executed} ({r.unexplained_re_executions})",
                delay,
                "ok" if r.ok else "FAIL: " + "; ".join(r.violations),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in [*widths, len(row[-1])]) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability")
    parser.add_argument("--full", action="store_true", help="the full figures (slow)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--backend", action="append", choices=list(BACKENDS))
    args = parser.parse_args()
    size = "full" if args.full else "quick"
    backends = args.backend or [
        b for b, var in BACKENDS.items() if var is None or os.environ.get(var)
    ]
    reports = []
    began = time.monotonic()
    for name in args.scenario or list(SCENARIOS):
        _, supported = SCENARIOS[name]
        for backend in backends:
            if backend not in supported:
                continue
            t0 = time.monotonic()
            report = run(name, backend, size)
            print(
                f"{name} / {backend}: {'ok' if report.ok else 'FAIL'} "
                f"({time.monotonic() - t0:.0f}s) {report.notes}",
                file=sys.stderr,
                flush=True,
            )
            reports.append(report)
    print(table(reports))
    print(f"\n{len(reports)} runs in {time.monotonic() - began:.0f}s ({size} tier)")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
