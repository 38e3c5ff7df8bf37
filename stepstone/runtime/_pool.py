"""The worker pool: threads that run started, resumed and woken executions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["WorkerPool"]


class WorkerPool:
    """`workers` threads. `submit` says whether the job had to queue behind others (then it
    re-checks its execution when it starts: it may have been cancelled meanwhile)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="stepstone-worker")

    def resize(self, workers: int) -> None:
        """Run `workers` threads (before start)."""
        if self._executor is not None:
            raise RuntimeError("the worker pool runs already")  # the Runtime checks first
        self.workers = workers

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until no job runs or waits; True if none does."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def shutdown(self, *, wait: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)

    def capacity(self) -> int:
        """How many more executions the pool should take on now (it keeps a queue as long
        as itself, so that a claim never waits for a whole sweep interval to run)."""
        with self._lock:
            return max(0, 2 * self.workers - self._in_flight)

    def submit(self, job: Callable[[bool], None]) -> bool:
        """Run `job(queued)` on a worker; False if the pool is shut down."""
        executor = self._executor
        if executor is None:
            return False
        with self._lock:
            queued = self._in_flight >= self.workers
            self._in_flight += 1
        try:
            executor.submit(self._run, job, queued)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._in_flight -= 1
            return False
        return True

    def _run(self, job: Callable[[bool], None], queued: bool) -> None:
        try:
            job(queued)
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()
