"""The command line: one subcommand per `cmd_*` function, each with its options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from dbjobq import __version__
from dbjobq.cli._commands import (
    cmd_cancel,
    cmd_demo,
    cmd_enqueue,
    cmd_group,
    cmd_init,
    cmd_job,
    cmd_jobs,
    cmd_pause,
    cmd_purge,
    cmd_resume,
    cmd_retry,
    cmd_stats,
    cmd_workers,
)
from dbjobq.cli._diagnose import cmd_doctor, cmd_explain
from dbjobq.cli._options import EXIT_USAGE
from dbjobq.cli._worker import cmd_worker
from dbjobq.job import JobStatus


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: easy to read in a service's log.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# What `add_subparsers` returns: each `_add_*` function adds its command(s) to it.
_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def build_parser() -> argparse.ArgumentParser:
    """The `dbjobq` parser; each subcommand sets `run`, the function that carries it out."""
    parser = _Parser(prog="dbjobq", description="Background jobs in your database.")
    parser.add_argument("--version", action="version", version=f"dbjobq {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    init = _command(
        commands, "init", "create the tables (workers and the first enqueue also do)", cmd_init
    )
    init.description = (
        "Create the tables and indexes if missing; idempotent. The other commands that "
        "read or change jobs never create them: they report a database without them."
    )
    _add_worker(commands)
    _add_enqueue(commands)
    _add_jobs(commands)
    job = _command(
        commands, "job", "show one job in full: payload, result, progress, error", cmd_job
    )
    job.add_argument("id")
    group = _command(commands, "group", "a group's members per status, and its callback", cmd_group)
    group.add_argument("id")
    explain = _command(
        commands,
        "explain",
        "why a job is where it is: what holds it back, or what happened",
        cmd_explain,
    )
    explain.add_argument("id")
    doctor = _command(
        commands, "doctor", "check the deployment and print each problem with its fix", cmd_doctor
    )
    doctor.description = (
        "Check workers, paused queues, leases, backlog, concurrency keys and the database; "
        "exit status 1 if anything is found."
    )
    doctor.add_argument(
        "--backlog-minutes", help="a due job waiting longer is a backlog (default 15)"
    )
    _command(commands, "stats", "counts per queue and status, backlog age, throughput", cmd_stats)
    _command(commands, "workers", "live workers and what they are doing", cmd_workers)
    _add_manage(commands)
    _add_demo(commands)
    return parser


def _command(
    commands: _Commands,
    name: str,
    summary: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=summary)
    sub.set_defaults(run=run)
    if name not in ("demo", "worker"):
        sub.add_argument("--url", help="database URL (DBJOBQ_URL)")
        sub.add_argument("--app", help="module:queue, for its storage and handlers (DBJOBQ_APP)")
        sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return sub


def _add_worker(commands: _Commands) -> None:
    worker = _command(commands, "worker", "run workers until SIGTERM or Ctrl-C", cmd_worker)
    worker.add_argument("app", nargs="?", help="module:queue whose handlers to run (DBJOBQ_APP)")
    worker.add_argument("--app", dest="app_option", metavar="APP", help="the same as APP")
    worker.add_argument("--url", help="database URL, instead of the queue's own (DBJOBQ_URL)")
    worker.add_argument(
        "--queues", help="comma-separated queue names (default: the queue's default)"
    )
    worker.add_argument("--types", help="comma-separated job types to take (default: all handled)")
    worker.add_argument(
        "--lifo", action="store_true", default=None, help="newest due job first, within a priority"
    )
    worker.add_argument("--concurrency", help="worker threads in this process (default 1)")
    worker.add_argument("--worker-id", help="worker id; -1, -2, ... are added for several")
    worker.add_argument("--poll-interval", help="seconds to wait after an empty poll (default 1)")
    worker.add_argument("--max-poll-interval", help="longest wait between polls (default 10)")
    worker.add_argument("--lease-seconds", help="lease length in seconds (default 30)")
    worker.add_argument("--max-jobs", help="exit after about this many jobs")
    worker.add_argument(
        "--stop-timeout", help="seconds to wait for running jobs on stop (default 30)"
    )
    worker.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")
    worker.add_argument("--log-format", help="text (default) or json")


def _add_enqueue(commands: _Commands) -> None:
    enqueue = _command(commands, "enqueue", "add a job", cmd_enqueue)
    enqueue.add_argument("type", help="job type")
    enqueue.add_argument("--payload", help="payload as a JSON object")
    enqueue.add_argument("--queue", help="queue name")
    enqueue.add_argument("--priority", help="higher runs first")
    enqueue.add_argument("--delay", help="wait before running, such as 30s or 2h")
    enqueue.add_argument("--unique-key", help="return the unfinished job holding this key instead")
    enqueue.add_argument(
        "--concurrency-key", help="the key its handler's concurrency limit counts it under"
    )
    enqueue.add_argument("--max-retries", type=int, help="retries after a failed first attempt")
    enqueue.add_argument(
        "--depends-on", help="comma-separated ids of jobs to wait for (it is waiting until then)"
    )
    enqueue.add_argument(
        "--on-parent-failure",
        choices=["cancel", "run"],
        default="cancel",
        help="when a parent fails: cancel this job too (default) or run it anyway",
    )


def _add_jobs(commands: _Commands) -> None:
    jobs = _command(
        commands, "jobs", "list jobs (finished ones newest first, others oldest first)", cmd_jobs
    )
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--queue")
    jobs.add_argument("--type")
    jobs.add_argument("--correlation-id", help="jobs with this meta correlation_id (a job tree)")
    jobs.add_argument("--limit", help="at most this many (default 20)")
    order = jobs.add_mutually_exclusive_group()
    order.add_argument(
        "--newest-first",
        dest="newest_first",
        action="store_const",
        const=True,
        help="latest first (the default with --status completed, failed or cancelled)",
    )
    order.add_argument(
        "--oldest-first",
        dest="newest_first",
        action="store_const",
        const=False,
        help="earliest first (the default otherwise)",
    )


def _add_manage(commands: _Commands) -> None:
    retry = _command(commands, "retry", "run failed (or cancelled) jobs again", cmd_retry)
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.add_argument("--queue", help="with --all-failed: only this queue")

    cancel = _command(commands, "cancel", "cancel a waiting, pending or running job", cmd_cancel)
    cancel.add_argument("id")

    pause = _command(commands, "pause", "stop workers claiming from a queue", cmd_pause)
    pause.add_argument("name", help="queue name")
    resume = _command(commands, "resume", "let workers claim from a paused queue", cmd_resume)
    resume.add_argument("name", help="queue name")

    purge = _command(commands, "purge", "delete old finished jobs", cmd_purge)
    purge.add_argument("--older-than", required=True, help="age such as 7d or 12h")
    purge.add_argument(
        "--status",
        action="append",
        choices=["completed", "failed", "cancelled"],
        help="which finished jobs (default: completed and cancelled); repeatable",
    )


def _add_demo(commands: _Commands) -> None:
    demo = _command(
        commands, "demo", "enqueue and process demo jobs on a local SQLite file", cmd_demo
    )
    demo.add_argument("--url", help="database URL (default: a fresh ./dbjobq-demo.db)")
    demo.add_argument("--jobs", type=int, default=300, help="how many jobs (default 300)")
    demo.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
