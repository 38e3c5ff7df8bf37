"""`WorkflowHandle`: an execution, by id, from any thread or process."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stepstone.errors import UsageError, WorkflowNotFound
from stepstone.persistence.plans import adrive, drive
from stepstone.runtime.context import _CURRENT

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepstone.persistence.plans import Plan
    from stepstone.persistence.store import Store
    from stepstone.runtime._engine import Engine

__all__ = ["WorkflowHandle", "status_plan"]

R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """An execution: its id, its status and, once it ends, its result (rebuilt by the
    workflow's result annotation when the handle came from starting or enqueuing it; as
    stored for `rt.handle(id)`, which knows no workflow function)."""

    def __init__(
        self, engine: Engine, workflow_id: str, declared: Callable[..., Any] | None = None
    ) -> None:
        self._engine = engine
        self.workflow_id = workflow_id
        self._declared = declared

    def status(self) -> str:
        """The stored status: ENQUEUED, RUNNING, WAITING, SUCCEEDED, FAILED or CANCELLED."""
        self._engine.check_readable("handle.status()")
        return drive(status_plan(self._engine.store, self.workflow_id), self._engine.store.io)

    async def status_async(self) -> str:
        """`status()` for asyncio code: one statement on the async pool (needs
        `launch_async()`)."""
        self._engine.check_readable("handle.status_async()")
        aio = self._engine.async_io("handle.status_async()")
        return await adrive(status_plan(self._engine.store, self.workflow_id), aio)

    def result(self, timeout: float | None = None) -> R:
        """Wait for the execution to end and return its result.

        Raises WorkflowFailed (the recorded error is its cause), WorkflowCancelled, or
        ResultTimeout after `timeout` seconds; the execution goes on in every case. If the
        execution is queued in this process, the calling thread runs it. In a workflow body
        the wait is durable and holds no thread: the workflow is WAITING until the execution
        ends, then resumed by replay (`timeout` does not apply there).
        """
        self._engine.check_readable("handle.result()")
        deadline = None if timeout is None else time.monotonic() + timeout
        execution = _CURRENT.get()
        waits_durably = (
            execution is not None
            and not execution.in_step
            and execution.thread == threading.get_ident()
        )
        outcome: R = self._engine.await_outcome(
            self.workflow_id,
            waiter=execution if waits_durably else None,
            deadline=deadline,
            declared=self._declared,
        )
        return outcome

    async def result_async(self, timeout: float | None = None) -> R:
        """`result()` for asyncio code: wait, without blocking the event loop, for the
        execution to end; its result, or WorkflowFailed, WorkflowCancelled, or ResultTimeout
        after `timeout` seconds (the execution goes on in every case). Needs
        `launch_async()`; not from inside a workflow yet."""
        self._engine.check_readable("handle.result_async()")
        if _CURRENT.get() is not None:
            raise UsageError(
                f"handle.result_async() of {self.workflow_id!r} was called inside a workflow: "
                "workflows cannot wait for executions this way yet; call the workflow as a "
                "child, or use handle.result() in a sync workflow"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        outcome: R = await self._engine.await_outcome_async(
            self.workflow_id, deadline, self._declared
        )
        return outcome

    def get_state(self) -> dict[str, Any]:
        """The execution's latest committed state; WorkflowNotFound if there is none."""
        self._engine.check_readable("handle.get_state()")
        return self._engine.get_state(self.workflow_id)

    async def get_state_async(self) -> dict[str, Any]:
        """`get_state()` for asyncio code, on the async pool (needs `launch_async()`)."""
        self._engine.check_readable("handle.get_state_async()")
        aio = self._engine.async_io("handle.get_state_async()")
        return await adrive(self._engine.store.require_state_plan(self.workflow_id), aio)

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id!r}>"


def status_plan(store: Store, workflow_id: str) -> Plan[str]:
    """The stored status of `workflow_id`, for either driver; WorkflowNotFound if there is
    no such execution."""
    found = yield store.status_statement(workflow_id)
    if found is None:
        raise WorkflowNotFound(f"no execution has workflow id {workflow_id!r}")
    status: str = found[0]
    return status
