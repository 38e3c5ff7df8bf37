"""`continue_as_new`: a workflow ends its run and starts afresh under the same id.

A workflow that runs for long (a loop over months of events, a poller, an entity that lives
as long as its customer) gathers a history that every replay walks through. Calling
`continue_as_new(...)` ends the run there and starts the workflow again with the arguments
given and an empty history: no recorded steps and no state (pass what the next run needs as
arguments). The id, the parent, the deadline, the attributes and the mailbox stay: messages
not yet received are the next run's. Its callers get the outcome of the last run.
"""

from __future__ import annotations

from typing import Any, NoReturn

from stepstone.errors import StepOutsideWorkflow, UsageError
from stepstone.runtime.context import _CURRENT

__all__ = ["continue_as_new", "continue_as_new_async"]


def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End this run of the workflow and start it afresh, under the same workflow id, with
    `args` and `kwargs`: recorded steps and state are dropped (replays start from here),
    unread messages stay for the new run, and callers get the new run's outcome (or that of
    the run it continues as, and so on). It never returns.

    The arguments are checked against the workflow's signature and serialized first: if
    they cannot be, UsageError (or SerializationError) is raised here, nothing is written
    and the workflow goes on. The switch is one transaction, so a crash leaves either the
    old run (whose replay reaches this call again) or the new one, never a mix."""
    _execution(awaited=False).continue_as_new(args, kwargs)
    raise AssertionError  # it never returns


async def continue_as_new_async(*args: Any, **kwargs: Any) -> NoReturn:
    """`continue_as_new`, awaited in an async workflow: the same checks, and the same one
    transaction, on the async pool. It never returns (the workflow's task goes on with the
    new run)."""
    await _execution(awaited=True).continue_as_new_async(args, kwargs)
    raise AssertionError  # it never returns


def _execution(*, awaited: bool) -> Any:
    called = "continue_as_new_async" if awaited else "continue_as_new"
    execution = _CURRENT.get()
    if execution is None:
        raise StepOutsideWorkflow(
            f"stepstone.{called}() was called outside a workflow: call it from the body "
            "of a function decorated with @rt.workflow() (to start a new execution from "
            "outside, use rt.start())"
        )
    if execution.workflow.is_async and not awaited:
        raise UsageError(
            f"stepstone.continue_as_new() was called from async workflow "
            f"{execution.workflow.name!r} ({execution.workflow_id!r}): it would block the "
            "event loop; use `await stepstone.continue_as_new_async(...)` instead"
        )
    if awaited and not execution.workflow.is_async:
        raise UsageError(
            f"stepstone.continue_as_new_async() was awaited in workflow "
            f"{execution.workflow.name!r} ({execution.workflow_id!r}), which is not async: "
            "call stepstone.continue_as_new() there, or make the workflow `async def`"
        )
    return execution
