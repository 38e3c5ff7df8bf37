"""The runtime's event loop thread: one daemon thread running an asyncio event loop, with
an async pool of its own opened on that loop, where the async executions that the runtime
resumes, wakes, dispatches or starts from sync code run as tasks. A thousand async
executions waiting on I/O need this one thread, not a thousand."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from stepstone.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from stepstone.persistence.plans import AsyncStatements
    from stepstone.persistence.store import Store

__all__ = ["LoopThread"]


class LoopThread:
    """An event loop in a thread of its own, and the tasks it runs (at most `limit`)."""

    def __init__(self, store: Store, limit: int) -> None:
        self._store = store
        self.limit = limit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._aio: AsyncStatements | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # submitted and not ended (tasks not yet made included)
        self._accepting = False
        self._stopped = False  # stopped since the last open(): no lazy start then

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def ident(self) -> int | None:
        """The loop thread's id (threading.get_ident()), while it runs."""
        thread = self._thread
        return None if thread is None else thread.ident

    def open(self) -> None:
        """The runtime launches: `start` may start the loop (again) from now on."""
        with self._lock:
            self._stopped = False

    def start(self) -> None:
        """Start the thread and open its pool on its loop (waits until it is open); a
        no-op when it runs, or once stopped until the next `open`. Raises what opening
        the pool raised (DatabaseUnreachable)."""
        with self._lock:
            if self._accepting or self._stopped:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_forever, args=(loop,), name="stepstone-loop", daemon=True
            )
            thread.start()
            try:
                aio = asyncio.run_coroutine_threadsafe(
                    self._store.open_statements_async(), loop
                ).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise
            self._loop, self._thread, self._aio = loop, thread, aio
            self._accepting = True

    def capacity(self) -> int:
        """How many more executions the loop should take on now."""
        with self._lock:
            return max(0, self.limit - self._in_flight)

    def submit(self, make: Callable[[AsyncStatements], Coroutine[Any, Any, None]]) -> bool:
        """Run `make(aio)` as a task on the loop (`aio`: the loop's statement runner);
        False if the loop takes no more work (never started, or stopping)."""
        with self._lock:
            loop, aio = self._loop, self._aio
            if not self._accepting or loop is None or aio is None:
                return False
            self._in_flight += 1
        try:
            loop.call_soon_threadsafe(self._begin, make, aio)
        except RuntimeError:  # the loop closed meanwhile
            self._done(None)
            return False
        return True

    def _begin(
        self, make: Callable[[AsyncStatements], Coroutine[Any, Any, None]], aio: AsyncStatements
    ) -> None:
        task = asyncio.get_running_loop().create_task(make(aio), name="stepstone execution")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._tasks.discard(task)
        with self._lock:
            self._in_flight -= 1

    def stop(self, timeout: float | None) -> int:
        """Take no more work; wait up to `timeout` seconds (None: as long as they run) for
        the running tasks to end, then cancel the rest (each hands its execution back) and
        wait for them; close the pool, stop the loop, join the thread. Returns how many
        tasks were cancelled. A no-op once stopped."""
        thread = self._thread
        if thread is not None and thread.ident == threading.get_ident():
            raise UsageError(
                "the runtime was shut down from its own event loop thread (inside an async "
                "workflow or step it runs), which cannot wait for itself: shut it down from "
                "outside its executions"
            )
        with self._lock:
            self._accepting = False
            self._stopped = True
            loop, thread, aio = self._loop, self._thread, self._aio
            self._loop = self._thread = self._aio = None
        if loop is None or thread is None or aio is None:
            return 0
        try:
            cancelled = asyncio.run_coroutine_threadsafe(self._close(timeout, aio), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
        return cancelled

    async def _close(self, timeout: float | None, aio: AsyncStatements) -> int:
        await asyncio.sleep(0)  # the tasks submitted before the stop are made by now
        cancelled = 0
        try:
            tasks = set(self._tasks)
            if tasks and (timeout is None or timeout > 0):
                _, pending = await asyncio.wait(tasks, timeout=timeout)
            else:
                pending = tasks
            for task in pending:
                if task.cancel():
                    cancelled += 1
            # A cancelled task awaits its hand-back; a second cancel during it (not ours)
            # leaves the execution to this executor's sweep or to its lease's end.
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await self._store.close_statements_async(aio)
        return cancelled


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
