"""The quick tier of the reliability scenarios, and the negative controls that prove
the checks can fail. `python -m tests.reliability` prints the same as a table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Report, Store, scratch_store
from .scenarios import SCENARIOS, contention, pause

pytestmark = pytest.mark.slow

URLS = {"postgresql": "DBJOBQ_TEST_POSTGRES_URL", "mysql": "DBJOBQ_TEST_MYSQL_URL"}
CASES = [(name, backend) for name, (_, backends) in SCENARIOS.items() for backend in backends]


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = request.param
    if backend in URLS and not os.environ.get(URLS[backend]):
        pytest.skip(f"set {URLS[backend]} to run the {backend} scenarios")
    with scratch_store(backend, tmp_path) as created:
        yield created


def explain(report: Report) -> str:
    return f"{report.scenario} on {report.backend}: " + "; ".join(report.violations)


@pytest.mark.parametrize(
    ("name", "store"), CASES, ids=[f"{n}-{b}" for n, b in CASES], indirect=["store"]
)
def test_scenario_keeps_every_invariant(name: str, store: Store, tmp_path: Path) -> None:
    scenario, _ = SCENARIOS[name]
    report = scenario(store, tmp_path, "quick")
    assert report.ok, explain(report)
    assert report.lost == 0
    assert report.double_completed == 0
    assert report.unexplained_re_executions == 0


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_without_the_fence_a_frozen_worker_overwrites_the_outcome(
    store: Store, tmp_path: Path
) -> None:
    """Negative control: the same scenario, with lease tokens ignored, must fail."""
    report = pause(store, tmp_path, "quick", unfenced=True)
    assert not report.ok
    assert report.double_completed >= 1
    assert any("completed twice" in v or "illegal" in v for v in report.violations)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_without_a_busy_timeout_sqlite_writers_collide(store: Store, tmp_path: Path) -> None:
    """Negative control: with SQLite's busy timeout off, the same scenario must meet
    "database is locked" (which the library retries, and the harness still counts)."""
    report = contention(store, tmp_path, "quick", no_busy_wait=True)
    assert any("database is locked" in v for v in report.violations), report.violations
