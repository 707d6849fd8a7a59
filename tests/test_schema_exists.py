"""`Storage.schema_exists()` looks for the tables without creating anything."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbjobq import JobQueue
from dbjobq.errors import StorageError
from dbjobq.storage import MemoryStorage, SQLAlchemyStorage

from .conftest import StorageConfig


def test_memory_and_the_default_have_nothing_to_create() -> None:
    assert MemoryStorage().schema_exists() is True


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    storage = SQLAlchemyStorage(f"sqlite:///{path}")
    assert storage.schema_exists() is False
    assert list(tmp_path.iterdir()) == []
    storage.initialize()
    assert storage.schema_exists() is True
    storage.close()


def test_a_sqlite_file_without_the_tables_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    before = path.read_bytes()
    storage = SQLAlchemyStorage(f"sqlite:///{path}")
    assert storage.schema_exists() is False
    storage.close()
    assert path.read_bytes() == before  # not even switched to WAL mode
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    conn.close()


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database, but long enough to have a header " * 4)
    storage = SQLAlchemyStorage(f"sqlite:///{path}")
    with pytest.raises(StorageError):
        storage.schema_exists()
    storage.close()


def test_in_memory_sqlite_looks_in_its_own_database() -> None:
    storage = SQLAlchemyStorage("sqlite://")
    assert storage.schema_exists() is False
    storage.initialize()
    assert storage.schema_exists() is True
    storage.close()


def test_another_table_prefix_is_another_schema(sqlite_config: StorageConfig) -> None:
    JobQueue(sqlite_config.url).initialize()
    other = SQLAlchemyStorage(sqlite_config.url, table_prefix="other_")
    assert other.schema_exists() is False
    other.close()


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_on_a_server_nothing_is_created(request: pytest.FixtureRequest, server: str) -> None:
    config: StorageConfig = request.getfixturevalue(f"{server}_config")
    storage = config.open()

    def tables() -> list[str]:
        with storage.engine.connect() as conn:
            names = sa.inspect(conn).get_table_names(schema=config.schema)
        return [n for n in names if n.startswith(config.table_prefix)]

    assert storage.schema_exists() is False
    assert tables() == []
    storage.initialize()
    try:
        assert storage.schema_exists() is True
    finally:
        with storage.engine.begin() as conn:
            storage._metadata.drop_all(conn)
        storage.close()


def test_a_missing_postgres_schema_is_not_created(postgres_schema: tuple[str, str]) -> None:
    url, _ = postgres_schema
    missing = f"dbjobq_missing_{uuid.uuid4().hex[:8]}"
    storage = SQLAlchemyStorage(url, schema=missing)
    assert storage.schema_exists() is False
    with storage.engine.connect() as conn:
        assert missing not in sa.inspect(conn).get_schema_names()
    storage.close()
