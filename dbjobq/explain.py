"""Why a job is where it is: `JobQueue.explain` and the reasons it gives.

```python
explanation = queue.explain(job_id)
print(explanation.text)
# job 01a2... (sync_account, queue default) is pending:
#   - held by concurrency key 'sync_account:42' (limit 1; running: job 01a1... since 12:00:03)
if "concurrency_full" in explanation.codes: ...
```

Each `Reason` has a stable `code`, a `detail` mapping of JSON values (times as ISO
8601 text, durations in seconds) and a `text` for people:

Finished jobs (completed, failed, cancelled):

- `finished`: `finished_at`, `attempts`, `error` (the first line of `last_error`).

Running jobs:

- `running`: `worker_id`, `started_at`, `lease_expires_at`, `lease_left` (seconds),
  `attempts`, `worker_seen_ago` (seconds since its worker saved its registry record;
  `None` if it has none).
- `heartbeat_stale`: the lease expired, or the worker has not saved its record for
  over `STALE_AFTER` seconds (or has none): it is likely gone, and the job goes back
  to pending once its lease expires.

Waiting jobs (enqueued with `depends_on`):

- `waiting_for_parents`: `waiting_for` (the first ten ids of the parents that have
  not finished, with `unfinished`, how many there are) and `parents` (how many it
  has).
- `parents_finished`: every parent has finished, but the job has not been settled
  yet (a crash between the two): the next `Storage.settle_waiting` of any worker
  makes it pending or cancels it.

Pending jobs:

- `scheduled`: not due yet: `run_at`, `due_in` (seconds), `attempts`, `error` (of the
  attempt that led to a retry, if any).
- `queue_paused`: its `queue` is paused.
- `no_worker`: no live worker takes its `type` from its `queue`;
  `workers_on_queue` lists those that take the queue but not the type.
- `workers_busy`: every live worker that takes it is running a job (`workers`,
  their ids); it starts when one has a free slot (a worker with `concurrency`
  above 1 may have one already: the registry does not say).
- `concurrency_full`: `limit` jobs with its concurrency `key` run already;
  `running` lists them (`id`, `type`, `worker_id`, `started_at`).
- `concurrency_ordered`: its key is `ordered` and earlier pending jobs of its type
  have that key (`key`, `count`, the first ten ids in `earlier`).
- `rate_limited`: its rate `key` had `count` starts in the last `per` seconds;
  room again at `until`.
- `limits_unknown`: no handler of its type is registered with the queue that
  explains it, so its concurrency and rate limits (which are the handler's) were not
  checked; `concurrency_key` is the stored key. Only on a storage with
  `Capabilities.limits`.
- `behind`: `ahead` due jobs of its queue come before it in claim order
  (`higher_priority` of them of a higher priority); `at_least` when the queue has
  more pending jobs than the `BEHIND_SCAN` that were looked at.
- `ready`: due, and nothing above holds it back: a worker claims it at its next
  poll.

A pending job can have several reasons at once (paused *and* behind others, say).
Limits are the handler's: the queue whose `explain` runs needs the handlers
registered (the CLI's `--app`) to check them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dbjobq.flow import Limits, window_full_until
from dbjobq.handlers import HandlerRegistry
from dbjobq.job import Job, JobStatus
from dbjobq.registry import WorkerInfo
from dbjobq.stats import SEEN_WITHIN
from dbjobq.storage.base import Storage

__all__ = ["BEHIND_SCAN", "STALE_AFTER", "Explanation", "Reason", "explain"]

BEHIND_SCAN = 10_000
"""At most this many pending jobs of a queue are read to count the jobs ahead of one."""

STALE_AFTER = 15.0
"""Seconds without a registry save after which a worker looks gone (it saves every 5 s)."""

_EVER = 100 * 365 * 24 * 3600.0  # seconds: any worker record, however old


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """One reason a job is where it is (see the codes in `dbjobq.explain`)."""

    code: str
    """Stable, machine-readable: `"scheduled"`, `"queue_paused"`, ..."""
    text: str
    """The same for people, one line."""
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The facts behind it, as JSON values (times as ISO 8601 text)."""

    def to_dict(self) -> dict[str, Any]:
        """The reason as JSON data: `code`, `text`, `detail`."""
        return {"code": self.code, "text": self.text, "detail": dict(self.detail)}


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    """Why a job is where it is: its status and the reasons (see `JobQueue.explain`)."""

    job_id: str
    """The job."""
    type: str
    """Its type."""
    queue: str
    """Its queue."""
    status: JobStatus
    """Its status when explained."""
    reasons: tuple[Reason, ...]
    """What holds it back or what happened to it, most important first."""
    now: datetime
    """When it was explained (storage clock)."""

    @property
    def codes(self) -> tuple[str, ...]:
        """The reasons' codes, in order."""
        return tuple(reason.code for reason in self.reasons)

    @property
    def text(self) -> str:
        """A heading line, then one line per reason."""
        head = f"job {self.job_id} ({self.type}, queue {self.queue}) is {self.status.value}:"
        return "\n".join([head, *(f"  - {reason.text}" for reason in self.reasons)])

    def to_dict(self) -> dict[str, Any]:
        """The explanation as JSON data, for `dbjobq explain --json`."""
        return {
            "job_id": self.job_id,
            "type": self.type,
            "queue": self.queue,
            "status": self.status.value,
            "now": self.now.isoformat(),
            "text": self.text,
            "reasons": [reason.to_dict() for reason in self.reasons],
        }


