"""Which candidates a limited claim takes: the rules of `Storage.claim_limited`, once.

Public for backend authors: a backend of your own can gather the counts its own
way and leave the decision to `admit`, as `MemoryStorage` does.

A backend finds the due jobs in claim order, works out their keys (`keyed`),
learns how full each key is (running jobs per concurrency key, the oldest
unfinished job of each ordered key, starts per rate key in its window), and
`admit` picks the jobs to claim. Only the gathering differs between backends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from dbjobq.flow import LimitMap

__all__ = ["Candidate", "Keyed", "admit", "keyed"]


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A due job a limited claim may take."""

    id: str
    type: str
    concurrency_key: str | None
    """As stored (`None`: not worked out yet)."""
    payload: Any
    """The payload, for key functions (a `dict`, or anything a corrupt row holds)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Keyed:
    """A candidate with the keys its limits count it under."""

    job: Candidate
    concurrency_key: str | None
    """The key its concurrency limit counts (`None`: no such limit)."""
    rate_key: str | None
    """The key its rate limit counts (`None`: no such limit)."""
    new_key: bool
    """Whether `concurrency_key` was worked out now: the claim stores it."""
    ordered: bool
    """Whether its concurrency limit keeps strict order."""

    @property
    def limited(self) -> bool:
        """Whether any limit applies."""
        return self.concurrency_key is not None or self.rate_key is not None


def keyed(candidates: Iterable[Candidate], limits: LimitMap) -> list[Keyed]:
    """The candidates with their keys, in the same order."""
    out = []
    for job in candidates:
        limit = limits.get(job.type)
        key = rate = None
        ordered = False
        payload = job.payload if isinstance(job.payload, dict) else {}
        if limit is not None and limit.concurrency is not None:
            key = limit.concurrency_key(job.type, job.concurrency_key, payload)
            ordered = limit.concurrency.ordered
        if limit is not None and limit.rate_limit is not None:
            rate = limit.rate_key(job.type, payload)
        new = key is not None and job.concurrency_key is None
        out.append(Keyed(job, key, rate, new, ordered))
    return out


def admit(
    candidates: Sequence[Keyed],
    limits: LimitMap,
    limit: int,
    *,
    running: Mapping[str, int],
    first_unfinished: Mapping[str, str],
    rate_used: Mapping[str, int],
    locked_elsewhere: Collection[str] = (),
    one_per_key: bool = False,
    taken_keys: Collection[str] = (),
) -> list[Keyed]:
    """The candidates to claim, in order: at most `limit`, every limit kept.

    Args:
        candidates: Due jobs in claim order, keyed.
        limits: The limits by job type.
        limit: The most jobs to claim.
        running: Running jobs (unexpired leases) per concurrency key.
        first_unfinished: For each ordered key, the id of its unfinished job
            enqueued first.
        rate_used: Starts within the window per rate key.
        locked_elsewhere: Keys (of either kind) another claim is deciding on
            right now: their jobs wait for a later claim.
        one_per_key: At most one job per concurrency key.
        taken_keys: Concurrency keys the same claim took already (with
            `one_per_key`, across the pages a backend reads).
    """
    taken: list[Keyed] = []
    busy = dict(running)
    used = dict(rate_used)
    once = set(taken_keys)
    for job in candidates:
        if len(taken) >= limit:
            break
        key, rate = job.concurrency_key, job.rate_key
        if key is not None:
            concurrency = limits[job.job.type].concurrency
            assert concurrency is not None
            if key in locked_elsewhere or busy.get(key, 0) >= concurrency.limit:
                continue
            if one_per_key and key in once:
                continue
            if job.ordered and first_unfinished.get(key, job.job.id) != job.job.id:
                continue
        if rate is not None:
            rate_limit = limits[job.job.type].rate_limit
            assert rate_limit is not None
            if rate in locked_elsewhere or used.get(rate, 0) >= rate_limit.count:
                continue
        if key is not None:
            busy[key] = busy.get(key, 0) + 1
            once.add(key)
        if rate is not None:
            used[rate] = used.get(rate, 0) + 1
        taken.append(job)
    return taken
