"""Running handlers off the worker thread, so that the worker can watch them."""

from __future__ import annotations

import asyncio
import contextlib
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from dbjobq.context import CancelReason, JobContext, interrupt
from dbjobq.handlers import Handler


class Latch:
    """A one-shot `threading.Event` (set once, never cleared), much cheaper to make.

    A worker makes one per job; an `Event` (a `Condition` around a lock) costs
    several times more than the no-op handler it would wait for. `wait` is for
    the one thread that watches the attempt.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Open the latch; it stays open. Called once."""
        self._lock.release()

    def is_set(self) -> bool:
        """Whether `set` was called."""
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, or `timeout` seconds; whether it is set."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()
            return True
        return False


class Attempt:
    """One handler call, run on a `Runner` thread; the worker thread watches it."""

    def __init__(self, handler: Handler, ctx: JobContext, watcher: threading.Event) -> None:
        self.handler = handler
        self.ctx = ctx
        self.done = Latch()
        self.started_at: float | None = None  # monotonic, once the handler is called
        self.finished_at: float | None = None  # monotonic, once it returned or raised
        self._watcher = watcher
        self._state = threading.Lock()
        self._skipped = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.trace = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[Any] | None = None

    def skip(self) -> bool:
        """Make sure the handler is never called; `False` if it was called already."""
        with self._state:
            if self.started_at is not None:
                return False
            self._skipped = True
            return True

    def run(self, loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        """Call the handler here, unless skipped (`loop` makes an async one's loop)."""
        with self._state:
            if self._skipped:
                return
            self.started_at = time.monotonic()
        try:
            if self.handler.is_async:
                self._loop = loop()
                self.result = self._loop.run_until_complete(self._run_async())
            else:
                self.result = self.handler.fn(self.ctx)
        except BaseException as error:  # noqa: BLE001 - SystemExit & co. must not kill the thread
            self.error = error
            self.trace = traceback.format_exc()
        finally:
            self.finished_at = time.monotonic()
            self.done.set()
            self._watcher.set()

    async def _run_async(self) -> Any:
        self._task = asyncio.ensure_future(self.handler.fn(self.ctx))
        return await self._task

    def start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start an async handler as a task of `loop`, alongside others; on its thread."""
        with self._state:
            if self._skipped:
                return
            self.started_at = time.monotonic()
        self._loop = loop
        try:
            self._task = loop.create_task(self.handler.fn(self.ctx))
        except BaseException as error:  # noqa: BLE001 - recorded like a handler's error
            self._ended(error, traceback.format_exc())
            return
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self._ended(asyncio.CancelledError(), "")
            return
        error = task.exception()
        if error is None:
            self.result = task.result()
            self._ended(None, "")
        else:
            self._ended(error, "".join(traceback.format_exception(error)))

    def _ended(self, error: BaseException | None, trace: str) -> None:
        self.error, self.trace = error, trace
        self.finished_at = time.monotonic()
        self.done.set()
        self._watcher.set()

    def abort(self, reason: CancelReason) -> None:
        """Signal the handler to stop; an async handler's task is also cancelled."""
        interrupt(self.ctx, reason)
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)


class Runner:
    """A long-lived thread that runs handlers one at a time, in the order submitted.

    A worker submits the attempts of a whole batch at once, so the runner goes from
    one handler to the next without waiting for the worker; attempts it should not
    start any more are `skip`ped.

    Handlers run off the worker thread so that the worker can heartbeat, enforce
    timeouts and honour stop deadlines while they run. The thread is reused so that
    per-thread resources of user code (database connections, sessions) are too; it
    is only replaced when a handler overruns and has to be abandoned.
    """

    def __init__(self, name: str) -> None:
        self._inbox: queue_module.SimpleQueue[Attempt | None] = queue_module.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _serve(self) -> None:
        try:
            while (attempt := self._inbox.get()) is not None:
                attempt.run(self._event_loop)
        finally:
            if self._loop is not None:
                self._loop.close()

    def submit(self, attempt: Attempt) -> None:
        """Run `attempt` after those submitted before it."""
        self._inbox.put(attempt)

    def retire(self) -> None:
        """Exit after the current handler, if any, returns."""
        self._inbox.put(None)


class LoopRunner:
    """A thread running one event loop, on which async handlers run side by side.

    Used by workers with `concurrency` above 1. Each attempt is a task of the loop;
    the worker thread watches them all. A handler that blocks the loop (sync code
    inside `async def`) holds up the others on it.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
            # Abandoned tasks (their outcome discarded already): cancel, then let go.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        finally:
            loop.close()

    def submit(self, attempt: Attempt) -> None:
        """Start `attempt` as a task of the loop."""
        self.loop.call_soon_threadsafe(attempt.start_on, self.loop)

    def retire(self) -> None:
        """Stop the loop once the calls queued so far have run."""
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)
