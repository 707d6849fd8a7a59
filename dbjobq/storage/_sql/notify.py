"""Wake-ups from other processes: PostgreSQL LISTEN/NOTIFY, SQLite's data_version.

A `Watcher` is one daemon thread per storage object. It runs while something is
subscribed, and calls the subscribers of a kind of change when it may have happened
in another process: `ENQUEUED` (idle workers) or `FINISHED` (`JobQueue.wait`). A
missed or spurious wake-up costs nothing but a poll: workers and waiters keep
polling as the safety net.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

logger = logging.getLogger("dbjobq.storage")

_RETRY_FIRST = 0.5  # seconds before reconnecting after the connection failed
_RETRY_MAX = 30.0
_REPEAT_EVERY = 60.0  # seconds between repeated warnings while the trouble lasts
_exiting = threading.Event()  # the interpreter is shutting down: go quiet and stop
atexit.register(_exiting.set)

ENQUEUED = "enqueued"
"""Jobs may have been enqueued (or become due): what idle workers subscribe to."""
FINISHED = "finished"
"""Jobs may have finished: what waiters subscribe to."""
KINDS = frozenset({ENQUEUED, FINISHED})


class Watcher:
    """Calls subscribers when `wait_for_change` reports a change of their kind.

    Subclasses open a connection (`connect`), block until something may have
    changed or a timeout passes (`wait_for_change`), and close it (`disconnect`).
    """

    name = "dbjobq-watcher"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = threading.Event()  # set by close(): cuts short a wait between reads
        self._troubled_since: float | None = None  # when watching last stopped working
        self._warned_at = -_REPEAT_EVERY

    def subscribe(self, callback: Callable[[], None], kind: str = ENQUEUED) -> Callable[[], None]:
        """Call `callback` on every change of `kind` until the returned function is called."""
        with self._lock:
            key = self._next
            self._next += 1
            self._subscribers[key] = (kind, callback)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def close(self, wait: float = 0.0) -> None:
        """Stop the thread (within about a second) and refuse new subscribers.

        Args:
            wait: Seconds to wait for the thread to be done with its connection.
        """
        with self._lock:
            self._closed = True
            self._subscribers.clear()
            thread = self._thread
        self._stop.set()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _active(self) -> bool:
        with self._lock:
            if self._subscribers and not self._closed and not _exiting.is_set():
                return True
            self._thread = None  # a later subscriber starts a new thread
            return False

    def wants(self, kind: str) -> bool:
        """Whether anything is subscribed to changes of `kind`."""
        with self._lock:
            return any(k == kind for k, _ in self._subscribers.values())

    def _fire(self, kinds: Collection[str] = KINDS) -> None:
        with self._lock:
            callbacks = [cb for kind, cb in self._subscribers.values() if kind in kinds]
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a subscriber's bug must not end the watcher
                logger.exception("wake-up callback failed")

    def _trouble(self, message: str, *args: object) -> None:
        """Warn once, then at most every `_REPEAT_EVERY` seconds until it works again."""
        now = time.monotonic()
        if _exiting.is_set():
            return  # logging from a daemon thread at shutdown can crash the interpreter
        if self._troubled_since is None or now - self._warned_at >= _REPEAT_EVERY:
            logger.warning(message, *args)
            self._warned_at = now
        else:
            logger.debug(message, *args)
        if self._troubled_since is None:
            self._troubled_since = now

    def _serve(self) -> None:
        delay = _RETRY_FIRST
        while self._active():
            try:
                self.connect()
            except Exception as error:  # noqa: BLE001 - any failure: retry later
                self._trouble(
                    "cannot watch for new jobs (%s); relying on polling, retrying in %.1fs",
                    error,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if self._troubled_since is not None:
                logger.info(
                    "watching for new jobs again after %.1fs",
                    time.monotonic() - self._troubled_since,
                )
                self._troubled_since = None
            delay = _RETRY_FIRST
            self._fire()  # jobs may have come or finished while we were not watching
            try:
                while self._active():
                    kinds = self.wait_for_change()
                    if kinds:
                        self._fire(kinds)
            except Exception as error:  # noqa: BLE001 - a dropped connection: reconnect
                self._trouble("watching for new jobs failed (%s); reconnecting", error)
            finally:
                self.disconnect()

    def connect(self) -> None:
        raise NotImplementedError

    def wait_for_change(self) -> Collection[str]:
        """Block up to about a second; the kinds of change that may have happened."""
        raise NotImplementedError

    def disconnect(self) -> None:
        raise NotImplementedError


class PostgresListener(Watcher):
    """LISTENs on the channels that the jobs table's triggers NOTIFY.

    `channel` hears of inserts, `finished_channel` of jobs that finished.
    """

    name = "dbjobq-listen"

    def __init__(self, connect: Callable[[], Any], channel: str, finished_channel: str) -> None:
        super().__init__()
        self._open = connect
        self.channel = channel
        self.finished_channel = finished_channel
        self._kinds = {channel: ENQUEUED, finished_channel: FINISHED}
        self._conn: Any = None

    def connect(self) -> None:
        conn = self._open()
        try:
            conn.autocommit = True
            for channel in self._kinds:
                conn.execute(f'LISTEN "{channel}"')
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def wait_for_change(self) -> Collection[str]:
        # A transaction's notifications on one channel arrive as one: a bulk enqueue,
        # or a batch of completions, is a single wake-up.
        kinds = {self._kinds[n.channel] for n in self._conn.notifies(timeout=1.0, stop_after=1)}
        # More may be queued behind the first: take them now, without waiting.
        kinds.update(self._kinds[n.channel] for n in self._conn.notifies(timeout=0))
        return kinds

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.close()


class SQLiteWatcher(Watcher):
    """Reads `PRAGMA data_version`, which changes when another connection commits.

    It is a read of the database header, not of any table: cheap enough to do
    every couple of milliseconds. On a change, a look at the pending jobs tells a
    new job apart from other writes (claims, heartbeats); waiters are told of every
    change and read their own job.
    """

    name = "dbjobq-sqlite-watch"

    def __init__(self, connect: Callable[[], Any], due_sql: str, interval: float) -> None:
        super().__init__()
        self._open = connect
        self._due_sql = due_sql
        self.interval = interval
        self._conn: Any = None
        self._version: Any = None

    def connect(self) -> None:
        self._conn = self._open()
        self._version = self._conn.execute("PRAGMA data_version").fetchone()[0]

    def wait_for_change(self) -> Collection[str]:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if self._stop.wait(self.interval):
                return ()
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._version = version
                kinds = {FINISHED} if self.wants(FINISHED) else set()
                if self.wants(ENQUEUED) and self._conn.execute(self._due_sql).fetchone():
                    kinds.add(ENQUEUED)
                if kinds:
                    return kinds
        return ()

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
