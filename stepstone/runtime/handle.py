"""`WorkflowHandle`: an execution, by id, from any thread or process."""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stepstone.errors import OwnershipLost, PersistenceError, ResultTimeout, WorkflowNotFound

if TYPE_CHECKING:
    from stepstone.runtime._engine import Engine

__all__ = ["WorkflowHandle"]

R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """An execution: its id, its status and, once it ends, its result."""

    def __init__(
        self, engine: Engine, workflow_id: str, future: concurrent.futures.Future[Any] | None
    ) -> None:
        self._engine = engine
        self._future = future
        self.workflow_id = workflow_id

    def status(self) -> str:
        """The stored status: ENQUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        found = self._engine.store.get_status(self.workflow_id)
        if found is None:
            raise WorkflowNotFound(f"no execution has workflow id {self.workflow_id!r}")
        return found[0]

    def result(self, timeout: float | None = None) -> R:
        """Wait for the execution to end and return its result.

        Raises WorkflowFailed (the recorded error is its cause), WorkflowCancelled, or
        ResultTimeout after `timeout` seconds; the execution goes on in every case.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._future is not None:
            try:
                result: R = self._future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise ResultTimeout(
                    f"workflow {self.workflow_id!r} did not finish within {timeout} s; it goes "
                    "on running: call result() again to keep waiting"
                ) from None
            except (OwnershipLost, PersistenceError):
                pass  # it goes on elsewhere, or here after a retry: the outcome will be stored
            else:
                return result
        outcome: R = self._engine.wait_outcome(self.workflow_id, deadline)
        return outcome

    def get_state(self) -> dict[str, Any]:
        """The execution's latest committed state."""
        return self._engine.store.get_state(self.workflow_id)

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id!r}>"
