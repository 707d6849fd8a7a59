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
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbjobq.flow import LimitMap, Limits
from dbjobq.storage._sql.schema import RUNNABLE, RUNNING, db_now, db_now_plus, seconds
from dbjobq.storage.admission import Candidate, Keyed, admit, keyed

if TYPE_CHECKING:
    from dbjobq.storage._sql.dialects.base import Dialect, Ready, Rows

PAGES = 3
"""How many pages of due jobs one claim reads at most, while it admits too few."""
BACKFILL = 1000
"""How many unkeyed jobs of ordered types one claim keys at most."""
HEADS_PER_QUERY = 200
"""Ordered keys whose first job one statement finds."""


def lookahead(limit: int) -> int:
    """How many due jobs one page reads for a claim of `limit` jobs."""
    return min(max(4 * limit, 16), 1000)


def lock_name(namespace: str, kind: str, key: str) -> bytes:
    """16 bytes naming the lock of one key of one table set (`kind`: c or r)."""
    return hashlib.blake2b(f"{namespace}\0{kind}\0{key}".encode(), digest_size=16).digest()


class Claim:
    """The state of one limited claim, over the pages it reads."""

    def __init__(
        self,
        dialect: Dialect,
        conn: Connection,
        ready: Ready,
        limits: Mapping[str, Limits],
        one_per_key: bool = False,
    ) -> None:
        self.dialect = dialect
        self.conn = conn
        self.one_per_key = one_per_key
        self.taken_keys: set[str] = set()  # concurrency keys this claim admitted
        self.ready = ready
        types = set(ready.types or ())
        self.limits = {
            t: lim
            for t, lim in limits.items()
            if t in types and (lim.concurrency is not None or lim.rate_limit is not None)
        }
        self.locked: dict[str, bool] = {}  # c:<key> or r:<key> -> whether this claim holds it
        self.running: dict[str, int] = {}  # concurrency key -> running (counted under lock)
        self.started: dict[str, int] = {}  # rate key -> starts in its window (under lock)
        self.heads: dict[str, str] = {}  # ordered key -> its unfinished job enqueued first
        self.admitted: list[Keyed] = []
        self.seen: list[str] = []
        self.keyed_types: set[str] = set()  # ordered types whose jobs were all keyed
        self.unsafe: set[str] = set()  # ordered types with jobs whose keys are unknown
        self.full: dict[str, set[str]] = {}  # type -> concurrency keys it cannot take

    # -- reading ----------------------------------------------------------------------

    def hints(self) -> set[str]:
        """Read without locks what is full already; the types left to read at all.

        Running counts per key (few rows: only running jobs with keys), and the
        windows of rate limits that count a whole type.
        """
        c = self.dialect.jobs.c
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

    def due(self, types: Collection[str], size: int) -> sa.Select[Any]:
        """Due jobs of `types` in claim order, locked, skipping rows others hold."""
        c = self.dialect.jobs.c
        queues, _, _, newest_first = self.ready
        return self.dialect.ready(queues, types, size, newest_first).with_only_columns(
            c.id, c.type, c.concurrency_key, c.payload
        )

    def page(self, types: Collection[str], size: int) -> list[sa.Row[Any]]:
        """The next due jobs in claim order, leaving out keys that cannot be taken."""
        c = self.dialect.jobs.c
        stmt = self.due(types, size)
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

    def keyed(self, rows: Sequence[sa.Row[Any]]) -> list[Keyed]:
        """The rows with the keys their types' limits count them under."""
        out = []
        new_keys: dict[str, list[str]] = {}  # key -> ids whose stored key was NULL
        for row in rows:
            values: tuple[Any, ...] = tuple(row)
            job = Candidate(*values)
            if job.type in self.limits and not isinstance(job.payload, dict):
                # A corrupt row: claimed and failed at once, as `claim` does.
                out.append(Keyed(job, None, None, new_key=False, ordered=False))
                continue
            (one,) = keyed([job], self.limits)
            if one.new_key and one.concurrency_key is not None:
                new_keys.setdefault(one.concurrency_key, []).append(job.id)
            out.append(one)
        # Stored at once: the counts below then see these jobs under their keys.
        jobs = self.dialect.jobs
        c = jobs.c
        for key, ids in sorted(new_keys.items()):
            stmt = sa.update(jobs).where(c.id.in_(ids), c.concurrency_key.is_(None))
            self.conn.execute(stmt.values(concurrency_key=key))
        return out

    def missing_heads(self, candidates: Sequence[Keyed], types: Collection[str]) -> list[Keyed]:
        """The due first jobs of ordered keys that come later in claim order.

        Only a key's first job can start; jobs enqueued after it may come first in
        claim order (a higher priority), and would otherwise hide it.
        """
        have = {cand.job.id for cand in candidates}
        ids = sorted({head for head in self.heads.values() if head not in have})
        ids = [job_id for job_id in ids if job_id not in self.seen]
        if not ids:
            return []
        c = self.dialect.jobs.c
        found = self.keyed(list(self.conn.execute(self.due(types, len(ids)).where(c.id.in_(ids)))))
        self.seen.extend(cand.job.id for cand in found)
        self.lock(found)
        return found

    def key_the_rest(self, candidates: Sequence[Keyed]) -> None:
        """Store the keys of every pending or running job of an ordered type seen without one.

        A job's enqueue order counts among the jobs of its key, but a job enqueued
        where its handler was unknown has no key until a claim works it out. Once a
        claim meets such a job of an ordered type, it keys all of them; if some
        stay unkeyed (held by another claim, or too many), the type's ordered jobs
        wait for a later claim.
        """
        types = sorted(
            {c.job.type for c in candidates if c.ordered and c.new_key} - self.keyed_types
        )
        if not types:
            return
        self.keyed_types.update(types)
        c = self.dialect.jobs.c
        unkeyed = sa.and_(c.type.in_(types), c.concurrency_key.is_(None), c.status.in_(RUNNABLE))
        stmt = (
            sa.select(c.id, c.type, c.concurrency_key, c.payload)
            .where(unkeyed)
            .limit(BACKFILL)
            .with_for_update(skip_locked=True)
        )
        self.keyed(list(self.conn.execute(stmt)))
        left = self.conn.execute(sa.select(c.type).where(unkeyed).distinct()).scalars()
        self.unsafe.update(left)

    # -- locks and counts ---------------------------------------------------------------

    def lock(self, candidates: Sequence[Keyed]) -> None:
        """Try to lock the keys not seen yet; count under the locks taken."""
        wanted: list[tuple[str, str]] = []
        for cand in candidates:
            for kind, key in (("c", cand.concurrency_key), ("r", cand.rate_key)):
                if key is not None and f"{kind}:{key}" not in self.locked:
                    self.locked[f"{kind}:{key}"] = False
                    wanted.append((kind, key))
        if not wanted:
            return
        got = self.dialect.try_key_locks(self.conn, wanted)
        for kind, key in got:
            self.locked[f"{kind}:{key}"] = True
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
            ordered = {cand.concurrency_key for cand in candidates if cand.ordered}
            self.find_heads([key for key in keys if key in ordered])
        rates = {key for kind, key in got if kind == "r"}
        if rates:
            windows = {
                cand.rate_key: self.window_of(cand)
                for cand in candidates
                if cand.rate_key is not None and cand.rate_key in rates
            }
            counts = self.window_counts(windows)
            self.started.update({key: counts.get(key, 0) for key in windows})

    def window_of(self, cand: Keyed) -> float:
        """The rate window of a rate-limited candidate, in seconds."""
        rate_limit = self.limits[cand.job.type].rate_limit
        assert rate_limit is not None
        return rate_limit.per

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

    def find_heads(self, keys: Sequence[str]) -> None:
        """The pending or running job enqueued first of each ordered key (`created_at`, `id`).

        A `waiting` job does not count: it takes its turn once it is pending, so
        a job waiting for slow parents does not hold back the later jobs of its
        key (as in `MemoryStorage`).
        """
        c = self.dialect.jobs.c
        for at in range(0, len(keys), HEADS_PER_QUERY):
            chunk = keys[at : at + HEADS_PER_QUERY]
            heads = [
                sa.select(c.id)
                .where(c.concurrency_key == key, c.status.in_(RUNNABLE))
                .order_by(c.created_at, c.id)
                .limit(1)
                .scalar_subquery()
                .label(f"head_{n}")
                for n, key in enumerate(chunk)
            ]
            row = self.conn.execute(sa.select(*heads)).one()
            self.heads.update(
                (key, head) for key, head in zip(chunk, row, strict=True) if head is not None
            )

    # -- admitting ----------------------------------------------------------------------

    def admit(self, candidates: Sequence[Keyed], limit: int) -> None:
        """Admit in claim order while the limits allow, counting what this claim took."""
        elsewhere = {name[2:] for name, ours in self.locked.items() if not ours}
        taken = admit(
            [cand for cand in candidates if not (cand.ordered and cand.job.type in self.unsafe)],
            self.limits,
            limit - len(self.admitted),
            running=self.running,
            first_unfinished=self.heads,
            rate_used=self.started,
            locked_elsewhere=elsewhere,
            one_per_key=self.one_per_key,
            taken_keys=self.taken_keys,
        )
        chosen = {id(cand) for cand in taken}
        for cand in taken:
            if cand.concurrency_key is not None:
                self.running[cand.concurrency_key] += 1
                self.taken_keys.add(cand.concurrency_key)
            if cand.rate_key is not None:
                self.started[cand.rate_key] += 1
        for cand in candidates:
            key = cand.concurrency_key
            if key is not None and id(cand) not in chosen and not self.may_take(cand):
                self.full.setdefault(cand.job.type, set()).add(key)
        self.admitted.extend(taken)

    def may_take(self, cand: Keyed) -> bool:
        """Whether a later page could still admit a job with `cand`'s concurrency key."""
        key = cand.concurrency_key
        assert key is not None
        if not self.locked.get(f"c:{key}") or cand.ordered:
            return False
        if self.one_per_key and key in self.taken_keys:
            return False
        concurrency = self.limits[cand.job.type].concurrency
        assert concurrency is not None
        return self.running[key] < concurrency.limit

    def write(self, params: Mapping[str, Any]) -> Rows:
        """Claim the admitted jobs, record their starts."""
        if not self.admitted:
            return []
        rows = self.dialect.claim_ids(self.conn, [cand.job.id for cand in self.admitted], params)
        starts = [(cand.rate_key, cand) for cand in self.admitted if cand.rate_key is not None]
        if starts:
            rate_starts = self.dialect.tables.rate_starts
            self.conn.execute(
                sa.insert(rate_starts).values(
                    rate_key=sa.bindparam("r_key", type_=rate_starts.c.rate_key.type),
                    job_id=sa.bindparam("r_job", type_=rate_starts.c.job_id.type),
                    started_at=db_now(),
                ),
                [{"r_key": key, "r_job": cand.job.id} for key, cand in starts],
            )
            self.forget_old({key: self.window_of(cand) for key, cand in starts})
        return rows

    def forget_old(self, windows: Mapping[str, float]) -> None:
        """Delete the starts that have left their windows (`windows`: key -> seconds)."""
        rate_starts = self.dialect.tables.rate_starts
        r = rate_starts.c
        by_window: dict[float, list[str]] = {}
        for key, per in windows.items():
            by_window.setdefault(per, []).append(key)
        for i, (per, keys) in enumerate(sorted(by_window.items())):
            cutoff = db_now_plus(seconds(f"f{i}", -per))
            stmt = sa.delete(rate_starts).where(
                r.rate_key.in_(sorted(keys)), r.started_at <= cutoff
            )
            self.conn.execute(stmt)


def key_counts(conn: Connection, stmt: sa.Select[Any]) -> dict[str, int]:
    """The `(key, count)` rows of `stmt`, as a mapping."""
    return {str(key): int(n) for key, n in conn.execute(stmt)}


def claim_limited(
    dialect: Dialect,
    conn: Connection,
    ready: Ready,
    limits: LimitMap,
    params: Mapping[str, Any],
    one_per_key: bool = False,
) -> Rows:
    """One limited claim in `conn`'s transaction: the claimed rows (all columns)."""
    claim = Claim(dialect, conn, ready, limits, one_per_key)
    types = claim.hints()
    if not types:
        return []
    size = lookahead(ready.limit)
    for _ in range(PAGES):
        rows = claim.page(types, size)
        candidates = claim.keyed(rows)
        claim.seen.extend(cand.job.id for cand in candidates)
        claim.key_the_rest(candidates)
        claim.lock(candidates)
        candidates += claim.missing_heads(candidates, types)
        claim.admit(candidates, ready.limit)
        if len(claim.admitted) >= ready.limit or len(rows) < size:
            break
    return claim.write(params)
