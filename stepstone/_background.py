"""A background loop: one job, run every interval on a daemon thread until stopped."""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING

from stepstone.telemetry import EventLog

if TYPE_CHECKING:
    from collections.abc import Callable

log = EventLog("stepstone")

__all__ = ["Loop"]


class Loop:
    """Calls `job()` every `interval` seconds (with ±10% jitter so that executors drift
    apart), and at once after `nudge()`. `job()` returns True to be called again at once
    (it has more to do)."""

    def __init__(self, name: str, interval: float, job: Callable[[], bool]) -> None:
        self._name = name
        self._interval = interval
        self._job = job
        self._stop = threading.Event()
        self._nudged = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stepstone-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """Run the job now rather than at the end of the interval."""
        self._nudged.set()

    def stop(self) -> None:
        self._stop.set()
        self._nudged.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        wait = self._next()
        while True:
            self._nudged.wait(wait)
            if self._stop.is_set():
                return
            self._nudged.clear()
            try:
                again = self._job()
            except Exception as exc:  # noqa: BLE001 - a failed round is logged and retried
                log.warning(
                    "background_job_failed",
                    job=self._name,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                again = False
            wait = 0.0 if again else self._next()

    def _next(self) -> float:
        return self._interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not secrets
