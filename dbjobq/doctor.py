"""Checks of a deployment, each finding with its fix: what `dbjobq doctor` prints.

```python
from dbjobq.doctor import diagnose

for finding in diagnose(queue.storage, queue.registry, backlog_minutes=15):
    print(finding.severity, finding.text, finding.fix)
```

Each `Finding` has a stable `code`:

- `no_worker` (error): due pending jobs of a type in a queue that no live worker
  takes.
- `paused_backlog` (warning): a paused queue has pending jobs.
- `lease_expired` (error): a running job's lease has expired and no worker took it
  back (no worker rescues expired leases on this database).
- `lease_expiring` (warning): a running job's lease expires within `stuck_within`
  seconds: its worker may have stopped heartbeating.
- `backlog` (error): a queue's oldest due job has waited more than `backlog_minutes`.
- `concurrency_saturated` (warning): every slot of a concurrency key is held, the
  oldest holder for more than `backlog_minutes` (needs the handlers, as limits
  are theirs).
- `sqlite_not_wal` (error): a SQLite database is not in WAL mode.
- `autovacuum_off` (error): PostgreSQL autovacuum is disabled, for the server or
  for the jobs table.

Backend-specific checks: `SQLAlchemyStorage` gets the SQLite and PostgreSQL ones
from `sql_findings`. Any other backend may offer its own with a `health_checks()`
method that returns an iterable of `Finding`s; `diagnose` calls it when present.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from dbjobq.handlers import HandlerRegistry
from dbjobq.job import Job, JobStatus
from dbjobq.stats import SEEN_WITHIN
from dbjobq.storage.base import Storage

__all__ = ["Finding", "diagnose", "sql_findings"]


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong with a deployment, and how to fix it (see `diagnose`)."""

    code: str
    """Stable, machine-readable: `"no_worker"`, `"backlog"`, ... (see `dbjobq.doctor`)."""
    severity: str
    """`"error"` (jobs do not run, or will not for long) or `"warning"` (worth a look)."""
    text: str
    """What is wrong, one line."""
    fix: str
    """What to do about it, one line."""
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The facts behind it, as JSON values."""

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON data."""
        return {
            "code": self.code,
            "severity": self.severity,
            "text": self.text,
            "fix": self.fix,
            "detail": dict(self.detail),
        }


def diagnose(
    storage: Storage,
    registry: HandlerRegistry,
    *,
    backlog_minutes: float = 15.0,
    stuck_within: float = 5.0,
) -> list[Finding]:
    """Check a deployment: workers, pauses, leases, backlog, limits, the database.

    Reads only; a handful of queries (every running job is read once). Limits
    are the handlers', so the saturation check covers the types with a handler
    in `registry`.

    Args:
        storage: The storage to check (its tables must exist).
        registry: The handlers, for their concurrency limits (`JobQueue.registry`).
        backlog_minutes: A due job that has waited longer is a backlog; a key
            whose slots have all been held longer is saturated.
        stuck_within: A running job whose lease expires within this many seconds
            is reported as about to be lost.

    Returns:
        The findings, errors first; empty when all is well.

    Raises:
        StorageError: If the storage cannot be reached.
    """
    now = storage.now()
    pending = storage.pending_summary()
    workers = storage.list_workers(seen_within=SEEN_WITHIN)
    paused = storage.paused_queues() if storage.capabilities.pauses else set()
    running = storage.list_jobs(status=JobStatus.RUNNING, limit=None)
    findings: list[Finding] = []

    handled = {(q, t) for w in workers for q in w.queues for t in w.types}
    for group in pending:
        if group.oldest_run_at <= now and (group.queue, group.type) not in handled:
            findings.append(
                Finding(
                    "no_worker",
                    "error",
                    f"{group.count} pending job(s) of type {group.type} in queue {group.queue}, "
                    "and no live worker handles them",
                    f"start a worker on queue {group.queue} with a handler for {group.type} "
                    f"(dbjobq worker APP --queues {group.queue})",
                    {"queue": group.queue, "type": group.type, "pending": group.count},
                )
            )

    backlog: dict[str, int] = {}
    oldest: dict[str, datetime] = {}
    for group in pending:
        backlog[group.queue] = backlog.get(group.queue, 0) + group.count
        if group.oldest_run_at <= now:
            oldest[group.queue] = min(
                oldest.get(group.queue, group.oldest_run_at), group.oldest_run_at
            )
    for name in sorted(paused):
        if backlog.get(name):
            findings.append(
                Finding(
                    "paused_backlog",
                    "warning",
                    f"queue {name} is paused with {backlog[name]} pending job(s)",
                    f"resume it once the pause is over: dbjobq resume {name}",
                    {"queue": name, "pending": backlog[name]},
                )
            )
    for name, since in sorted(oldest.items()):
        waited = (now - since).total_seconds()
        if name not in paused and waited > backlog_minutes * 60:
            findings.append(
                Finding(
                    "backlog",
                    "error",
                    f"the oldest due job of queue {name} has waited {waited / 60:.0f} min "
                    f"(more than {backlog_minutes:g})",
                    f"add workers (or --concurrency) on queue {name}, or see what holds its "
                    f"jobs: dbjobq jobs --status pending --queue {name}, then dbjobq explain ID",
                    {"queue": name, "waited": round(waited, 3), "pending": backlog[name]},
                )
            )

    findings.extend(_leases(running, now, stuck_within))
    findings.extend(_saturated(running, registry, now, backlog_minutes))
    findings.extend(_backend(storage))
    return sorted(findings, key=lambda f: f.severity != "error")


