"""The dispatcher: one per Runtime that serves queues. One statement claims startable
executions of all its queues at once (dispatch_v1: each queue's limits are counted and
enforced in that transaction), as many as this process has room for: free workers, and
each queue's worker_concurrency minus what it runs here (free workers: room in the
worker pool, plus room on the loop thread when async workflows are registered). It runs
when told: an enqueue's notification, a run of its own ending, the earliest delayed start
or rate window it was told of; and otherwise every `interval` seconds."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from stepstone._background import Loop
from stepstone.errors import StepstoneError

if TYPE_CHECKING:
    from stepstone.persistence.store import Store
    from stepstone.runtime._engine import Engine
    from stepstone.runtime.queues import Queue

__all__ = ["Dispatcher"]


class Dispatcher:
    """Claims queued executions for one Runtime and runs them: sync ones in its worker
    pool, async ones on its event loop thread."""

    def __init__(
        self, engine: Engine, store: Store, queues: dict[str, Queue], interval: float
    ) -> None:
        self._engine = engine
        self._store = store
        self._queues = queues
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # workflow id -> queue, for what runs here
        self._loop = Loop("dispatch", interval, self._dispatch)

    @property
    def queues(self) -> frozenset[str]:
        return frozenset(self._queues)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def nudge(self) -> None:
        """Look for startable work now (an enqueue was notified)."""
        self._loop.nudge()

    def ended(self, workflow_id: str) -> None:
        """A run of this process ended: if it was one of ours, its slot here is free."""
        with self._lock:
            if self._running.pop(workflow_id, None) is None:
                return
        self._loop.nudge()

    def _capacity(self) -> tuple[dict[str, int], int]:
        free = self._engine.capacity()
        with self._lock:
            here: dict[str, int] = {}
            for name in self._running.values():
                here[name] = here.get(name, 0) + 1
        capacity = {}
        for name, queue in self._queues.items():
            cap = queue.limits.worker_concurrency
            capacity[name] = free if cap is None else max(0, min(free, cap - here.get(name, 0)))
        return capacity, free

    def _dispatch(self) -> bool | float:
        capacity, free = self._capacity()
        if free <= 0 or not any(capacity.values()):
            return False  # a run ending here nudges
        try:
            result = self._store.dispatch(
                self._engine.executor_id, capacity, free, self._engine.registered()
            )
        except StepstoneError as exc:
            self._engine.log.warning("dispatch_failed", error=str(exc))
            return False
        for queue, record in result.claimed:
            if record.epoch == 1:  # its first start (epoch 0 while it was enqueued)
                self._engine.telemetry.workflow_started(record.workflow_name)
            with self._lock:
                self._running[record.id] = queue
            if not self._engine.resume(record, recovered=False):
                # Shutting down: the execution stays RUNNING and owned here; the lease's end
                # lets another worker take it over. Or refused (its inputs cannot be decoded
                # here): handed back for another executor.
                with self._lock:
                    self._running.pop(record.id, None)
        if result.claimed and len(result.claimed) >= free:
            return False  # full: a run ending nudges
        if result.claimed:
            return True  # there may be more: look again at once
        return result.next_in if result.next_in is not None else False
