"""The layout version and the upgrades of tables made by earlier releases.

Each dialect's `create_schema` runs these under its schema lock, so concurrent
first starts upgrade once.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from dbjobq.errors import ConfigurationError
from dbjobq.storage._sql.schema import (
    KEY_INDEXES,
    SCHEMA_VERSION,
    UNFINISHED_SQL,
    UNIQUE_FINISHED_INDEX,
    WAITING_INDEXES,
    WORKFLOW_COLUMNS,
    WORKFLOW_INDEXES,
)

logger = logging.getLogger("dbjobq.storage.sqlalchemy_storage")


def check_version(conn: Connection, version: sa.Table, insert_ignoring: Any) -> None:
    """Record `SCHEMA_VERSION`, or refuse tables made by a newer release.

    `insert_ignoring` is an INSERT into `version` that does nothing if the row exists.
    """
    found = conn.execute(sa.select(sa.func.max(version.c.version))).scalar()
    if found is None:
        # Another process may insert the same row first (on MySQL the lock is
        # released before this transaction commits): a clash is no error.
        conn.execute(insert_ignoring.values(version=SCHEMA_VERSION))
    elif found < SCHEMA_VERSION:
        # create_all and add_concurrency_key have just made the new layout.
        conn.execute(sa.update(version).values(version=SCHEMA_VERSION))
    elif found > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the job tables have schema version {found}, newer than this dbjobq "
            f"understands ({SCHEMA_VERSION}); upgrade dbjobq"
        )


def found_version(conn: Connection, version: sa.Table) -> int | None:
    """The layout version recorded in the tables, or `None` if none is yet."""
    found = conn.execute(sa.select(sa.func.max(version.c.version))).scalar()
    return None if found is None else int(found)


def add_columns(
    conn: Connection, jobs: sa.Table, schema: str | None, names: tuple[str, ...]
) -> None:
    """Add the nullable jobs columns `names` that are missing, without defaults.

    Adding a nullable column without a default changes no row on any of the three
    databases (a catalog change).
    """
    inspector = sa.inspect(conn)
    columns = {column["name"] for column in inspector.get_columns(jobs.name, schema=schema)}
    preparer = conn.dialect.identifier_preparer
    for name in names:
        if name in columns:
            continue
        column = jobs.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(jobs)} ADD COLUMN "
            f"{preparer.format_column(column)} {kind}"
        )


def create_indexes(conn: Connection, jobs: sa.Table, suffixes: tuple[str, ...]) -> None:
    """Create the jobs indexes named `<prefix><suffix>` that are missing."""
    names = {f"{jobs.name}_{suffix.removeprefix('jobs_')}" for suffix in suffixes}
    for index in jobs.indexes:
        if index.name in names:
            index.create(conn, checkfirst=True)


def add_concurrency_key(conn: Connection, jobs: sa.Table, schema: str | None) -> None:
    """Layout 4 on jobs tables of layouts 1-3: the `concurrency_key` column, its indexes.

    Each step checks first, so a start that stopped half way (MySQL commits each
    DDL statement) finishes the upgrade. The indexes hold only jobs with a key
    (where indexes can be partial): none yet.
    """
    add_columns(conn, jobs, schema, ("concurrency_key",))
    create_indexes(conn, jobs, KEY_INDEXES)


def add_workflows(conn: Connection, jobs: sa.Table, schema: str | None) -> None:
    """Layout 5 on jobs tables of layouts 1-4: the workflow columns and their indexes.

    `group_id`, `correlation_id`, `children` and `parents` (all `NULL` for the
    jobs already there: none is in a workflow, and their correlation ids were
    never copied, so `list_jobs(correlation_id=...)` finds the jobs enqueued
    from layout 5 on). The indexes hold only jobs with a value (where indexes
    can be partial): none yet, so they are built at once. The dependencies and
    groups tables are new: `create_all` makes them. Each step checks first.
    """
    add_columns(conn, jobs, schema, WORKFLOW_COLUMNS)
    create_indexes(conn, jobs, WORKFLOW_INDEXES)


def waiting_indexes(jobs: sa.Table) -> list[sa.Index]:
    """The jobs indexes whose predicates name the unfinished states (`WAITING_INDEXES`)."""
    names = {f"{jobs.name}_{suffix.removeprefix('jobs_')}" for suffix in WAITING_INDEXES}
    return [index for index in jobs.indexes if index.name in names]


def lacks_waiting(found: object) -> bool:
    """Whether an index or column definition `found` leaves `waiting` out.

    A definition that is not there (`None`) needs nothing: `create_all` made it.
    """
    return found is not None and "'waiting'" not in str(found)


def waiting_on_mysql(
    conn: Connection, jobs: sa.Table, schema: str | None, lock_wait: float
) -> None:
    """On MySQL/MariaDB: let `active_unique_key` hold the key of `waiting` jobs too.

    The computed column's expression is changed in place; the server rewrites
    the table once (writes wait meanwhile, for at most `lock_wait` seconds to
    start). No row has the `waiting` status before layout 5, so the unique
    index cannot clash.
    """
    query = sa.text(
        "SELECT GENERATION_EXPRESSION FROM information_schema.COLUMNS WHERE "
        "TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t AND "
        "COLUMN_NAME = 'active_unique_key'"
    )
    found = conn.execute(query, {"s": schema, "t": jobs.name}).scalar()
    if not lacks_waiting(found):
        return
    preparer = conn.dialect.identifier_preparer
    column = preparer.format_column(jobs.c.active_unique_key)
    kind = jobs.c.active_unique_key.type.compile(dialect=conn.dialect)
    sql = (
        f"ALTER TABLE {preparer.format_table(jobs)} MODIFY COLUMN {column} {kind} "
        f"GENERATED ALWAYS AS (CASE WHEN {UNFINISHED_SQL} THEN unique_key END) STORED"
    )
    logger.warning("rewriting table %s once so that waiting jobs hold their unique keys", jobs.name)
    wait = conn.execute(sa.text("SELECT @@SESSION.lock_wait_timeout")).scalar()
    conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {max(1, int(lock_wait))}")
    try:
        conn.exec_driver_sql(sql)
    except exc.DBAPIError as error:
        raise ConfigurationError(
            f"table {jobs.name} could not be upgraded for waiting jobs: {error.orig}. "
            f"Run this once, then start again: {sql}"
        ) from error
    finally:
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(wait or 31536000)}")


def add_unique_finished_index(conn: Connection, jobs: sa.Table) -> None:
    """Layout 5 on jobs tables of layouts 1-4: the `jobs_unique_finished` index.

    It serves `unique_for` lookups (the latest finished job of a key); older
    releases ignore it. Checked first, so it is created once however many
    starts run this. Where indexes can be partial it holds only finished jobs
    with a unique key, usually few.
    """
    name = f"{jobs.name}_{UNIQUE_FINISHED_INDEX.removeprefix('jobs_')}"
    for index in jobs.indexes:
        if index.name == name:
            index.create(conn, checkfirst=True)


def finished_index(jobs: sa.Table, found: object) -> sa.Index | None:
    """The `jobs_finished` index to rebuild, if its definition `found` is a full one.

    Releases before the partial index work as well with either form, so making it
    partial is no new layout version: old and new processes can share the tables
    during a rolling upgrade.
    """
    if found is None or " WHERE " in str(found).upper():
        return None
    (index,) = (i for i in jobs.indexes if i.name == f"{jobs.name}_finished")
    return index


def rebuild_index_online(
    conn: Connection,
    jobs: sa.Table,
    schema: str | None,
    lock_wait: float,
    suffix: str = "finished",
    why: str = "to hold finished jobs only",
) -> None:
    """On PostgreSQL: rebuild the jobs index `<prefix>jobs_<suffix>` as defined now.

    The full `jobs_finished` index becomes partial (finished jobs only); the
    unique-key and key-order indexes count `waiting` as unfinished (layout 5).
    The new index is built first, under another name, so that reads go on during
    the build (writes wait for it); if the table cannot be locked within
    `lock_wait` seconds, the rebuild is left for the next start.
    """
    name = f"{jobs.name}_{suffix}"
    preparer = conn.dialect.identifier_preparer
    quote = preparer.quote
    in_schema = f"{quote(schema)}." if schema else ""
    new = f"{name}_new"
    copy = jobs.to_metadata(sa.MetaData(schema=jobs.schema))
    (index,) = (i for i in copy.indexes if i.name == name)
    index.name = new  # type: ignore[assignment]
    try:
        with conn.begin_nested():
            wait = int(lock_wait * 1000)
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait}")
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {in_schema}{quote(new)}")
            index.create(conn)
            conn.exec_driver_sql(f"DROP INDEX {in_schema}{quote(name)}")
            conn.exec_driver_sql(f"ALTER INDEX {in_schema}{quote(new)} RENAME TO {quote(name)}")
    except exc.DBAPIError as error:
        logger.warning(
            "could not rebuild index %s %s (%s); the next start tries again",
            name,
            why,
            error.orig,
        )


def stale_collation(
    conn: Connection, metadata: sa.MetaData, schema: str | None, collation: str
) -> list[sa.Table]:
    """The MySQL tables, or tables with columns, whose collation is not `collation`."""
    names = [table.name for table in metadata.sorted_tables]
    where = "TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME IN :names"
    query = sa.text(
        f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE {where} "
        "AND TABLE_COLLATION <> :c "
        f"UNION SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE {where} "
        "AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME <> :c"
    ).bindparams(sa.bindparam("names", expanding=True))
    params = {"s": schema, "names": names, "c": collation}
    stale = {str(name).lower() for name in conn.execute(query, params).scalars()}
    return [t for t in metadata.sorted_tables if t.name.lower() in stale]


def upgrade_collation(
    conn: Connection,
    metadata: sa.MetaData,
    schema: str | None,
    charset: str,
    collation: str,
    lock_wait: float,
) -> None:
    """Convert MySQL tables made before dbjobq declared its collation.

    Such tables took the database's defaults: often a case-insensitive or padding
    collation (`user-A` = `user-a`, `k` = `k `), or latin1, which cannot store
    most of Unicode. `CONVERT TO` rewrites a table once, under a lock that blocks
    writes meanwhile. It is safe for the rows: every charset converts to utf8mb4
    without loss, and a binary collation tells apart more strings than any
    other, so no unique index can clash. Older dbjobq releases work on the
    converted tables, so this is no new layout version.

    Raises:
        ConfigurationError: If a table cannot be converted (no lock within `lock_wait` s,
            no ALTER privilege, an old row format), naming the statement to run.
    """
    tables = stale_collation(conn, metadata, schema, collation)
    if not tables:
        return
    preparer = conn.dialect.identifier_preparer
    wait = conn.execute(sa.text("SELECT @@SESSION.lock_wait_timeout")).scalar()
    conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(lock_wait)}")
    try:
        for table in tables:
            sql = (
                f"ALTER TABLE {preparer.format_table(table)} CONVERT TO CHARACTER SET "
                f"{charset} COLLATE {collation}"
            )
            logger.warning(
                "converting table %s to %s/%s, so that text compares byte for byte "
                "(once; writes to it wait meanwhile)",
                table.name,
                charset,
                collation,
            )
            try:
                conn.exec_driver_sql(sql)
            except exc.DBAPIError as error:
                raise ConfigurationError(
                    f"table {table.name} has a collation that compares text loosely "
                    f"(case, accents or trailing spaces ignored) and could not be "
                    f"converted: {error.orig}. Run this once, then start again: {sql}"
                ) from error
    finally:
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(wait or 31536000)}")
