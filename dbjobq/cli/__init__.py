"""The `dbjobq` command: run workers, enqueue, inspect and manage jobs.

Every option can also come from an environment variable, `DBJOBQ_` and the option's
name in capitals (`--url` from `DBJOBQ_URL`, `--max-poll-interval` from
`DBJOBQ_MAX_POLL_INTERVAL`, `--json` from `DBJOBQ_JSON=1`); an option on the command
line wins. `demo` is the exception: it never reads `DBJOBQ_URL`, so that it cannot
write into the real database. Bad values are refused at start with one line naming
the option, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from dbjobq.cli._app import NoTables, close_opened
from dbjobq.cli._options import EXIT_FAILURE, EXIT_USAGE, UsageError, flag
from dbjobq.cli._output import safe
from dbjobq.cli._parser import build_parser
from dbjobq.errors import ConfigurationError, DBJobQError, InvalidJobError, JobNotFound

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `dbjobq` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    name = args.command
    try:
        if hasattr(args, "json"):
            args.json = flag(args, "json")
        status = run(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen below
    except BrokenPipeError:
        # The reader went away (`dbjobq jobs | head`): stop quietly, as Python's
        # documentation recommends, and keep the exit-time flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except UsageError as error:
        print(f"dbjobq {name}: error: {safe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except NoTables as error:
        print(f"dbjobq {name}: {safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except JobNotFound as error:
        print(f"dbjobq {name}: {safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except (ConfigurationError, InvalidJobError) as error:
        print(f"dbjobq {name}: error: {safe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except DBJobQError as error:
        print(f"dbjobq {name}: {type(error).__name__}: {safe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        close_opened()
    return status
