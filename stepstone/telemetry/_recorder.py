"""Metric measurements taken off the hot path.

Recording a histogram value with the SDK costs several microseconds of CPU under the GIL.
Measurements are appended to a queue instead (an append is ~0.1 µs) and a background thread
records them every 50 ms — mostly while the workflow threads wait for the database, when the
GIL is free anyway.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Recorder"]

_INTERVAL = 0.05


class Recorder:
    """Runs queued measurement calls on a daemon thread (or at once, when `deferred` is off)."""

    def __init__(self, *, deferred: bool) -> None:
        self._wanted = deferred
        self.deferred = False
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.open()

    def open(self) -> None:
        """Start the thread (again, after `close()`), if measurements are deferred."""
        if not self._wanted or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop = threading.Event()
        self.deferred = True
        self._thread = threading.Thread(target=self._run, name="stepstone-metrics", daemon=True)
        self._thread.start()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.deferred:
            self._queue.append((fn, args))
        else:
            fn(*args)

    def flush(self) -> None:
        """Record everything queued so far, now, in this thread."""
        with self._drain_lock:
            queue = self._queue
            done = 0
            while queue:
                fn, args = queue.popleft()
                fn(*args)
                done += 1
                if done % 16 == 0:
                    time.sleep(0)  # let a workflow thread back from the database take the GIL

    def close(self) -> None:
        """Stop the thread after recording what is queued; later calls record at once."""
        self.deferred = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(_INTERVAL):
            self.flush()
