"""Every bundled backend passes the reusable conformance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbjobq.storage import MemoryStorage, SQLAlchemyStorage, Storage
from dbjobq.testing import StorageContract


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self, memory_storage: MemoryStorage) -> Storage:
        return memory_storage


def _second(storage: SQLAlchemyStorage) -> Iterator[Storage]:
    """Another storage object, with its own connection pool, on the same tables."""
    other = SQLAlchemyStorage(
        storage.engine.url, table_prefix=storage.table_prefix, schema=storage.schema
    )
    yield other
    other.close()


class TestSQLiteFileStorage(StorageContract):
    @pytest.fixture
    def storage(self, sqlite_storage: SQLAlchemyStorage) -> Storage:
        return sqlite_storage

    @pytest.fixture
    def other_storage(self, sqlite_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(sqlite_storage)


class TestSQLiteInMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        storage = SQLAlchemyStorage("sqlite://")
        storage.initialize()
        yield storage
        storage.close()


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def storage(self, postgres_storage: SQLAlchemyStorage) -> Storage:
        return postgres_storage

    @pytest.fixture
    def other_storage(self, postgres_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(postgres_storage)


class TestMySQLStorage(StorageContract):
    @pytest.fixture
    def storage(self, mysql_storage: SQLAlchemyStorage) -> Storage:
        return mysql_storage

    @pytest.fixture
    def other_storage(self, mysql_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(mysql_storage)
