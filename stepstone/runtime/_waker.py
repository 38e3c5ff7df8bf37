"""`Waker`: resumes suspended executions once what they wait for has ended.

A workflow that waits for another execution which is not done unwinds (`Suspended`) and
frees its thread; it stays RUNNING and owned by this executor. When the awaited execution
ends in this process, its waiters are woken at once (the run that ended nudges the
waker); when it runs elsewhere, one query per interval asks the database which awaited
executions have ended. Waking is a claim with a new epoch (not a recovery) and a replay in
the worker pool, where the wait now returns the outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepstone._background import Loop

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.store import Store
    from stepstone.runtime._runs import LocalRuns

__all__ = ["Waker"]


class Waker(Loop):
    """Wakes suspended runs: at once when nudged, else every `interval` seconds."""

    def __init__(
        self, runs: LocalRuns, store: Store, wake: Callable[[str], None], interval: float
    ) -> None:
        super().__init__("wake", interval, self.wake_once)
        self._runs = runs
        self._store = store
        self._wake = wake

    def wake_once(self) -> bool:
        ready = self._runs.take_ready()
        elsewhere = self._runs.awaited_elsewhere()
        if elsewhere:
            for awaited in self._store.ended_among(elsewhere):
                ready |= self._runs.take_waiters(awaited)
        for workflow_id in ready:
            self._wake(workflow_id)
        return False
