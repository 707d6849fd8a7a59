"""Flow control on the SQL backends: limits that hold across threads and processes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dbjobq.storage import SQLAlchemyStorage
from dbjobq.storage._sql.schema import KEY_INDEXES, SCHEMA_VERSION
from dbjobq.testing import make_job

from .conftest import StorageConfig

SQL_BACKENDS = ["sqlite", "postgres", "mysql"]


def make_layout_3(storage: SQLAlchemyStorage) -> None:
    """Turn fresh tables into what a release of layout 3 made."""
    jobs = storage._jobs
    preparer = storage.engine.dialect.identifier_preparer
    with storage.engine.begin() as conn:
        for index in jobs.indexes:
            if index.name in {f"{storage.table_prefix}{name}" for name in KEY_INDEXES}:
                index.drop(conn)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(jobs)} DROP COLUMN concurrency_key"
        )
        storage._dialect.tables.rate_starts.drop(conn)
        conn.execute(sa.update(storage._version).values(version=3))


def index_names(storage: SQLAlchemyStorage) -> set[str]:
    with storage.engine.connect() as conn:
        found = sa.inspect(conn).get_indexes(storage._jobs.name, schema=storage.schema)
    return {str(index["name"]) for index in found}


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_tables_of_layout_3_gain_concurrency_keys_and_rate_starts(
    request: pytest.FixtureRequest, backend: str
) -> None:
    config: StorageConfig = request.getfixturevalue(f"{backend}_config")
    old = config.open()
    old.initialize()
    kept = make_job(type="kept")
    old.enqueue([kept])  # a row that stays through the upgrade
    make_layout_3(old)
    with old.engine.connect() as conn:
        columns = sa.inspect(conn).get_columns(old._jobs.name, schema=config.schema)
    assert "concurrency_key" not in {c["name"] for c in columns}
    old.close()

    new = config.open()
    new.initialize()
    with new.engine.connect() as conn:
        assert conn.execute(sa.select(new._version.c.version)).scalars().all() == [SCHEMA_VERSION]
        assert sa.inspect(conn).has_table(new._dialect.tables.rate_starts.name, config.schema)
    assert {f"{config.table_prefix}{name}" for name in KEY_INDEXES} <= index_names(new)
    assert new.get(kept.id).concurrency_key is None
    new.enqueue([make_job(type="keyed", concurrency_key="k")])
    claimed = new.claim(queues=["default"], worker_id="w", lease_seconds=60, types={"keyed"})
    assert [j.concurrency_key for j in claimed] == ["k"]
    again = config.open()
    again.initialize()  # nothing left to upgrade
    assert again.get(kept.id).type == "kept"
    again.close()
    new.close()
