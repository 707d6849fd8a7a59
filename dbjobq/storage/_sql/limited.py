"""Claims under concurrency and rate limits: one short transaction, no waiting.

A limited claim reads the due jobs of its types in claim order (locked, skipping
rows other claimers hold), works out each limited job's keys, takes a lock per key
without waiting (a key locked elsewhere is skipped this time), counts what the
limits count under those locks, and admits jobs in claim order. Keys already
full are left out of the read itself, so a key held back never stops the jobs
behind it. The per-key lock is the dialect's (`Dialect.try_key_locks`); the rest
is the same on every database.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.flow import LimitMap, Limits
from dbjobq.storage._sql.schema import RUNNING, UNFINISHED, db_now, db_now_plus, seconds

if TYPE_CHECKING:
    from dbjobq.storage._sql.dialects.base import Dialect, Ready, Rows

PAGES = 3
"""How many pages of due jobs one claim reads at most, while it admits too few."""
EXISTS_PER_QUERY = 200
"""Ordered keys checked per statement."""


def lookahead(limit: int) -> int:
    """How many due jobs one page reads for a claim of `limit` jobs."""
    return min(max(4 * limit, 16), 1000)


def lock_name(namespace: str, kind: str, key: str) -> bytes:
    """16 bytes naming the lock of one key of one table set (`kind`: c or r)."""
    return hashlib.blake2b(f"{namespace}\0{kind}\0{key}".encode(), digest_size=16).digest()


class Candidate(NamedTuple):
    """A due job a limited claim may take."""

    id: str
    type: str
    stored_key: str | None
    payload: Any
    concurrency_key: str | None
    """The key its concurrency limit counts it under (`None`: no such limit)."""
    rate_key: str | None
    """The key its rate limit counts it under (`None`: no such limit)."""


class Claim:
    """The state of one limited claim, over the pages it reads."""

    def __init__(
        self, dialect: Dialect, conn: Connection, ready: Ready, limits: Mapping[str, Limits]
    ) -> None:
        self.dialect = dialect
        self.conn = conn
        self.ready = ready
        self.limits = {
            t: lim
            for t, lim in limits.items()
            if ready.types is not None
            and t in ready.types
            and (lim.concurrency is not None or lim.rate_limit is not None)
        }
        self.locked: dict[tuple[str, str], bool] = {}  # (kind, key) -> ours?
        self.running: dict[str, int] = {}  # concurrency key -> running now (under lock)
        self.started: dict[str, int] = {}  # rate key -> starts in its window (under lock)
        self.later: set[str] = set()  # ordered keys with an older unfinished job
        self.admitted: list[Candidate] = []
        self.new_keys: dict[str, list[str]] = {}  # key -> ids whose stored key was NULL
        self.seen: list[str] = []
        self.full: dict[str, set[str]] = {}  # type -> concurrency keys it cannot take

    # -- reading ----------------------------------------------------------------------

    def hints(self) -> set[str]:
        """Read without locks what is full already; the types left to read at all.

        Running counts per key (few rows: only running jobs with keys), and the
        windows of rate limits that count a whole type.
        """
        jobs = self.dialect.jobs
        c = jobs.c
        running = sa.select(c.concurrency_key, sa.func.count()).where(
            c.concurrency_key.is_not(None), c.status == RUNNING, c.lease_expires_at > db_now()
        )
        counts = key_counts(self.conn, running.group_by(c.concurrency_key))
        for job_type, lim in self.limits.items():
            if lim.concurrency is not None:
                most = lim.concurrency.limit
                self.full[job_type] = {k for k, n in counts.items() if n >= most}
        types = set(self.ready.types or ())
        whole = {
            t: lim.rate_limit
            for t, lim in self.limits.items()
            if lim.rate_limit is not None and lim.rate_limit.key is None
        }
        if whole:
            found = self.window_counts({t: rate.per for t, rate in whole.items()})
            types -= {t for t, rate in whole.items() if found.get(t, 0) >= rate.count}
        return types

    def page(self, types: Collection[str], size: int) -> list[sa.Row[Any]]:
        """The next due jobs in claim order, leaving out what cannot be taken."""
        c = self.dialect.jobs.c
        queues, _, _, newest_first = self.ready
        stmt = self.dialect.ready(queues, types, size, newest_first).with_only_columns(
            c.id, c.type, c.concurrency_key, c.payload
        )
        by_keys: dict[frozenset[str], list[str]] = {}
        for job_type, keys in self.full.items():
            if keys and job_type in types:
                by_keys.setdefault(frozenset(keys), []).append(job_type)
        for full, of_types in by_keys.items():
            stmt = stmt.where(
                sa.or_(
                    c.concurrency_key.is_(None),
                    c.type.not_in(sorted(of_types)),
                    c.concurrency_key.not_in(sorted(full)),
                )
            )
        if self.seen:
            stmt = stmt.where(c.id.not_in(self.seen))
        return list(self.conn.execute(stmt))

    def candidate(self, row: sa.Row[Any]) -> Candidate:
        """A row with the keys its type's limits count it under."""
        job_id, job_type, stored, payload = tuple(row)
        lim = self.limits.get(job_type)
        if lim is None or not isinstance(payload, dict):
            # No limits, or a corrupt row: the claim fails it, as `claim` does.
            return Candidate(job_id, job_type, stored, payload, None, None)
        key = rate = None
        if lim.concurrency is not None:
            key = lim.concurrency_key(job_type, stored, payload)
            if stored is None:
                self.new_keys.setdefault(key, []).append(job_id)
        if lim.rate_limit is not None:
            rate = lim.rate_key(job_type, payload)
        return Candidate(job_id, job_type, stored, payload, key, rate)

    # -- locks and counts ---------------------------------------------------------------

    def lock(self, candidates: Sequence[Candidate]) -> None:
        """Try to lock the keys not seen yet; count under the locks taken."""
        wanted: list[tuple[str, str]] = []
        for cand in candidates:
            for kind, key in (("c", cand.concurrency_key), ("r", cand.rate_key)):
                if key is not None and (kind, key) not in self.locked:
                    self.locked[(kind, key)] = False
                    wanted.append((kind, key))
        if not wanted:
            return
        got = self.dialect.try_key_locks(self.conn, wanted)
        for pair in got:
            self.locked[pair] = True
        keys = sorted(key for kind, key in got if kind == "c")
        if keys:
            c = self.dialect.jobs.c
            stmt = (
                sa.select(c.concurrency_key, sa.func.count())
                .where(
                    c.concurrency_key.in_(keys),
                    c.status == RUNNING,
                    c.lease_expires_at > db_now(),
                )
                .group_by(c.concurrency_key)
            )
            counts = key_counts(self.conn, stmt)
            self.running.update({key: counts.get(key, 0) for key in keys})
        rates = {key for kind, key in got if kind == "r"}
        if rates:
            windows = {}
            for cand in candidates:
                lim = self.limits.get(cand.type)
                if cand.rate_key in rates and lim is not None and lim.rate_limit is not None:
                    windows[cand.rate_key] = lim.rate_limit.per
            counts = self.window_counts(windows)
            self.started.update({key: counts.get(key, 0) for key in windows})
        self.check_order(candidates, set(keys))

    def window_counts(self, windows: Mapping[str, float]) -> dict[str, int]:
        """Starts per rate key in its window (`windows`: key -> seconds)."""
        r = self.dialect.tables.rate_starts.c
        by_window: dict[float, list[str]] = {}
        for key, per in windows.items():
            by_window.setdefault(per, []).append(key)
        found: dict[str, int] = {}
        for i, (per, keys) in enumerate(sorted(by_window.items())):
            since = db_now_plus(seconds(f"w{i}", -per))
            stmt = (
                sa.select(r.rate_key, sa.func.count())
                .where(r.rate_key.in_(sorted(keys)), r.started_at > since)
                .group_by(r.rate_key)
            )
            found.update(key_counts(self.conn, stmt))
        return found

    def check_order(self, candidates: Sequence[Candidate], keys: set[str]) -> None:
        """Mark the ordered keys whose first candidate has an older unfinished job."""
        first: dict[str, str] = {}
        for cand in candidates:
            lim = self.limits.get(cand.type)
            key = cand.concurrency_key
            if (
                key in keys
                and key not in first
                and lim is not None
                and lim.concurrency is not None
                and lim.concurrency.ordered
            ):
                first[key] = cand.id
        jobs = self.dialect.jobs
        pairs = list(first.items())
        for at in range(0, len(pairs), EXISTS_PER_QUERY):
            chunk = pairs[at : at + EXISTS_PER_QUERY]
            checks = [older_exists(jobs, key, job_id, n) for n, (key, job_id) in enumerate(chunk)]
            row = self.conn.execute(sa.select(*checks)).one()
            self.later.update(key for (key, _), older in zip(chunk, row, strict=True) if older)

    # -- admitting ----------------------------------------------------------------------

    def admit(self, candidates: Iterable[Candidate], limit: int) -> None:
        """Admit in claim order while the limits allow, counting what this claim takes."""
        taking: Counter[str] = Counter()
        starting: Counter[str] = Counter()
        for cand in candidates:
            if len(self.admitted) >= limit:
                return
            lim = self.limits.get(cand.type)
            key, rate = cand.concurrency_key, cand.rate_key
            if lim is not None and key is not None and lim.concurrency is not None:
                if not self.locked.get(("c", key)) or key in self.later:
                    self.hold(cand.type, key)
                    continue
                if self.running[key] + taking[key] >= lim.concurrency.limit:
                    self.hold(cand.type, key)
                    continue
            if lim is not None and rate is not None and lim.rate_limit is not None:
                if not self.locked.get(("r", rate)):
                    continue
                if self.started[rate] + starting[rate] >= lim.rate_limit.count:
                    continue
            self.admitted.append(cand)
            if key is not None:
                taking[key] += 1
            if rate is not None:
                starting[rate] += 1
        for key, n in taking.items():
            self.running[key] += n
        for rate, n in starting.items():
            self.started[rate] += n

    def hold(self, job_type: str, key: str) -> None:
        """Leave `key` out of the next pages for `job_type`."""
        self.full.setdefault(job_type, set()).add(key)

    def write(self, params: Mapping[str, Any]) -> Rows:
        """Store the keys worked out, claim the admitted jobs, record their starts."""
        jobs = self.dialect.jobs
        c = jobs.c
        for key, ids in sorted(self.new_keys.items()):
            stmt = sa.update(jobs).where(c.id.in_(ids), c.concurrency_key.is_(None))
            self.conn.execute(stmt.values(concurrency_key=key))
        if not self.admitted:
            return []
        rows = self.dialect.claim_ids(self.conn, [cand.id for cand in self.admitted], params)
        starts = [(cand.rate_key, cand.id) for cand in self.admitted if cand.rate_key]
        if starts:
            rate_starts = self.dialect.tables.rate_starts
            self.conn.execute(
                sa.insert(rate_starts).values(
                    rate_key=sa.bindparam("r_key", type_=rate_starts.c.rate_key.type),
                    job_id=sa.bindparam("r_job", type_=rate_starts.c.job_id.type),
                    started_at=db_now(),
                ),
                [{"r_key": key, "r_job": job_id} for key, job_id in starts],
            )
            self.forget_old({key for key, _ in starts})
        return rows

    def forget_old(self, keys: Collection[str]) -> None:
        """Delete the starts of `keys` that have left their windows."""
        r = self.dialect.tables.rate_starts.c
        windows: dict[float, list[str]] = {}
        for cand in self.admitted:
            lim = self.limits.get(cand.type)
            rate = cand.rate_key
            if rate is not None and rate in keys and lim is not None and lim.rate_limit is not None:
                windows.setdefault(lim.rate_limit.per, []).append(rate)
        for i, (per, of_keys) in enumerate(sorted(windows.items())):
            cutoff = db_now_plus(seconds(f"f{i}", -per))
            stmt = sa.delete(self.dialect.tables.rate_starts).where(
                r.rate_key.in_(sorted(set(of_keys))), r.started_at <= cutoff
            )
            self.conn.execute(stmt)


