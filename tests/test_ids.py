"""Job ids: UUIDv7, unique, in order within a process, and unique across a fork."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from dbjobq import _clock, _ids
from dbjobq._ids import new_job_id, new_job_ids


def test_ids_are_uuid7_unique_and_in_order() -> None:
    ids = new_job_ids(3000) + [new_job_id() for _ in range(10)] + new_job_ids(2000)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[::500]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_ids_stay_in_order_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    before = new_job_ids(5)
    monkeypatch.setattr(_clock, "skew", -3600.0)
    after = new_job_ids(5000)  # more than the 12-bit counter holds in one millisecond
    assert before + after == sorted(before + after)
    assert len(set(before + after)) == 5005


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_other_ids_than_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random bits read ahead before a fork must not be used by both processes."""
    frozen = _clock.time_ns()
    monkeypatch.setattr(_clock, "time_ns", lambda: frozen)  # same millisecond in both
    new_job_id()  # the parent has random bytes read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, json.dumps(new_job_ids(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    parent = new_job_ids(100)
    # Same clock, same counter: only the random bits can tell them apart.
    assert [c[:18] for c in child] == [p[:18] for p in parent]
    assert not set(child) & set(parent)
    assert _ids._taken > 0
