"""The engine's async entry points: an awaited async workflow, start_async and
result_async. They run the same plans as the sync entry points (`_open`, `_execute`, the
outcome poll), with `adrive` on the async pool; `Engine` mixes them in."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from stepstone.errors import (
    HandedBack,
    Interrupted,
    NotLaunched,
    OwnershipLost,
    PersistenceError,
    ResultTimeout,
    ShuttingDown,
    Suspended,
    UsageError,
)
from stepstone.persistence.plans import adrive
from stepstone.runtime._async_execution import current_io, running_on
from stepstone.runtime._signatures import function_types
from stepstone.runtime.context import _CURRENT

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from stepstone.persistence.plans import AsyncStatements, Plan
    from stepstone.persistence.store import Store
    from stepstone.runtime._async_execution import AsyncExecution
    from stepstone.runtime._execution import Execution
    from stepstone.runtime._outcomes import Outcomes
    from stepstone.runtime._requests import Call
    from stepstone.runtime._runs import LocalRuns, Run, RunState
    from stepstone.runtime.definitions import Workflow

__all__ = ["AsyncEngine", "for_caller"]


class AsyncEngine:
    """Async calls of workflows, mixed into `Engine` (which provides what is declared
    here for type checkers)."""

    if TYPE_CHECKING:
        store: Store
        runs: LocalRuns
        outcomes: Outcomes
        tasks: set[asyncio.Task[None]]

        def check_registered(self, workflow: Workflow[Any, Any]) -> None: ...

        def _open(
            self,
            workflow: Workflow[Any, Any],
            workflow_id: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            parent_id: str | None,
            state: RunState,
        ) -> Plan[tuple[Run, Execution, Call] | None]: ...

        def _execute(
            self, execution: Execution, body: Call, woken: tuple[str, float] | None = None
        ) -> Plan[Any]: ...

        def _settle(self, workflow_id: str, run: Run, exc: BaseException) -> None: ...

        def _submit(
            self, workflow_id: str, execution: Execution, job: Callable[[], Any]
        ) -> None: ...

        def _job(self, execution: Execution, body: Call) -> Callable[[], Any]: ...

    def call_async(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """An async workflow called: checked now, run durably in the awaiting task."""
        parent = _CURRENT.get()
        if parent is not None:
            self.check_registered(workflow)
            child: Coroutine[Any, Any, Any] = parent.run_child_async(workflow, args, kwargs)
            return child
        self.check_registered(workflow)
        return self._call_async(
            workflow, args, kwargs, self.async_io(f"workflow {workflow.name!r}")
        )

    def async_io(self, what: str) -> AsyncStatements:
        """The statement runner of this loop's async pool: inside an async execution, the
        pool of the loop that runs it (the runtime's own loop thread, or the application's);
        elsewhere the one launch_async() opened (NotLaunched before it)."""
        aio = current_io() or self.store.aio
        if aio is None:
            raise NotLaunched(
                f"{what} was called before `await rt.launch_async()` (which opens the async "
                "pool; or use `async with rt:`), or after shutdown_async()"
            )
        return aio

    async def _call_async(
        self,
        workflow: Workflow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        aio: AsyncStatements,
    ) -> Any:
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        try:
            return await self.run_async(workflow, workflow_id, args, kwargs, None, aio=aio)
        except (Suspended, OwnershipLost):
            return await self.await_outcome_async(workflow_id, None, workflow.fn)
        except (ShuttingDown, Interrupted) as signal:
            raise for_caller(workflow_id, signal) from signal

    async def run_async(
        self,
        workflow: Workflow[Any, Any],
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str | None,
        *,
        waiter: AsyncExecution | None = None,
        aio: AsyncStatements | None = None,
    ) -> Any:
        """Run (or join, or resume) async execution `workflow_id` in this task. `waiter`:
        the async workflow calling it, which waits durably rather than block while the
        execution runs elsewhere."""
        aio = aio or self.async_io(f"workflow {workflow.name!r}")
        opened = await adrive(
            self._open(workflow, workflow_id, args, kwargs, parent_id, "running"), aio
        )
        if opened is None:
            return await self.await_outcome_async(workflow_id, None, workflow.fn, waiter=waiter)
        run, execution, body = opened
        return await self._run_here_async(workflow_id, run, execution, body, aio)

    async def _run_here_async(
        self,
        workflow_id: str,
        run: Run,
        execution: Execution,
        body: Call,
        aio: AsyncStatements,
        woken: tuple[str, float] | None = None,
    ) -> Any:
        """Run `execution` in this task, with `aio` (the async pool of this task's loop),
        and settle its run."""
        try:
            with running_on(aio):
                result = await adrive(self._execute(execution, body, woken), aio)
        except BaseException as exc:
            self._settle(workflow_id, run, exc)
            raise
        self.runs.end(workflow_id, run, result=result)
        return result

    async def start_async(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """Start an execution and return its id once it is durable (one round trip on the
        async pool): an async workflow then runs in a task of this event loop, a sync one
        in the worker pool."""
        if _CURRENT.get() is not None:
            raise UsageError(
                "Runtime.start_async() was called inside a workflow: async workflows cannot "
                "start executions yet; start it from outside a workflow"
            )
        self.check_registered(workflow)
        aio = self.async_io("Runtime.start_async()")
        workflow_id = workflow.options.workflow_id or str(uuid.uuid4())
        state: RunState = "running" if workflow.is_async else "queued"
        opened = await adrive(self._open(workflow, workflow_id, args, kwargs, None, state), aio)
        if opened is not None:
            run, execution, body = opened
            if workflow.is_async:
                task = asyncio.create_task(
                    self._run_task(workflow_id, run, execution, body, aio),
                    name=f"stepstone workflow {workflow_id}",
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self._submit(workflow_id, execution, self._job(execution, body))
        return workflow_id

    async def _run_task(
        self, workflow_id: str, run: Run, execution: Execution, body: Call, aio: AsyncStatements
    ) -> None:
        """A started async execution's task: its outcome goes to its run (and so to its
        handles); interruptions and hand-backs were logged (nothing is left on the task
        for asyncio to report as never retrieved; a cancellation still cancels it)."""
        with contextlib.suppress(Exception, HandedBack):
            await self._run_here_async(workflow_id, run, execution, body, aio)

    async def await_outcome_async(
        self,
        workflow_id: str,
        deadline: float | None,
        declared: Callable[..., Any] | None,
        *,
        waiter: AsyncExecution | None = None,
    ) -> Any:
        """The outcome of `workflow_id`: from its run in this process if it has one (a task
        or a worker), else from the database, polled with `asyncio.sleep`; ResultTimeout at
        `deadline` (time.monotonic()). With a `waiter` (an async workflow waiting for it),
        an execution that is not done is waited for durably (the waiter is suspended)."""
        if waiter is not None and waiter.workflow_id == workflow_id:
            raise UsageError(
                f"workflow {workflow_id!r} waits for its own outcome, which cannot come while "
                "it waits: wait for it from outside, or for another execution"
            )
        aio = self.async_io("handle.result_async()")
        future = self.runs.future(workflow_id)
        if future is not None and (waiter is None or future.done()):
            try:
                # Shielded: a caller that stops waiting must not cancel the run's future.
                waiting = asyncio.shield(asyncio.wrap_future(future))
                return await asyncio.wait_for(waiting, _remaining(deadline))
            except HandedBack:
                pass  # it goes on elsewhere, or waits: its outcome is in the database
            except TimeoutError:
                raise ResultTimeout(
                    f"workflow {workflow_id!r} did not finish in time; it goes on running: "
                    "call result_async() again to keep waiting"
                ) from None
        annotation = None if declared is None else function_types(declared).returns
        if waiter is None:
            return await adrive(self.outcomes.wait_plan(workflow_id, deadline, annotation), aio)
        status, output, error = await waiter.await_execution_async(workflow_id)
        return self.outcomes.outcome(workflow_id, status, output, error, annotation)


def for_caller(workflow_id: str, signal: ShuttingDown | Interrupted) -> Exception:
    """What the direct caller of a run that was handed back (ShuttingDown) or interrupted
    by the database gets raised."""
    if isinstance(signal, ShuttingDown):
        return NotLaunched(
            f"the runtime shut down while workflow {workflow_id!r} ran here: it was handed "
            "back, and the executor that resumes it finishes it; read its outcome with "
            f"rt.handle({workflow_id!r}) from a running runtime"
        )
    cause = signal.__cause__
    if isinstance(cause, PersistenceError):
        return cause
    return PersistenceError(str(signal))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