def _leases(running: Iterable[Job], now: datetime, stuck_within: float) -> list[Finding]:
    findings = []
    for job in running:
        if job.lease_expires_at is None:
            continue
        left = (job.lease_expires_at - now).total_seconds()
        detail = {"job_id": job.id, "worker_id": job.worker_id, "lease_left": round(left, 3)}
        if left <= 0:
            findings.append(
                Finding(
                    "lease_expired",
                    "error",
                    f"job {job.id} ({job.type}) on worker {job.worker_id}: its lease expired "
                    f"{-left:.0f}s ago, and no worker has taken it back",
                    "start a worker on this database: workers take expired leases back "
                    "(the job retries, its attempt counted)",
                    detail,
                )
            )
        elif left <= stuck_within:
            findings.append(
                Finding(
                    "lease_expiring",
                    "warning",
                    f"job {job.id} ({job.type}) on worker {job.worker_id}: its lease expires "
                    f"in {left:.0f}s without a heartbeat",
                    f"check worker {job.worker_id} (dbjobq workers): a handler that blocks "
                    "the process, or a worker that died, stops its heartbeats",
                    detail,
                )
            )
    return findings


def _saturated(
    running: Iterable[Job], registry: HandlerRegistry, now: datetime, backlog_minutes: float
) -> list[Finding]:
    holders: dict[str, list[Job]] = {}
    limit_of: dict[str, int] = {}
    for job in running:
        concurrency = registry.concurrency_of(job.type)
        live = job.lease_expires_at is not None and job.lease_expires_at > now
        if concurrency is None or job.concurrency_key is None or not live:
            continue
        holders.setdefault(job.concurrency_key, []).append(job)
        key = job.concurrency_key
        limit_of[key] = min(limit_of.get(key, concurrency.limit), concurrency.limit)
    findings = []
    for key, jobs in sorted(holders.items()):
        first = min((j.started_at for j in jobs if j.started_at is not None), default=None)
        held = (now - first).total_seconds() if first is not None else 0.0
        if len(jobs) >= limit_of[key] and held > backlog_minutes * 60:
            findings.append(
                Finding(
                    "concurrency_saturated",
                    "warning",
                    f"concurrency key {key} has all {limit_of[key]} slot(s) held, the oldest "
                    f"for {held / 60:.0f} min: its other jobs wait",
                    "check the running jobs of the key (dbjobq jobs --status running); a "
                    "higher limit or a timeout on the handler lets the others through",
                    {
                        "key": key,
                        "limit": limit_of[key],
                        "running": [j.id for j in jobs],
                        "held": round(held, 3),
                    },
                )
            )
    return findings


def _backend(storage: Storage) -> list[Finding]:
    own = getattr(storage, "health_checks", None)
    if callable(own):
        return list(own())
    # Not imported here: a storage can only be a SQLAlchemyStorage once it is loaded.
    module = sys.modules.get("dbjobq.storage.sqlalchemy_storage")
    if module is not None and isinstance(storage, module.SQLAlchemyStorage):
        return sql_findings(storage)
    return []


def sql_findings(storage: Any) -> list[Finding]:
    """The checks of a `SQLAlchemyStorage`'s database: WAL on SQLite, autovacuum on PostgreSQL.

    Uses only the storage's public `engine`, `table_prefix` and `schema`.
    """
    import sqlalchemy as sa

    engine = storage.engine
    table = f"{storage.table_prefix}jobs"
    findings = []
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            mode = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
            if database not in (None, "", ":memory:") and mode != "wal":
                findings.append(
                    Finding(
                        "sqlite_not_wal",
                        "error",
                        f"the SQLite database {database} is in {mode} journal mode, not WAL: "
                        "readers block the writer and claims wait on each other",
                        "put the file on a local disk that allows WAL (not a network share), "
                        "writable with its directory",
                        {"database": database, "journal_mode": mode},
                    )
                )
        elif engine.dialect.name == "postgresql":
            server = str(conn.exec_driver_sql("SHOW autovacuum").scalar()).lower()
            options = conn.execute(
                sa.text(
                    "SELECT c.reloptions FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = :table AND n.nspname = COALESCE(:schema, current_schema())"
                ),
                {"table": table, "schema": storage.schema},
            ).scalar()
            off = [o for o in options or [] if o.lower().replace(" ", "") in _AUTOVACUUM_OFF]
            why = "every finished job leaves a dead row, and claims slow down as they pile up"
            if server != "on":
                findings.append(
                    Finding(
                        "autovacuum_off",
                        "error",
                        f"autovacuum is off for the whole server: {why}",
                        "set autovacuum = on in postgresql.conf and reload the server",
                        {"scope": "server", "setting": server},
                    )
                )
            if off:
                name = f"{storage.schema}.{table}" if storage.schema else table
                findings.append(
                    Finding(
                        "autovacuum_off",
                        "error",
                        f"autovacuum is off for the table {name}: {why}",
                        f"ALTER TABLE {name} RESET (autovacuum_enabled)",
                        {"scope": "table", "table": name, "reloptions": list(options)},
                    )
                )
    return findings


_AUTOVACUUM_OFF = {f"autovacuum_enabled={v}" for v in ("false", "off", "no", "0", "f")}
