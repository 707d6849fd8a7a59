"""Backends for the test suite: memory, SQLite files, and PostgreSQL when configured.

PostgreSQL tests read the server URL from DBJOBQ_TEST_POSTGRES_URL, MySQL/MariaDB tests
from DBJOBQ_TEST_MYSQL_URL. Each test session works in a schema (a database on MySQL)
of its own, dropped at the end, and each test in tables of its own, so concurrent runs
against one server do not collide. When a variable is set, a server that cannot be
reached fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbjobq import JobQueue, RetryPolicy
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage, Storage

BACKENDS = ["memory", "sqlite", "postgres", "mysql"]
POSTGRES_URL = os.environ.get("DBJOBQ_TEST_POSTGRES_URL")
MYSQL_URL = os.environ.get("DBJOBQ_TEST_MYSQL_URL")


@dataclass(frozen=True)
class StorageConfig:
    """How to open one test database again, e.g. from another process."""

    url: str
    table_prefix: str = "dbjobq_"
    schema: str | None = None

    def open(self) -> SQLAlchemyStorage:
        return SQLAlchemyStorage(self.url, table_prefix=self.table_prefix, schema=self.schema)


def _scratch_schema(
    url: str | None, variable: str, create: str, drop: str
) -> Iterator[tuple[str, str]]:
    """A schema (a database, on MySQL) of this test session's own, dropped at the end."""
    if not url:
        pytest.skip(f"set {variable} to run these tests")
    name = f"dbjobq_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = SQLAlchemyStorage(url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(create.format(name))
    yield url, name
    engine.dispose()  # its pooled connection may have been killed by a test
    with engine.begin() as conn:
        conn.exec_driver_sql(drop.format(name))
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[tuple[str, str]]:
    yield from _scratch_schema(
        POSTGRES_URL, "DBJOBQ_TEST_POSTGRES_URL", "CREATE SCHEMA {}", "DROP SCHEMA {} CASCADE"
    )


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[tuple[str, str]]:
    yield from _scratch_schema(
        MYSQL_URL,
        "DBJOBQ_TEST_MYSQL_URL",
        "CREATE DATABASE {} CHARACTER SET utf8mb4",
        "DROP DATABASE {}",
    )


@pytest.fixture
def sqlite_config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(f"sqlite:///{tmp_path / 'jobs.db'}")


@pytest.fixture
def postgres_config(postgres_schema: tuple[str, str]) -> StorageConfig:
    url, schema = postgres_schema
    return StorageConfig(url, table_prefix=f"t{uuid.uuid4().hex[:10]}_", schema=schema)


@pytest.fixture
def mysql_config(mysql_database: tuple[str, str]) -> StorageConfig:
    url, database = mysql_database
    return StorageConfig(url, table_prefix=f"t{uuid.uuid4().hex[:10]}_", schema=database)


def _opened(config: StorageConfig) -> Iterator[SQLAlchemyStorage]:
    storage = config.open()
    storage.initialize()
    yield storage
    if config.schema is not None:
        storage.engine.dispose()  # a test may have killed its pooled connections
        with storage.engine.begin() as conn:
            storage._metadata.drop_all(conn)
    storage.close()


@pytest.fixture
def memory_storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def sqlite_storage(sqlite_config: StorageConfig) -> Iterator[SQLAlchemyStorage]:
    yield from _opened(sqlite_config)


@pytest.fixture
def postgres_storage(postgres_config: StorageConfig) -> Iterator[SQLAlchemyStorage]:
    yield from _opened(postgres_config)


@pytest.fixture
def mysql_storage(mysql_config: StorageConfig) -> Iterator[SQLAlchemyStorage]:
    yield from _opened(mysql_config)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(request: pytest.FixtureRequest, backend: str) -> Storage:
    # Looked up lazily, so a missing PostgreSQL skips only its own runs.
    return request.getfixturevalue(f"{backend}_storage")  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_config(request: pytest.FixtureRequest) -> Iterator[StorageConfig]:
    """A database shared by several processes: a SQLite file or PostgreSQL tables."""
    config: StorageConfig = request.getfixturevalue(f"{request.param}_config")
    storage = config.open()
    storage.initialize()
    storage.close()
    yield config
    if config.schema is not None:
        storage = config.open()
        with storage.engine.begin() as conn:
            storage._metadata.drop_all(conn)
        storage.close()


FAST_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.05)


@pytest.fixture
def queue(storage: Storage) -> JobQueue:
    return JobQueue(storage, retry_policy=FAST_RETRIES)