def key_counts(conn: Connection, stmt: sa.Select[Any]) -> dict[str, int]:
    """The `(key, count)` rows of `stmt`, as a mapping."""
    return {str(key): int(n) for key, n in conn.execute(stmt)}


def older_exists(jobs: sa.Table, key: str, job_id: str, n: int) -> sa.ColumnElement[bool]:
    """Whether an unfinished job with `key` was enqueued before job `job_id`."""
    other, me = jobs.alias(f"o{n}"), jobs.alias(f"m{n}")
    o, m = other.c, me.c
    before = sa.or_(o.created_at < m.created_at, sa.and_(o.created_at == m.created_at, o.id < m.id))
    found = (
        sa.select(sa.literal(1))
        .select_from(other)
        .join(me, m.id == sa.literal(job_id))
        .where(o.concurrency_key == key, o.status.in_(UNFINISHED), before)
    )
    return sa.exists(found).label(f"older_{n}")


def claim_limited(
    dialect: Dialect,
    conn: Connection,
    ready: Ready,
    limits: LimitMap,
    params: Mapping[str, Any],
) -> Rows:
    """One limited claim in `conn`'s transaction: the claimed rows (all columns)."""
    claim = Claim(dialect, conn, ready, limits)
    types = claim.hints()
    if not types:
        return []
    size = lookahead(ready.limit)
    for _ in range(PAGES):
        rows = claim.page(types, size)
        candidates = [claim.candidate(row) for row in rows]
        claim.seen.extend(cand.id for cand in candidates)
        claim.lock(candidates)
        claim.admit(candidates, ready.limit)
        if len(claim.admitted) >= ready.limit or len(rows) < size:
            break
    return claim.write(params)
