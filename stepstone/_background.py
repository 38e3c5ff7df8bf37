"""A background loop: one job, run every interval on a daemon thread until stopped."""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING

from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    from collections.abc import Callable

log = EventLog("stepstone")

__all__ = ["Loop"]


class Loop:
    """Calls `job()` every `interval` seconds (with ±10% jitter so that executors drift
    apart), at once after `nudge()`, and no later than a time set with `run_in()`. `job()`
    returns True to be called again at once (it has more to do), a number of seconds to be
    called again no later than that, or False for the interval."""

    def __init__(self, name: str, interval: float, job: Callable[[], bool | float]) -> None:
        self._name = name
        self._interval = interval
        self._job = job
        self._stop = threading.Event()
        self._signal = threading.Event()
        self._lock = threading.Lock()
        self._now = False  # nudged: run the job at the next wake
        self._due: float | None = None  # run_in(): the job runs by then
        self._thread = threading.Thread(target=self._run, name=f"stepstone-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """Run the job now rather than at the end of the interval."""
        with self._lock:
            self._now = True
        self._signal.set()

    def run_in(self, seconds: float) -> None:
        """Run the job no later than `seconds` from now."""
        target = time.monotonic() + max(0.0, seconds)
        with self._lock:
            if self._due is not None and self._due <= target:
                return
            self._due = target
        self._signal.set()

    def stop(self) -> None:
        self._stop.set()
        self._signal.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + self._next()
        while True:
            with self._lock:
                until = deadline if self._due is None else min(deadline, self._due)
            self._signal.wait(max(0.0, until - time.monotonic()))
            if self._stop.is_set():
                return
            self._signal.clear()
            now = time.monotonic()
            with self._lock:
                due = self._due is not None and self._due <= now
                if not (self._now or due or now >= deadline):
                    continue  # woken to recompute the wait (run_in)
                self._now = False
                if due:
                    self._due = None
            deadline = time.monotonic() + self._after(self._round())

    def _round(self) -> bool | float:
        try:
            return self._job()
        except Exception as exc:  # noqa: BLE001 - a failed round is logged and retried
            log.warning(
                "background_job_failed",
                job=self._name,
                error=str(exc),
                error_type=type(exc).__name__,
            )
            return False

    def _after(self, answer: bool | float) -> float:
        if answer is True:
            return 0.0
        if answer is False:
            return self._next()
        return min(self._next(), max(0.0, float(answer)))

    def _next(self) -> float:
        return self._interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not secrets
