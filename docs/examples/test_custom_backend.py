# docs-test: custom
"""Run the conformance suite against JsonFileStorage (from custom_backend.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from custom_backend import JsonFileStorage

from dbjobq.storage import Storage
from dbjobq.testing import StorageContract


class TestJsonFileStorage(StorageContract):
    """Every rule of the Storage contract, checked against JsonFileStorage."""

    concurrency_threads = 8  # the default; lower it if your backend is slow

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        """Yield a fresh, initialised, empty backend for each test."""
        backend = JsonFileStorage(tmp_path / "jobs.json")
        backend.initialize()
        yield backend
        backend.close()
