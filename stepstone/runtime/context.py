"""What a running workflow sees of itself: `stepstone.current()`."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from stepstone.errors import UsageError

if TYPE_CHECKING:
    from stepstone.runtime._execution import Execution

__all__ = ["State", "WorkflowContext", "current"]

_CURRENT: ContextVar[Execution | None] = ContextVar("stepstone_execution", default=None)


class State(MutableMapping[str, Any]):
    """The durable key/value state of an execution.

    Changes are committed with the next step commit or with the workflow's completion, and
    `Runtime.get_state()` reads the committed state from any process. Values are compared
    by their serialized form at each commit, so mutating a value in place (in the workflow
    body) counts as a change. State belongs to the workflow body: a step's body, which a
    replay skips, cannot change it: assigning or deleting a key there is refused, and the
    values it reads are copies (changing one in place changes nothing).
    """

    __slots__ = ("_data", "_execution")

    def __init__(self, execution: Execution) -> None:
        self._data: dict[str, Any] = {}
        self._execution = execution

    def __getitem__(self, key: str) -> Any:
        return self._execution.read_state(self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._execution.check_state_key(key)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        self._execution.check_state_writable(key)
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"State({self._data!r})"


class WorkflowContext:
    """The running execution, as `stepstone.current()` returns it."""

    __slots__ = ("_execution",)

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    @property
    def workflow_id(self) -> str:
        """The id of the running execution."""
        return self._execution.workflow_id

    @property
    def workflow_name(self) -> str:
        """The registered name of the running workflow."""
        return self._execution.workflow.name

    @property
    def state(self) -> State:
        """The execution's durable state (see `State`)."""
        return self._execution.state

    @property
    def replaying(self) -> bool:
        """True while the workflow re-runs code whose steps are already recorded."""
        return self._execution.replaying


def current() -> WorkflowContext:
    """The workflow execution running in this thread; UsageError outside one."""
    execution = _CURRENT.get()
    if execution is None:
        raise UsageError(
            "stepstone.current() was called outside a running workflow: call it from the "
            "body of a function decorated with @rt.workflow()"
        )
    return execution.context
