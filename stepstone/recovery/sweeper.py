"""Finding interrupted executions and handing them to the engine.

`recover_own` runs once at launch: it resumes the executions this executor id owned before
it restarted, releases those whose definition it lacks, and forgets the executions it
refused (their inputs could not be decoded here) so that its sweeps may claim them again. The `Sweeper` runs every sweep
interval: it resumes own executions that a database error stopped, and claims executions
whose owner's lease expired, as many as the engine has room for (its worker pool for
sync workflows, its event loop thread for async ones).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from stepstone._background import Loop
from stepstone.errors import StepstoneError

if TYPE_CHECKING:
    from stepstone.persistence.rows import ResumeRecord, WokenRecord
    from stepstone.persistence.store import Store
    from stepstone.telemetry import EventLog

__all__ = ["Resumer", "Sweeper", "recover_own"]

_RETRY_DUE = 0.05  # seconds before sweeping again for due work another executor holds
_RETRY_FULL = 0.5  # ... and for due work the worker pool had no room for


class Resumer(Protocol):
    """What recovery needs from whatever runs executions (the runtime's engine)."""

    executor_id: str
    log: EventLog

    def registered(self) -> list[tuple[str, str]]:
        """(name, version) of the workflows it can run."""
        ...

    def capacity(self) -> int:
        """How many more executions it should take on now."""
        ...

    def active_ids(self) -> set[str]:
        """The executions it runs, queues or keeps suspended now (not to be claimed)."""
        ...

    def resume(self, record: ResumeRecord, *, recovered: bool = True) -> bool:
        """Run a claimed execution; False if it cannot."""
        ...

    def wake(self, woken: WokenRecord, due: float) -> bool:
        """Run an execution woken from its wait (no recovery), whose wait was due at
        `due` by this process's time.perf_counter(); False if it cannot."""
        ...

    def take_orphans(self) -> tuple[set[str], bool]:
        """Own executions a database error stopped, and whether to look for more."""
        ...

    def give_back_orphans(self, orphans: set[str]) -> None:
        """Orphans a failed sweep could not resume: try again next time."""
        ...

    def recovered(self, reason: str, count: int) -> None:
        """Count resumed executions (telemetry)."""
        ...


def recover_own(engine: Resumer, store: Store) -> int:
    """Resume this executor's interrupted executions; return how many were resumed."""
    registered = engine.registered()
    log = engine.log
    store.forget_refusals(engine.executor_id)  # its code may run what it refused before
    for workflow_id, name, version in store.release_unregistered(engine.executor_id, registered):
        log.warning(
            "execution_released",
            workflow_id=workflow_id,
            workflow=name,
            version=version,
            reason="this executor does not register that workflow version; an executor that does will claim it",
        )
    records = store.claim_all_own(engine.executor_id, registered, engine.active_ids())
    return _resume(engine, records, "restart")


def _resume(engine: Resumer, records: list[ResumeRecord], reason: str) -> int:
    resumed = 0
    for record in records:
        if engine.resume(record):
            resumed += 1
            engine.log.info(
                "execution_recovered",
                workflow_id=record.id,
                workflow=record.workflow_name,
                reason=reason,
                epoch=record.epoch,
                recoveries=record.recoveries,
            )
    engine.recovered(reason, resumed)
    return resumed


class Sweeper(Loop):
    """Wakes due waits and claims expired executions (and own leftovers) every `interval`
    seconds, and when the next wait it knows of is due."""

    def __init__(self, engine: Resumer, store: Store, interval: float) -> None:
        super().__init__("sweep", interval, self.sweep_once)
        self._engine = engine
        self._store = store
        self._reported: set[str] = set()

    def sweep_once(self) -> bool | float:
        """One sweep: True when it took a full batch (more may be waiting), else the seconds
        until the next wait it could wake is due (False: none)."""
        self._resume_leftovers()
        limit = self._engine.capacity()
        swept_at = time.perf_counter()
        result = self._store.sweep(self._engine.executor_id, self._engine.registered(), limit)
        self._wake(result.woken, swept_at)
        _resume(self._engine, result.claimed, "expired_lease")
        for workflow_id, name, version in result.unclaimable:
            if workflow_id not in self._reported:
                self._reported.add(workflow_id)
                self._engine.log.warning(
                    "execution_unclaimable",
                    workflow_id=workflow_id,
                    workflow=name,
                    version=version,
                    reason="its owner's lease expired but this executor does not register that workflow version",
                )
        if limit > 0 and len(result.claimed) + len(result.woken) >= limit:
            return True
        if result.next_wake_in is None:
            return False
        # Something is due that this sweep could not take (no room in the pool, or another
        # executor holds it): look again soon, not in a tight loop.
        return max(result.next_wake_in, _RETRY_DUE if limit > 0 else _RETRY_FULL)

    def _wake(self, woken: list[WokenRecord], swept_at: float) -> None:
        """Resume due waits (a wake is not a recovery: not counted as one). The database
        says how long each had been due when the sweep's statement began (`swept_at` here),
        so the two clocks are never compared."""
        for one in woken:
            record = one.record
            if self._engine.wake(one, swept_at - one.overdue):
                self._engine.log.info(
                    "execution_woken",
                    workflow_id=record.id,
                    workflow=record.workflow_name,
                    epoch=record.epoch,
                    overdue=round(one.overdue, 6),
                )

    def _resume_leftovers(self) -> None:
        orphans, reconcile = self._engine.take_orphans()
        if not orphans and not reconcile:
            return
        try:
            if reconcile:
                orphans |= (
                    set(self._store.running_owned_by(self._engine.executor_id))
                    - self._engine.active_ids()
                )
            while orphans:
                workflow_id = next(iter(orphans))
                record = self._store.claim_own(
                    workflow_id, self._engine.executor_id, reason="retry"
                )
                orphans.discard(workflow_id)
                if record is not None:
                    _resume(self._engine, [record], "retry")
        except StepstoneError:
            self._engine.give_back_orphans(orphans)
            raise