def explain(storage: Storage, registry: HandlerRegistry, job_id: str) -> Explanation:
    """Explain one job from what `storage` holds and the handlers in `registry`.

    A few reads, none of which changes anything; see `JobQueue.explain`.

    Raises:
        JobNotFound: If there is no such job.
        StorageError: If the storage cannot be reached.
    """
    job = storage.get(job_id)
    now = storage.now()
    status = JobStatus(job.status)
    if status.is_finished:
        reasons = [_finished(job)]
    elif status is JobStatus.RUNNING:
        reasons = _running(storage, job, now)
    elif status is JobStatus.WAITING:
        reasons = [_waiting(storage, job)]
    else:
        reasons = _pending(storage, registry, job, now)
    return Explanation(job.id, job.type, job.queue, status, tuple(reasons), now)


# -- finished and running -------------------------------------------------------------------


def _finished(job: Job) -> Reason:
    error = _first_line(job.last_error)
    text = f"{job.status.value} at {_when(job.finished_at)} after {_attempts(job.attempts)}"
    if error and job.status is not JobStatus.COMPLETED:
        text += f": {error}"
    detail = {"finished_at": _iso(job.finished_at), "attempts": job.attempts, "error": error}
    return Reason("finished", text, detail)


def _running(storage: Storage, job: Job, now: datetime) -> list[Reason]:
    worker = _worker(storage, job.worker_id)
    seen_ago = _seconds(now, worker.last_seen) if worker and worker.last_seen else None
    left = _seconds(job.lease_expires_at, now) if job.lease_expires_at else None
    text = f"running on worker {job.worker_id} since {_when(job.started_at)}"
    text += f" (attempt {job.attempts})"
    if seen_ago is not None:
        text += f"; its last heartbeat was {_span(seen_ago)} ago"
    if left is not None and left > 0:
        text += f"; lease expires in {_span(left)}"
    detail = {
        "worker_id": job.worker_id,
        "started_at": _iso(job.started_at),
        "lease_expires_at": _iso(job.lease_expires_at),
        "lease_left": left,
        "attempts": job.attempts,
        "worker_seen_ago": seen_ago,
    }
    reasons = [Reason("running", text, detail)]
    stale = {"worker_id": job.worker_id, "worker_seen_ago": seen_ago, "lease_left": left}
    if left is not None and left <= 0:
        reasons.append(
            Reason(
                "heartbeat_stale",
                f"its lease expired {_span(-left)} ago: the worker stopped heartbeating; "
                "the next rescue of expired leases (any worker's) takes the job back",
                stale,
            )
        )
    elif seen_ago is None or seen_ago > STALE_AFTER:
        seen = (
            "has no registry record" if seen_ago is None else f"was last seen {_span(seen_ago)} ago"
        )
        reasons.append(
            Reason(
                "heartbeat_stale",
                f"worker {job.worker_id} {seen}: it is likely gone, and the job goes back "
                "to pending once its lease expires",
                stale,
            )
        )
    return reasons


