"""Every bundled backend passes the reusable conformance suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbjobq.job import JobStatus
from dbjobq.payload import dumps
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage, Storage
from dbjobq.storage._sql.schema import db_now
from dbjobq.testing import StorageContract

from .conftest import StorageConfig, _opened


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self, memory_storage: MemoryStorage) -> Storage:
        return memory_storage

    def complete_unsettled(self, storage: Storage, job_id: str, result: Any) -> None:
        assert isinstance(storage, MemoryStorage)
        job = storage.get(job_id)
        storage._write(job, status=JobStatus.COMPLETED, result=result, finished_at=job.created_at)

    def fail_unsettled(self, storage: Storage, job_id: str) -> None:
        assert isinstance(storage, MemoryStorage)
        job = storage.get(job_id)
        storage._write(job, status=JobStatus.FAILED, last_error="x", finished_at=job.created_at)


class SQLUnsettled:
    """The safety-net hooks on SQL: an outcome written by a raw UPDATE, children unsettled.

    What a crash between PostgreSQL's autocommitted completion and the settling
    transaction after it leaves: the parent finished, still flagged `children = 1`.
    """

    def _finish_raw(self, storage: Storage, job_id: str, **values: Any) -> None:
        assert isinstance(storage, SQLAlchemyStorage)
        jobs = storage._jobs
        stmt = sa.update(jobs).where(jobs.c.id == job_id)
        with storage.engine.begin() as conn:
            conn.execute(stmt.values(finished_at=db_now(), updated_at=db_now(), **values))

    def complete_unsettled(self, storage: Storage, job_id: str, result: Any) -> None:
        self._finish_raw(storage, job_id, status="completed", result=dumps(result))

    def fail_unsettled(self, storage: Storage, job_id: str) -> None:
        self._finish_raw(storage, job_id, status="failed", last_error="x")


def _second(storage: SQLAlchemyStorage) -> Iterator[Storage]:
    """Another storage object, with its own connection pool, on the same tables."""
    other = SQLAlchemyStorage(
        storage.engine.url, table_prefix=storage.table_prefix, schema=storage.schema
    )
    yield other
    other.close()


class TestSQLiteFileStorage(SQLUnsettled, StorageContract):
    @pytest.fixture
    def storage(self, sqlite_storage: SQLAlchemyStorage) -> Storage:
        return sqlite_storage

    @pytest.fixture
    def other_storage(self, sqlite_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(sqlite_storage)


class TestSQLiteInMemoryStorage(SQLUnsettled, StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        storage = SQLAlchemyStorage("sqlite://")
        storage.initialize()
        yield storage
        storage.close()


class TestPostgresStorage(SQLUnsettled, StorageContract):
    @pytest.fixture
    def storage(self, postgres_storage: SQLAlchemyStorage) -> Storage:
        return postgres_storage

    @pytest.fixture
    def other_storage(self, postgres_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(postgres_storage)


class TestMySQLStorage(SQLUnsettled, StorageContract):
    @pytest.fixture
    def storage(self, mysql_storage: SQLAlchemyStorage) -> Storage:
        return mysql_storage

    @pytest.fixture
    def other_storage(self, mysql_storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(mysql_storage)


@pytest.fixture(scope="module")
def latin1_database() -> Iterator[tuple[str, str]]:
    """A MySQL/MariaDB database whose defaults are latin1 and a loose collation."""
    url = os.environ.get("DBJOBQ_TEST_MYSQL_URL")
    if not url:
        pytest.skip("set DBJOBQ_TEST_MYSQL_URL to run these tests")
    name = f"dbjobq_latin1_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = SQLAlchemyStorage(url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET latin1")
    yield url, name
    engine.dispose()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name}")
    engine.dispose()


class TestMySQLLatin1DatabaseStorage(SQLUnsettled, StorageContract):
    """The whole contract in a database made `latin1` (collation latin1_swedish_ci).

    The tables declare utf8mb4 and a binary no-pad collation themselves, so nothing
    of the database's defaults shows (the other MySQL runs use a utf8mb4_general_ci
    database: case-insensitive and padding).
    """

    @pytest.fixture
    def storage(self, latin1_database: tuple[str, str]) -> Iterator[Storage]:
        url, database = latin1_database
        yield from _opened(StorageConfig(url, f"t{uuid.uuid4().hex[:10]}_", database))

    @pytest.fixture
    def other_storage(self, storage: SQLAlchemyStorage) -> Iterator[Storage]:
        yield from _second(storage)
