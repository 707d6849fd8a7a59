"""The commands that enqueue, inspect and manage jobs: everything but `worker`.

Each `cmd_*` function takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import json

from dbjobq.cli._app import open_queue, where
from dbjobq.cli._options import EXIT_FAILURE, UsageError, duration, number
from dbjobq.cli._output import age, print_json, safe, short, table, when
from dbjobq.job import Job
from dbjobq.queue import Handler, JobQueue


def cmd_init(args: argparse.Namespace) -> int:
    """`dbjobq init`: create the tables and indexes if missing."""
    queue = open_queue(args, existing=False)
    queue.initialize()
    if args.json:
        print_json({"initialized": True})
    else:
        print(f"dbjobq tables ready at {where(queue.storage)}")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    """`dbjobq enqueue TYPE`: add a job and print its id."""
    queue = open_queue(args, existing=False)  # the first job creates the tables
    try:
        payload = json.loads(args.payload) if args.payload else None
    except ValueError as error:
        raise UsageError(f"--payload is not JSON: {error}") from error
    delay = None if args.delay is None else duration(args.delay, "--delay")
    priority = (
        0
        if args.priority is None
        else number(
            args, "priority", 0, kind=int, low=-(2**31), high=2**31 - 1, strictly_above=False
        )
    )
    job_id = queue.enqueue(
        args.type,
        payload,
        queue=args.queue,
        priority=priority,
        delay=delay,
        unique_key=args.unique_key,
        concurrency_key=args.concurrency_key,
        max_retries=None if args.max_retries is None else int(args.max_retries),
        depends_on=_ids(args.depends_on),
        on_parent_failure=args.on_parent_failure,
    )
    if args.json:
        print_json({"id": job_id})
    else:
        print(job_id)
    return 0


def _ids(text: str | None) -> list[str] | None:
    """`--depends-on a,b`: the ids, or `None` when not given."""
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise UsageError("--depends-on needs at least one job id")
    return ids


def cmd_jobs(args: argparse.Namespace) -> int:
    """`dbjobq jobs`: list jobs, filtered by status, queue and type."""
    limit = number(args, "limit", 20, kind=int, low=1, high=2**31 - 1, strictly_above=False)
    newest_first = args.newest_first
    if newest_first is None:  # finished jobs: the latest are the interesting ones
        newest_first = args.status in ("completed", "failed", "cancelled")
    queue = open_queue(args)
    jobs = queue.list_jobs(
        args.status,
        queue=args.queue,
        type=args.type,
        limit=limit,
        newest_first=newest_first,
        correlation_id=args.correlation_id,
    )
    if args.json:
        print_json(jobs)
        return 0
    table(
        ["ID", "TYPE", "QUEUE", "STATUS", "TRIES", "PRIO", "CREATED", "LAST ERROR"],
        [
            (
                j.id,
                j.type,
                j.queue,
                j.status.value,
                f"{j.attempts}/{_tries(queue, j)}",
                j.priority,
                when(j.created_at),
                short(j.last_error, 50),
            )
            for j in jobs
        ],
    )
    return 0


def _tries(queue: JobQueue, job: Job) -> str:
    """Attempts allowed, as the handler of `queue` would run the job; "?" if unknown."""
    if job.max_retries is None and job.type not in queue.handlers:
        return "?"
    return str(queue.registry.max_retries_of(job) + 1)


def cmd_job(args: argparse.Namespace) -> int:
    """`dbjobq job ID`: one job in full."""
    queue = open_queue(args)
    job = queue.get_job(args.id)
    if args.json:
        print_json(job)
        return 0
    _print_job(job, queue)
    return 0


def _print_job(job: Job, queue: JobQueue) -> None:
    # The values the job runs with: its own, else its handler's, known with --app.
    known = job.type in queue.handlers
    if job.max_retries is not None or known:
        attempts = f"{job.attempts} of {queue.registry.max_retries_of(job) + 1}"
    else:
        attempts = f"{job.attempts} of (handler default)"
    timeout = queue.registry.timeout_of(job)
    shown_timeout = "-" if known else "handler default"
    if timeout is not None:
        shown_timeout = f"{timeout:g}s"
    fields = [
        ("id", job.id),
        ("type", job.type),
        ("queue", job.queue),
        ("status", job.status.value),
        ("priority", job.priority),
        ("attempts", attempts),
        ("run at", when(job.run_at)),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("worker", job.worker_id or "-"),
        ("unique key", job.unique_key or "-"),
        ("timeout", shown_timeout),
    ]
    if job.concurrency_key is not None:
        fields.append(("concurrency key", job.concurrency_key))
    handler = queue.registry.get(job.type)
    if handler is not None and handler.limits is not None:
        fields.append(("limits", _limits(handler)))
    if job.progress is not None:
        fields.append(("progress", f"{job.progress:g} {job.progress_message or ''}".rstrip()))
    if queue.storage.capabilities.workflows:
        for name, related in (
            ("parents", queue.parents(job.id)),
            ("children", queue.children(job.id)),
        ):
            if related:
                fields.append((name, _related(related)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {safe(value)}")
    print(f"{'payload'.ljust(width)}  {safe(json.dumps(job.payload, ensure_ascii=False))}")
    if job.meta:
        print(f"{'meta'.ljust(width)}  {safe(json.dumps(job.meta, ensure_ascii=False))}")
    if job.result is not None:
        print(f"{'result'.ljust(width)}  {safe(json.dumps(job.result, ensure_ascii=False))}")
    if job.last_error:
        print(f"\nlast error:\n{safe(job.last_error, lines=True)}")


def _related(jobs: list[Job]) -> str:
    """Parents or children in one line: the first few ids with their status."""
    shown = ", ".join(f"{j.id} ({j.status.value})" for j in jobs[:5])
    return shown + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")


def cmd_group(args: argparse.Namespace) -> int:
    """`dbjobq group ID`: a group's members per status, and its callback."""
    queue = open_queue(args)
    group = queue.get_group(args.id)
    callback = None if group.callback_id is None else queue.get_job(group.callback_id)
    if args.json:
        print_json(
            {
                "id": group.id,
                "created_at": group.created_at,
                "total": group.total,
                "counts": {status.value: n for status, n in group.counts.items()},
                "finished": group.finished,
                "callback": None
                if callback is None
                else {"id": callback.id, "status": callback.status.value},
            }
        )
        return 0
    counts = ", ".join(f"{n} {status.value}" for status, n in sorted(group.counts.items()))
    print(f"group {group.id} (created {when(group.created_at)}): {group.total} member(s)")
    print(f"  {counts or 'no members'}")
    if callback is not None:
        print(f"  then {callback.id} ({callback.type}): {callback.status.value}")
    return 0


