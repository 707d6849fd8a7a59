"""The `dbjobq` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dbjobq import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbjobq", description="Background jobs in your database.")
    parser.add_argument("--version", action="version", version=f"dbjobq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="enqueue and process demo jobs on a local SQLite file, showing progress"
    )
    demo.add_argument("--url", help="database URL (default: a fresh ./dbjobq-demo.db)")
    demo.add_argument("--jobs", type=int, default=300, help="how many jobs (default 300)")
    demo.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `dbjobq` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from dbjobq.demo import run_demo

        if args.jobs < 1 or args.workers < 1:
            print("dbjobq demo: --jobs and --workers must be at least 1", file=sys.stderr)
            return 2
        return run_demo(args.url, jobs=args.jobs, workers=args.workers)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
