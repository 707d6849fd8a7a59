"""Checking what `enqueue` was given, and making the `NewJob` that storage receives."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from dbjobq import _clock
from dbjobq._checks import KEY_MAX, MAX_DELAY, check_int, check_name, check_seconds, check_str
from dbjobq._ids import new_job_id
from dbjobq.errors import ConfigurationError, InvalidJobError, PayloadError
from dbjobq.flow import Concurrency, RateLimit
from dbjobq.handlers import Handler
from dbjobq.job import JobSpec, JobStatus, NewJob
from dbjobq.payload import checked_dumps
from dbjobq.periodic import Schedule
from dbjobq.retry import RetryPolicy
from dbjobq.workflow import MAX_PARENTS, ON_PARENT_FAILURE

__all__ = [
    "checked_filter",
    "checked_handler",
    "checked_job",
    "checked_schedule",
    "finished_statuses",
]

INT32 = (-(2**31), 2**31 - 1)
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _checked_parents(depends_on: Any) -> tuple[str, ...]:
    """`depends_on` as distinct job ids, in the order given."""
    if depends_on is None:
        return ()
    if isinstance(depends_on, str) or not isinstance(depends_on, (list, tuple)):
        raise InvalidJobError(
            f"depends_on must be a list of job ids, got {type(depends_on).__name__}"
        )
    if len(depends_on) > MAX_PARENTS:
        raise InvalidJobError(f"depends_on holds {len(depends_on)} ids; at most {MAX_PARENTS}")
    for parent in depends_on:
        if not isinstance(parent, str) or not parent:
            raise InvalidJobError(f"depends_on must hold job ids (strings), got {parent!r}")
    return tuple(dict.fromkeys(depends_on))


def checked_job(
    spec: JobSpec,
    default_queue: str,
    max_bytes: int | None,
    job_id: str | None = None,
    concurrency_of: Callable[[str], Concurrency | None] | None = None,
) -> NewJob:
    """A validated `NewJob` from `enqueue`'s arguments, given as a `JobSpec`.

    `concurrency_of(type)` is the `Concurrency` of the type's handler here, if
    any: a job without a `concurrency_key` gets the key it gives.

    Raises:
        InvalidJobError: If an argument has the wrong type or value.
        PayloadError: If the payload or meta is not a storable JSON object.
    """
    payload, queue, run_at, delay = spec.payload, spec.queue, spec.run_at, spec.delay
    max_retries, unique_key, timeout = spec.max_retries, spec.unique_key, spec.timeout
    meta = spec.meta
    job_type = check_name(spec.type, "job type")
    queue = default_queue if queue is None else check_name(queue, "queue")
    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a dict (a JSON object), got {type(payload).__name__}")
    payload_json = checked_dumps(payload, what="payload", max_bytes=max_bytes)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise PayloadError(f"meta must be a dict (a JSON object), got {type(meta).__name__}")
    meta_json = "{}" if not meta else checked_dumps(meta, what="meta", max_bytes=max_bytes)
    priority = check_int(spec.priority, "priority", *INT32)
    if run_at is not None and delay is not None:
        raise InvalidJobError("give either run_at or delay, not both")
    if run_at is not None:
        run_at = _checked_run_at(run_at)
    delay = 0.0 if delay is None else check_seconds(delay, "delay")
    # None stays None: the handler that runs the job decides (HandlerRegistry).
    if max_retries is not None:
        max_retries = check_int(max_retries, "max_retries", 0, 1000)
    if unique_key is not None:
        unique_key = check_name(unique_key, "unique_key", KEY_MAX)
    if timeout is not None:
        timeout = check_seconds(timeout, "timeout", allow_zero=False)
    concurrency_key = spec.concurrency_key
    if concurrency_key is not None:
        concurrency_key = check_name(concurrency_key, "concurrency_key", KEY_MAX)
    elif concurrency_of is not None and (limit := concurrency_of(job_type)) is not None:
        concurrency_key = limit.key_of(job_type, payload)
    depends_on = _checked_parents(spec.depends_on)
    if spec.on_parent_failure not in ON_PARENT_FAILURE:
        raise InvalidJobError(
            f"on_parent_failure must be one of {', '.join(map(repr, ON_PARENT_FAILURE))}, "
            f"got {spec.on_parent_failure!r}"
        )
    unique_for, on_conflict = _checked_unique_rules(spec, unique_key)
    return NewJob(
        id=new_job_id() if job_id is None else job_id,
        type=job_type,
        queue=queue,
        payload=payload,
        priority=priority,
        max_retries=max_retries,
        run_at=run_at,
        delay=delay,
        unique_key=unique_key,
        meta=meta,
        timeout=timeout,
        concurrency_key=concurrency_key,
        depends_on=depends_on,
        on_parent_failure=spec.on_parent_failure,
        payload_json=payload_json,
        meta_json=meta_json,
        unique_for=unique_for,
        on_conflict=on_conflict,
    )


ON_CONFLICT = ("return", "raise", "replace")


def _checked_unique_rules(spec: JobSpec, unique_key: str | None) -> tuple[float | None, str]:
    """`unique_for` in seconds (or `None`) and `on_conflict`, both needing a key."""
    unique_for, on_conflict = spec.unique_for, spec.on_conflict
    if not isinstance(on_conflict, str) or on_conflict not in ON_CONFLICT:
        raise InvalidJobError(
            f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}, got {on_conflict!r}"
        )
    if unique_for is not None:
        unique_for = check_seconds(unique_for, "unique_for", allow_zero=False)
    if unique_key is None and (unique_for is not None or on_conflict != "return"):
        given = "unique_for" if unique_for is not None else f"on_conflict={on_conflict!r}"
        raise InvalidJobError(f"{given} needs a unique_key")
    return unique_for, on_conflict


def _checked_run_at(run_at: object) -> datetime:
    if not isinstance(run_at, datetime):
        raise InvalidJobError(f"run_at must be a datetime, got {type(run_at).__name__}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidJobError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
    run_at = run_at.astimezone(timezone.utc)
    latest = _clock.now() + timedelta(seconds=MAX_DELAY)
    if not EARLIEST <= run_at <= latest:
        raise InvalidJobError("run_at must be between 1970 and 100 years from now")
    return run_at


def checked_schedule(
    spec: JobSpec,
    name: str | None,
    cron: str | None,
    every: float | timedelta | None,
    tz: str,
    default_queue: str,
    max_bytes: int | None,
) -> Schedule:
    """A validated `Schedule` of jobs with these fields (see `JobQueue.schedule`).

    Raises:
        ConfigurationError: If the schedule or its jobs' fields are invalid.
    """
    try:
        job = checked_job(spec, default_queue, max_bytes)
        schedule_name = check_name(name or spec.type, "schedule name")
        interval = None if every is None else check_seconds(every, "every")
    except InvalidJobError as error:
        raise ConfigurationError(str(error)) from None
    return Schedule(
        name=schedule_name,
        type=job.type,
        cron=cron,
        every=interval,
        tz=tz,
        payload=job.payload,
        queue=job.queue,
        priority=job.priority,
        max_retries=job.max_retries,
        timeout=job.timeout,
        unique_key=job.unique_key,
    )


def checked_filter(
    status: JobStatus | str | None, queue: str | None, job_type: str | None, limit: int | None
) -> JobStatus | None:
    """Check `list_jobs`'s filters; the status as a `JobStatus`."""
    for name, value in (("queue", queue), ("type", job_type)):
        if value is not None:
            check_str(value, name)
    state = None
    if status is not None:
        try:
            state = JobStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in JobStatus)
            raise InvalidJobError(f"unknown status {status!r}; use one of: {known}") from None
    if limit is not None:
        check_int(limit, "limit", 0, 2**31 - 1)
    return state