def _waiting(storage: Storage, job: Job) -> Reason:
    parents = storage.parents(job.id) if storage.capabilities.workflows else []
    open_ = [p for p in parents if not JobStatus(p.status).is_finished]
    detail = {
        "waiting_for": [p.id for p in open_[:10]],
        "unfinished": len(open_),
        "parents": len(parents),
    }
    if not open_:
        text = (
            f"all {len(parents)} parent(s) have finished: the next settling of waiting "
            "jobs (by any worker, every few seconds) makes it pending or cancels it"
        )
        return Reason("parents_finished", text, detail)
    shown = ", ".join(f"{p.id} ({JobStatus(p.status).value})" for p in open_[:3])
    more = f" and {len(open_) - 3} more" if len(open_) > 3 else ""
    text = f"waiting for {len(open_)} of {len(parents)} parent(s) to finish: {shown}{more}"
    return Reason("waiting_for_parents", text, detail)


def _worker(storage: Storage, worker_id: str | None) -> WorkerInfo | None:
    if worker_id is None:
        return None
    return next((w for w in storage.list_workers(seen_within=_EVER) if w.id == worker_id), None)


# -- pending --------------------------------------------------------------------------------


def _pending(storage: Storage, registry: HandlerRegistry, job: Job, now: datetime) -> list[Reason]:
    reasons: list[Reason] = []
    due = job.run_at <= now
    if not due:
        reasons.append(_scheduled(job, now))
    if storage.capabilities.pauses and job.queue in storage.paused_queues():
        reasons.append(
            Reason(
                "queue_paused",
                f"its queue {job.queue} is paused (resume it: dbjobq resume {job.queue})",
                {"queue": job.queue},
            )
        )
    if (workers := _workers(storage, job)) is not None:
        reasons.append(workers)
    reasons.extend(_limits(storage, registry, job, now))
    blocked = bool(reasons) and not all(r.code == "limits_unknown" for r in reasons)
    if due and (behind := _behind(storage, job, now)) is not None:
        reasons.append(behind)
    if not blocked:
        reasons.append(
            Reason(
                "ready",
                "due, and nothing holds it back: a worker on its queue claims it at its next poll",
                {},
            )
        )
    return reasons


def _scheduled(job: Job, now: datetime) -> Reason:
    due_in = _seconds(job.run_at, now)
    text = f"due in {_span(due_in)} (run_at {_when(job.run_at)})"
    error = _first_line(job.last_error) if job.attempts else None
    if error:
        text += f", a retry after {_attempts(job.attempts)}: {error}"
    detail = {
        "run_at": _iso(job.run_at),
        "due_in": due_in,
        "attempts": job.attempts,
        "error": error,
    }
    return Reason("scheduled", text, detail)


def _workers(storage: Storage, job: Job) -> Reason | None:
    """`no_worker` if no live worker takes the job, `workers_busy` if all that do are busy."""
    workers = storage.list_workers(seen_within=SEEN_WITHIN)
    on_queue = [w for w in workers if job.queue in w.queues]
    takers = [w for w in on_queue if job.type in w.types]
    if takers:
        if all(w.current_job is not None for w in takers):
            return Reason(
                "workers_busy",
                f"every live worker that takes it ({len(takers)}) is running a job: "
                "it starts when one of them has a free slot",
                {"workers": [w.id for w in takers]},
            )
        return None
    if on_queue:
        text = (
            f"no live worker handles type {job.type} in queue {job.queue}: "
            f"{len(on_queue)} live worker(s) take the queue but have no handler for the type"
        )
    else:
        text = f"no live worker takes jobs from queue {job.queue}"
    detail = {"queue": job.queue, "type": job.type, "workers_on_queue": [w.id for w in on_queue]}
    return Reason("no_worker", text, detail)


def _limits(storage: Storage, registry: HandlerRegistry, job: Job, now: datetime) -> list[Reason]:
    handler = registry.get(job.type)
    if handler is None:
        if not storage.capabilities.limits:
            return []  # no handler can have limits on this storage
        return [
            Reason(
                "limits_unknown",
                f"no handler of {job.type} is registered here (the command's --app): its "
                "concurrency and rate limits were not checked",
                {"type": job.type, "concurrency_key": job.concurrency_key},
            )
        ]
    limits = handler.limits
    if limits is None:
        return []
    reasons = []
    if limits.concurrency is not None:
        key = limits.concurrency_key(job.type, job.concurrency_key, job.payload)
        holders = [
            j
            for j in storage.list_jobs(status=JobStatus.RUNNING, limit=None)
            if j.concurrency_key == key and j.lease_expires_at and j.lease_expires_at > now
        ]
        if len(holders) >= limits.concurrency.limit:
            reasons.append(_concurrency_full(key, limits.concurrency.limit, holders))
        elif limits.concurrency.ordered:
            reasons.extend(_ordered(storage, limits, key, job))
    if limits.rate_limit is not None and storage.capabilities.limits:
        reason = _rate_limited(storage, limits, job, now)
        if reason is not None:
            reasons.append(reason)
    return reasons


