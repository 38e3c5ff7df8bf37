"""Outcomes of executions as the database records them: reading one, and waiting for one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeVar

from stepstone.errors import (
    PersistenceError,
    ResultTimeout,
    StateNotSet,
    StateTimeout,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimedOut,
)
from stepstone.persistence.plans import drive
from stepstone.persistence.recorded_errors import error_summary, rebuild_error
from stepstone.runtime._requests import Sleep

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.plans import Plan, Request
    from stepstone.persistence.store import Store

__all__ = ["TERMINAL", "Outcomes"]

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
T = TypeVar("T")

_MAX_POLL_OUTAGE = 60.0  # seconds a waiting caller tolerates an unreachable database


class Outcomes:
    """Reads and awaits outcomes in the database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def ended(self, workflow_id: str) -> tuple[bool, Any]:
        """(True, its outcome as a thunk) if the execution ended, else (False, None);
        WorkflowNotFound if there is none."""
        return drive(self.ended_plan(workflow_id), self.store.io)

    def ended_plan(self, workflow_id: str) -> Plan[tuple[bool, Any]]:
        """`ended` for either driver."""
        found = yield self.store.status_statement(workflow_id)
        if found is None:
            raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
        status, output, error = found
        if status not in TERMINAL:
            return False, None
        return True, lambda: self.outcome(workflow_id, status, output, error)

    def wait(self, workflow_id: str, deadline: float | None, annotation: Any = None) -> Any:
        """Poll the stored status until the execution ends, then return or raise its outcome
        (a result as `annotation` describes it)."""
        return drive(self.wait_plan(workflow_id, deadline, annotation), self.store.io)

    def wait_plan(
        self, workflow_id: str, deadline: float | None, annotation: Any = None
    ) -> Plan[Any]:
        """`wait` for either driver."""
        last = ["RUNNING"]

        def ended(
            found: tuple[str, str | None, dict[str, Any] | None] | None,
        ) -> tuple[str, str | None, dict[str, Any] | None] | None:
            if found is None:
                raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
            last[0] = found[0]
            return found if found[0] in TERMINAL else None

        status, output, error = yield from _poll(
            lambda: self.store.status_statement(workflow_id),
            ended,
            deadline,
            lambda: ResultTimeout(
                f"workflow {workflow_id!r} is still {last[0]}; it goes on running: "
                "call result() again to keep waiting"
            ),
        )
        return self.outcome(workflow_id, status, output, error, annotation)

    def wait_state(self, workflow_id: str, key: str, seconds: float | None) -> Any:
        """Poll until execution `workflow_id` has committed state key `key`, and return its
        value; StateTimeout after `seconds`, StateNotSet if it ended without the key."""
        return drive(self.wait_state_plan(workflow_id, key, seconds), self.store.io)

    def wait_state_plan(self, workflow_id: str, key: str, seconds: float | None) -> Plan[Any]:
        """`wait_state` for either driver."""

        def committed(found: tuple[str, str | None] | None) -> tuple[str] | None:
            if found is None:
                raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
            status, value = found
            if value is not None:
                return (value,)
            if status in TERMINAL:
                raise StateNotSet(
                    f"workflow {workflow_id!r} ended ({status}) without setting state key {key!r}"
                )
            return None

        deadline = None if seconds is None else time.monotonic() + seconds
        (value,) = yield from _poll(
            lambda: self.store.state_value_statement(workflow_id, key),
            committed,
            deadline,
            lambda: StateTimeout(
                f"workflow {workflow_id!r} did not set state key {key!r} within {seconds:g} s"
            ),
        )
        return self.store.decode(value)

    def outcome(
        self,
        workflow_id: str,
        status: str,
        output: str | None,
        error: dict[str, Any] | None,
        annotation: Any = None,
    ) -> Any:
        """The result of an ended execution (decoded by `annotation`, the workflow's result
        annotation, when given; as stored without one), or its outcome error raised."""
        if status == "SUCCEEDED":
            if output is None:
                return None
            if annotation is None:
                return self.store.decode(output)
            return self.store.decode_as(
                output, annotation, f"the result of workflow {workflow_id!r}"
            )
        if status == "CANCELLED":
            if error and error.get("type") == "stepstone.errors:WorkflowTimedOut":
                raise WorkflowTimedOut(str(error.get("message", "")), workflow_id)
            raise WorkflowCancelled(f"workflow {workflow_id!r} was cancelled", workflow_id)
        record = error or {}
        error_type, message = error_summary(record)
        raise WorkflowFailed(workflow_id, error_type, message) from rebuild_error(
            record, self.store.serializer
        )


def _poll(
    request: Callable[[], Request] | None,
    read: Callable[[Any], T | None],
    deadline: float | None,
    timed_out: Callable[[], Exception],
) -> Plan[T]:
    """What `read(the result of request())` returns once it returns something (with no
    `request`: `read(None)`), polling with pauses that grow from 5 ms to 0.5 s;
    `timed_out()` is raised at `deadline` (time.monotonic()). A database that is briefly
    unreachable (a restart) is waited for, up to a minute."""
    delay = 0.005
    failing_since: float | None = None
    while True:
        try:
            found = read(None if request is None else (yield request()))
            failing_since = None
        except PersistenceError:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > _MAX_POLL_OUTAGE or (deadline is not None and now >= deadline):
                raise
            found = None
        if found is not None:
            return found
        if failing_since is None and deadline is not None and time.monotonic() >= deadline:
            raise timed_out()
        pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
        yield Sleep(pause if failing_since is None else delay)
        delay = min(delay * 2, 0.5)
