"""Getting at the queue a command works on: from `--app module:queue`, `--url`, or both.

Every queue opened here is closed by `close_opened` when the command ends.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dbjobq._urls import mask_url
from dbjobq.cli._options import UsageError, option
from dbjobq.queue import JobQueue
from dbjobq.storage import SQLAlchemyStorage, Storage


class NoTables(Exception):
    """A command that only reads found no dbjobq tables: exit status 1."""


_opened: list[JobQueue] = []  # closed when the command ends


def _load_app(spec: str, source: str) -> JobQueue:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{source} must look like module:queue, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like python -m: the app is usually here
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"{source}: cannot import {module_name!r}: {error}") from error
    queue = getattr(module, attribute, None)
    if not isinstance(queue, JobQueue):
        found = "nothing" if queue is None else type(queue).__name__
        raise UsageError(f"{source}: {spec!r} is {found}, not a dbjobq.JobQueue")
    return queue


def open_queue(args: argparse.Namespace, *, existing: bool = True) -> JobQueue:
    """The queue from --app (with its handlers) or --url (or both: handlers, other URL).

    With `existing` (commands that work on jobs already there), a database without
    the tables raises `NoTables` instead of having them created: a mistyped URL
    must not quietly become a new, empty queue.
    """
    app, app_source = option(args, "app")
    url, _ = option(args, "url")
    if app:
        queue = _load_app(app, app_source)
        queue = _on_storage(queue, url) if url else queue
    elif url:
        queue = JobQueue(url)
    else:
        raise UsageError("give the database with --url (or DBJOBQ_URL), or an app with --app")
    _opened.append(queue)
    if existing and not queue.storage.schema_exists():
        raise NoTables(
            f"no dbjobq tables at {where(queue.storage)}; check the URL, or create "
            "them with dbjobq init"
        )
    return queue


def close_opened() -> None:
    """Close every queue that `open_queue` opened, newest first."""
    while _opened:
        _opened.pop().close()


def where(storage: Storage) -> str:
    """The database of a storage, for messages, with any password masked."""
    if not isinstance(storage, SQLAlchemyStorage):
        return repr(storage)
    place = f"{mask_url(storage.engine.url)} (table prefix {storage.table_prefix!r}"
    return place + (f", schema {storage.schema!r})" if storage.schema else ")")


def _on_storage(queue: JobQueue, url: str) -> JobQueue:
    """The same handlers, schedules and hooks as `queue`, on the storage at `url` (`--url`)."""
    other = JobQueue(
        url,
        default_queue=queue.default_queue,
        max_retries=queue.max_retries,
        retry_policy=queue.retry_policy,
        max_payload_bytes=queue.max_payload_bytes,
    )
    other.registry = queue.registry.copy()
    other.hooks = queue.hooks
    return other