def _concurrency_full(key: str, limit: int, holders: Sequence[Job]) -> Reason:
    shown = ", ".join(f"job {j.id} since {_when(j.started_at)}" for j in holders[:3])
    if len(holders) > 3:
        shown += f", and {len(holders) - 3} more"
    running = [
        {"id": j.id, "type": j.type, "worker_id": j.worker_id, "started_at": _iso(j.started_at)}
        for j in holders
    ]
    return Reason(
        "concurrency_full",
        f"held by concurrency key {key} (limit {limit}; running: {shown})",
        {"key": key, "limit": limit, "running": running},
    )


def _ordered(storage: Storage, limits: Limits, key: str, job: Job) -> list[Reason]:
    # Earlier pending jobs of its type (bounded): a key is shared across types only
    # through explicit keys, and a running earlier job is concurrency_full already.
    mine = (job.created_at, job.id)
    earlier = [
        j.id
        for j in storage.list_jobs(status=JobStatus.PENDING, type=job.type, limit=BEHIND_SCAN)
        if (j.created_at, j.id) < mine
        and limits.concurrency_key(j.type, j.concurrency_key, j.payload) == key
    ]
    if not earlier:
        return []
    return [
        Reason(
            "concurrency_ordered",
            f"its concurrency key {key} is ordered: it starts after the {len(earlier)} "
            f"earlier pending job(s) of the key, first {earlier[0]}",
            {"key": key, "earlier": earlier[:10], "count": len(earlier)},
        )
    ]


def _rate_limited(storage: Storage, limits: Limits, job: Job, now: datetime) -> Reason | None:
    rate = limits.rate_limit
    assert rate is not None
    key = limits.rate_key(job.type, job.payload)
    starts = [s.timestamp() for s in storage.recent_starts(key, within=rate.per)]
    until = window_full_until(starts, rate.count, rate.per)
    if until is None or until <= now.timestamp():
        return None
    moment = datetime.fromtimestamp(until, tz=now.tzinfo)
    return Reason(
        "rate_limited",
        f"rate limit {key} ({rate.count} per {rate.per:g}s) is full until {_when(moment)} "
        f"(in {_span(until - now.timestamp())})",
        {"key": key, "count": rate.count, "per": rate.per, "until": moment.isoformat()},
    )


def _claim_order(job: Job) -> tuple[int, datetime, str]:
    return (-job.priority, job.run_at, job.id)


def _behind(storage: Storage, job: Job, now: datetime) -> Reason | None:
    # Bounded: the first BEHIND_SCAN pending jobs of the queue, by id; past it the
    # count is a lower bound (later ids may be ahead too, with a higher priority).
    pending = storage.list_jobs(status=JobStatus.PENDING, queue=job.queue, limit=BEHIND_SCAN)
    mine = _claim_order(job)
    ahead = [j for j in pending if j.run_at <= now and j.id != job.id and _claim_order(j) < mine]
    if not ahead:
        return None
    at_least = len(pending) >= BEHIND_SCAN
    higher = sum(1 for j in ahead if j.priority > job.priority)
    count = f"at least {len(ahead)}" if at_least else str(len(ahead))
    text = f"waiting behind {count} due job(s) of queue {job.queue} in claim order"
    if higher:
        text += f" ({higher} of a higher priority)"
    detail = {"ahead": len(ahead), "higher_priority": higher, "at_least": at_least}
    return Reason("behind", text, detail)


# -- wording --------------------------------------------------------------------------------


def _seconds(later: datetime, earlier: datetime) -> float:
    return round((later - earlier).total_seconds(), 3)


def _span(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: 45s, 12m, 3.5h, 2.0d."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


def _first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None
