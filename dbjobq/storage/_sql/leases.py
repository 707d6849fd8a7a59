"""Batches of leases: which to write, and one answer per lease given."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def answers(ids: Sequence[str], firsts: Sequence[int], done: Collection[str]) -> list[bool]:
    """One flag per lease: written, for the first occurrences among `firsts` only."""
    flags = [False] * len(ids)
    for i in firsts:
        flags[i] = ids[i] in done
    return flags


def first_leases(leases: Sequence[tuple[str, str]]) -> Sequence[int] | None:
    """Positions (ascending) of the first occurrence of each `(job_id, token)`.

    Later occurrences are answered `False`. `None` if a job comes with two different
    tokens: at most one of them holds the lease, and which one only the database
    knows, so such a batch is taken one lease at a time, in order.
    """
    if len({job_id for job_id, _ in leases}) == len(leases):
        return range(len(leases))  # the usual batch: no job twice
    tokens: dict[str, str] = {}
    firsts: list[int] = []
    for i, (job_id, token) in enumerate(leases):
        seen = tokens.get(job_id)
        if seen is None:
            tokens[job_id] = token
            firsts.append(i)
        elif seen != token:
            return None
    return firsts
