"""One `Dialect` subclass per database family; `connect` picks and makes one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import URL, Engine

from dbjobq.errors import ConfigurationError
from dbjobq.storage._sql.dialects.base import Dialect
from dbjobq.storage._sql.dialects.mysql import MySQLDialect
from dbjobq.storage._sql.dialects.postgresql import PostgreSQLDialect
from dbjobq.storage._sql.dialects.sqlite import SQLiteDialect
from dbjobq.storage._sql.engine import EngineSettings, create_engine, parse_url

__all__ = ["DIALECTS", "Dialect", "connect"]

DIALECTS: Mapping[str, type[Dialect]] = {
    backend: cls
    for cls in (SQLiteDialect, PostgreSQLDialect, MySQLDialect)
    for backend in cls.backends
}
"""The dialect class of each SQLAlchemy backend name."""


def connect(
    url: str | URL | Engine,
    *,
    schema: str | None,
    table_prefix: str,
    busy_timeout: float,
    engine_options: Mapping[str, Any],
) -> Dialect:
    """The dialect for `url`, over a new engine (or the `Engine` given).

    Raises:
        ConfigurationError: If the database is not one of `DIALECTS`, its driver
            is missing, or an option does not fit.
    """
    if isinstance(url, Engine):
        engine = url
    else:
        parsed = parse_url(url, DIALECTS)
        cls = DIALECTS[parsed.get_backend_name()]
        options = dict(engine_options)
        connect_args = dict(options.pop("connect_args", {}))
        settings = EngineSettings(parsed, busy_timeout, options, connect_args)
        cls.configure(settings)
        engine = create_engine(settings, cls.extra, cls.module)
    found = DIALECTS.get(engine.dialect.name)
    if found is None:
        raise ConfigurationError(
            "SQLAlchemyStorage supports SQLite, PostgreSQL and MySQL/MariaDB, "
            f"not {engine.dialect.name!r}"
        )
    return found(engine, schema=schema, table_prefix=table_prefix)
