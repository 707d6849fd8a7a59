"""Engines: URL parsing, drivers, options, transient errors and retries."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import URL, Engine, make_url

from dbjobq._urls import mask_url
from dbjobq.errors import ConfigurationError, StorageError

logger = logging.getLogger("dbjobq.storage.sqlalchemy_storage")

T = TypeVar("T")

TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}
RETRIES = 5  # transient errors retried inside one call before StorageError
MAX_BUSY_TIMEOUT = 2_147_483.0  # seconds: SQLite takes the wait in int milliseconds


@dataclass
class EngineSettings:
    """What `create_engine` gets; each dialect's `configure` adjusts it."""

    url: URL
    busy_timeout: float
    options: dict[str, Any] = field(default_factory=dict)
    connect_args: dict[str, Any] = field(default_factory=dict)


def parse_url(url: str | URL, backends: Collection[str]) -> URL:
    """Parse a database URL and check that it names one of `backends`.

    Raises:
        ConfigurationError: If it does not parse, holds an unencoded `@` in the
            password, or names another database.
    """
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError):
        # Not chained: the parser's message may quote the password.
        raise ConfigurationError(
            f"not a valid database URL: {mask_url(url)!r} (percent-encode any @, : "
            "or / in the user name or password, e.g. @ as %40)"
        ) from None
    if parsed.host is not None and "@" in parsed.host:
        # SQLAlchemy ends the password at its first "@" and takes the rest for the
        # host, which would then show in the driver's connection errors.
        raise ConfigurationError(
            f"the password in {mask_url(url)!r} holds an unencoded @: percent-encode it as %40"
        )
    if parsed.get_backend_name() not in backends:
        raise ConfigurationError(
            f"unsupported database {parsed.get_backend_name()!r} in {mask_url(parsed)!r}; "
            "use sqlite:///path.db, postgresql://user@host/db or mysql://user@host/db"
        )
    return parsed


def create_engine(settings: EngineSettings, extra: str, module: str) -> Engine:
    """`sqlalchemy.create_engine`, with a missing driver named and its fix given.

    Raises:
        ConfigurationError: If the driver is unknown or not installed, or an option
            is wrong.
    """
    url = settings.url
    try:
        return sa.create_engine(url, connect_args=settings.connect_args, **settings.options)
    except exc.NoSuchModuleError as error:
        raise ConfigurationError(f"no SQLAlchemy driver {url.drivername!r}: {error}") from error
    except ImportError as error:
        hint = (
            f'Install the "{extra}" extra (pip install -e ".[{extra}]" in a dbjobq checkout)'
            if extra
            else f"install {module}"
        )
        raise ConfigurationError(
            f"the database driver for {url.drivername!r} is not installed "
            f"({error.name or module} not found). {hint}"
        ) from error
    except (exc.ArgumentError, TypeError) as error:
        raise ConfigurationError(f"bad engine options: {error}") from error


def check_busy_timeout(value: Any) -> float:
    """`busy_timeout` as a float of seconds, or `ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"busy_timeout must be a number of seconds, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_BUSY_TIMEOUT:  # also refuses NaN
        raise ConfigurationError(
            f"busy_timeout must be between 0 and {MAX_BUSY_TIMEOUT:g} seconds, got {value!r}"
        )
    return float(value)


def check_engine_options(value: Any, given_an_engine: bool) -> Mapping[str, Any]:
    """`engine_options` checked: a mapping of keyword arguments, or `ConfigurationError`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigurationError(
            "engine_options must be a mapping of create_engine keyword arguments, got "
            f"{type(value).__name__}"
        )
    if given_an_engine and value:
        raise ConfigurationError(
            "engine_options cannot apply to an Engine that is already made; pass them "
            "to sqlalchemy.create_engine, or give SQLAlchemyStorage the URL"
        )
    connect_args = value.get("connect_args", {})
    if not isinstance(connect_args, Mapping):
        raise ConfigurationError(
            f"engine_options['connect_args'] must be a mapping, got {type(connect_args).__name__}"
        )
    return value


_engine_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_engine_locks_guard = threading.Lock()


def engine_lock(engine: Engine) -> threading.RLock:
    """One lock per engine, shared by every storage object that uses the engine."""
    with _engine_locks_guard:
        return _engine_locks.setdefault(engine, threading.RLock())


def is_transient(error: exc.DBAPIError) -> bool:
    """Whether trying again may work: a lost connection, deadlock, busy database."""
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate and (sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")):
        return True
    text = str(orig).lower()
    if "database is locked" in text or "database is busy" in text:
        return True
    # psycopg reports a refused or dropped connection as OperationalError, no sqlstate.
    return isinstance(error, exc.OperationalError) and not isinstance(
        orig, sqlite3.OperationalError
    )


def retrying(what: str, once: Callable[[], T]) -> T:
    """Call `once`, retrying transient database errors; `StorageError` otherwise."""
    for attempt in range(RETRIES + 1):
        try:
            return once()
        except exc.DBAPIError as error:
            if attempt < RETRIES and is_transient(error):
                delay = min(1.0, 0.02 * 2**attempt) * (0.5 + random.random())
                logger.debug("%s: transient error, retrying in %.2fs: %s", what, delay, error)
                time.sleep(delay)
                continue
            raise StorageError(f"{what} failed: {error.orig}") from error
        except exc.SQLAlchemyError as error:
            raise StorageError(f"{what} failed: {error}") from error
    raise AssertionError("unreachable")  # pragma: no cover


def driver_error(
    engine: Engine, sql: str, params: Any, error: Exception, *, invalidated: bool = False
) -> exc.StatementError:
    """A driver's error on `sql`, wrapped as SQLAlchemy wraps the statements it runs.

    So `retrying` classifies it as usual, and the engine's `hide_parameters` holds.
    """
    return exc.DBAPIError.instance(
        sql,
        params,
        error,
        engine.dialect.loaded_dbapi.Error,
        hide_parameters=engine.hide_parameters,
        connection_invalidated=invalidated,
    )