def finished_statuses(statuses: Iterable[JobStatus | str]) -> list[JobStatus]:
    """Check `purge`'s statuses: known, and finished ones."""
    states = []
    for status in statuses:
        try:
            state = JobStatus(status)
        except ValueError:
            raise InvalidJobError(f"unknown status {status!r}") from None
        if not state.is_finished:
            raise InvalidJobError(f"cannot purge {state.value} jobs, only finished ones")
        states.append(state)
    return states


def checked_handler(
    job_type: str,
    fn: Callable[..., Any],
    max_retries: int | None,
    timeout: float | None,
    retry_policy: RetryPolicy | None,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
) -> Handler:
    """A `Handler` of `fn`, its options checked (see `JobQueue.register`).

    Raises:
        ConfigurationError: If an option is invalid or `fn` is not callable.
    """
    if concurrency is not None and not isinstance(concurrency, Concurrency):
        raise ConfigurationError(
            f"concurrency must be a Concurrency or None, got {type(concurrency).__name__}"
        )
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise ConfigurationError(
            f"rate_limit must be a RateLimit or None, got {type(rate_limit).__name__}"
        )
    try:
        check_name(job_type, "job type")
        if max_retries is not None:
            check_int(max_retries, "max_retries", 0, 1000)
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout", allow_zero=False)
    except InvalidJobError as error:
        raise ConfigurationError(str(error)) from None
    if not callable(fn):
        raise ConfigurationError(f"handler for {job_type!r} is not callable")
    return Handler(job_type, fn, max_retries, timeout, retry_policy, concurrency, rate_limit)
