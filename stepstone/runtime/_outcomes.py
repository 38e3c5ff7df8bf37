"""Outcomes of executions as the database records them: reading one, and waiting for one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from stepstone.errors import (
    PersistenceError,
    ResultTimeout,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimedOut,
)
from stepstone.persistence.recorded_errors import error_summary, rebuild_error

if TYPE_CHECKING:
    from stepstone.persistence.store import Store

__all__ = ["TERMINAL", "Outcomes"]

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_MAX_POLL_OUTAGE = 60.0  # seconds a waiting caller tolerates an unreachable database


class Outcomes:
    """Reads and awaits outcomes in the database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def ended(self, workflow_id: str) -> tuple[bool, Any]:
        """(True, its outcome as a thunk) if the execution ended, else (False, None);
        WorkflowNotFound if there is none."""
        found = self.store.get_status(workflow_id)
        if found is None:
            raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
        status, output, error = found
        if status not in TERMINAL:
            return False, None
        return True, lambda: self.outcome(workflow_id, status, output, error)

    def wait(self, workflow_id: str, deadline: float | None) -> Any:
        """Poll the stored status until the execution ends, then return or raise its outcome."""
        delay = 0.005
        failing_since: float | None = None
        while True:
            try:
                found = self.store.get_status(workflow_id)
                failing_since = None
            except PersistenceError:
                # The database is briefly unreachable (a restart): keep waiting, for a while.
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > _MAX_POLL_OUTAGE or (
                    deadline is not None and now >= deadline
                ):
                    raise
                time.sleep(min(delay, 0.5))
                delay = min(delay * 2, 0.5)
                continue
            if found is None:
                raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
            status, output, error = found
            if status in TERMINAL:
                return self.outcome(workflow_id, status, output, error)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(
                    f"workflow {workflow_id!r} is still {status}; it goes on running: "
                    "call result() again to keep waiting"
                )
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 0.5)

    def outcome(
        self, workflow_id: str, status: str, output: str | None, error: dict[str, Any] | None
    ) -> Any:
        """The result of an ended execution, or its outcome error raised."""
        if status == "SUCCEEDED":
            return self.store.decode(output) if output is not None else None
        if status == "CANCELLED":
            if error and error.get("type") == "stepstone.errors:WorkflowTimedOut":
                raise WorkflowTimedOut(str(error.get("message", "")), workflow_id)
            raise WorkflowCancelled(f"workflow {workflow_id!r} was cancelled", workflow_id)
        record = error or {}
        error_type, message = error_summary(record)
        raise WorkflowFailed(workflow_id, error_type, message) from rebuild_error(
            record, self.store.serializer
        )