def _limits(handler: Handler) -> str:
    """A handler's limits in words, for `dbjobq job`."""
    shown = []
    if (concurrency := handler.concurrency) is not None:
        ordered = ", in order" if concurrency.ordered else ""
        shown.append(f"{concurrency.limit} running per concurrency key{ordered}")
    if (rate := handler.rate_limit) is not None:
        per_key = " per rate key" if rate.key is not None else ""
        shown.append(f"{rate.count} starts per {rate.per:g}s{per_key}")
    return "; ".join(shown)


def cmd_stats(args: argparse.Namespace) -> int:
    """`dbjobq stats`: counts per queue and status, backlog age, throughput."""
    stats = open_queue(args).stats()
    if args.json:
        print_json(stats)
        return 0
    rows = []
    for q in stats.queues:
        c = q.counts
        rows.append(
            (
                q.queue,
                c["waiting"],
                c["pending"],
                c["running"],
                c["completed"],
                c["failed"],
                c["cancelled"],
                age(q.oldest_pending_age),
                "/".join(str(q.finished[w]) for w in sorted(q.finished)),
            )
        )
    table(
        [
            "QUEUE",
            "WAITING",
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "OLDEST DUE",
            "DONE 1m/5m/15m",
        ],
        rows,
    )
    print(f"\n{len(stats.workers)} live worker(s)")
    for q in stats.queues:
        if q.paused:
            print(f"paused: queue {safe(q.queue)} (dbjobq resume {safe(q.queue)})")
    for q in stats.queues:
        if q.running_keys:
            busiest = sorted(q.running_keys.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{safe(key)} {n}" for key, n in busiest[:5])
            more = f" and {len(busiest) - 5} more" if len(busiest) > 5 else ""
            print(f"running per concurrency key in queue {safe(q.queue)}: {shown}{more}")
    for q in stats.queues:
        for job_type in q.unhandled_types:
            print(f"warning: no live worker handles {job_type!r} jobs in queue {q.queue!r}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """`dbjobq workers`: live workers and what they are doing."""
    queue = open_queue(args)
    workers = queue.list_workers()
    if args.json:
        print_json(workers)
        return 0
    now = queue.storage.now()
    table(
        ["ID", "HOST", "PID", "QUEUES", "CURRENT JOB", "JOBS", "LAST SEEN"],
        [
            (
                w.id,
                w.hostname,
                w.pid,
                ",".join(w.queues),
                w.current_job or "-",
                w.jobs_processed,
                "-" if w.last_seen is None else age((now - w.last_seen).total_seconds()) + " ago",
            )
            for w in workers
        ],
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """`dbjobq retry ID` or `--all-failed`: run failed (or cancelled) jobs again."""
    if args.all_failed and args.id:
        raise UsageError("give a job ID or --all-failed, not both")
    if not args.all_failed and not args.id:
        raise UsageError("give the ID of the job to retry, or --all-failed for every failed job")
    queue = open_queue(args)
    ids = (
        [args.id]
        if args.id
        else [j.id for j in queue.list_jobs("failed", queue=args.queue, limit=None)]
    )
    retried = [job_id for job_id in ids if queue.retry(job_id)]
    if args.json:
        print_json({"retried": retried})
    elif args.id and not retried:
        print(
            f"job {args.id} was not retried: it is not failed or cancelled, "
            "or another unfinished job holds its unique key"
        )
        return EXIT_FAILURE
    else:
        print(f"retried {len(retried)} job(s)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """`dbjobq cancel ID`: cancel a waiting, pending or running job."""
    done = open_queue(args).cancel(args.id)
    if args.json:
        print_json({"cancelled": done})
    elif done:
        print(f"cancelled {args.id}")
    else:
        print(f"job {args.id} had already finished")
    return 0 if done else EXIT_FAILURE


def cmd_pause(args: argparse.Namespace) -> int:
    """`dbjobq pause NAME`: stop every worker from claiming the queue's jobs."""
    done = open_queue(args).pause(args.name)
    if args.json:
        print_json({"paused": done})
    else:
        print(
            f"paused queue {safe(args.name)}"
            if done
            else f"queue {safe(args.name)} was paused already"
        )
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """`dbjobq resume NAME`: let workers claim from a paused queue again."""
    done = open_queue(args).resume(args.name)
    if args.json:
        print_json({"resumed": done})
    else:
        print(
            f"resumed queue {safe(args.name)}"
            if done
            else f"queue {safe(args.name)} was not paused"
        )
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """`dbjobq purge --older-than AGE`: delete old finished jobs."""
    older_than = duration(args.older_than, "--older-than")
    statuses = args.status or ["completed", "cancelled"]
    deleted = open_queue(args).purge(older_than, statuses=statuses)
    if args.json:
        print_json({"deleted": deleted})
    else:
        print(f"deleted {deleted} job(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`dbjobq demo`: enqueue and process demo jobs on a local SQLite file."""
    from dbjobq.demo import run_demo

    if args.jobs < 1 or args.workers < 1:
        raise UsageError("--jobs and --workers must be at least 1")
    # Not DBJOBQ_URL: that names the real database, which a demo must not write into.
    return run_demo(args.url, jobs=args.jobs, workers=args.workers)
