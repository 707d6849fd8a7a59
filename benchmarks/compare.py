"""The plain drain of this checkout against another one, alternated in one session.

    git archive <commit> | tar -x -C /tmp/before
    python -m benchmarks.compare /tmp/before --rounds 6 --threads 1 --threads 4

Each round drains the same no-op jobs (`cases.drain_rate`, fresh tables) once with
each checkout's code, in a process of its own, the order swapped from round to round,
so that a busy machine slows both alike. Prints the medians as a table: this
checkout's rate, the other's as the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .__main__ import table
from .cases import ROOT, Figure

ONE = """
import sys, tempfile
from pathlib import Path
from benchmarks import cases
with cases.scratch(sys.argv[1], Path(tempfile.mkdtemp())) as store:
    print(cases.drain_rate(store, int(sys.argv[2]), int(sys.argv[3])))
"""


def drain_with(checkout: Path, backend: str, jobs: int, threads: int) -> float:
    """One drain with the code of `checkout` (its `dbjobq` and `benchmarks`)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    done = subprocess.run(
        [sys.executable, "-c", ONE, backend, str(jobs), str(threads)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[-1])


def main() -> int:
    """Parse the options, alternate the drains, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument("other", type=Path, help="the other checkout (a directory)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--threads", type=int, action="append")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    backends = args.backend or ["sqlite"] + (
        ["postgresql"] if os.environ.get("DBJOBQ_TEST_POSTGRES_URL") else []
    )
    checkouts = {"this": ROOT, "other": args.other.resolve()}
    figures = []
    for threads in args.threads or [1]:
        for backend in backends:
            found: dict[str, list[float]] = {name: [] for name in checkouts}
            for n in range(args.rounds):
                order = list(checkouts.items())
                for name, checkout in order if n % 2 == 0 else order[::-1]:
                    found[name].append(drain_with(checkout, backend, args.jobs, threads))
                    print(f"{backend}, {threads}: {name} {found[name][-1]:,.0f}", file=sys.stderr)
            this, other = (statistics.median(found[name]) for name in checkouts)
            figures.append(
                Figure(
                    backend,
                    f"drain, {threads} worker thread{'s' if threads > 1 else ''}",
                    this,
                    "jobs/s",
                    other,
                    f"{args.other.name}, alternated",
                )
            )
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
